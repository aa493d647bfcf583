"""The file-system layer on a local disk and on two local S3 servers (moto's, rclone's): markers, listing, refusals."""

import pyarrow as pa
import pytest

from loopcoder.pipelines.io import filesystem as fs


@pytest.fixture(params=["local", "s3", "rclone_s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    if request.param == "rclone_s3":
        return request.getfixturevalue("rclone_bucket") + "/out"
    return request.getfixturevalue("s3_bucket") + "/out"


def test_a_shard_counts_only_once_a_marker_lists_it(root):
    table = pa.table({"x": [1, 2, 3]})
    for name in ("files/part-0.parquet", "files/part-1.parquet", "_work/task-0.parquet", "files/.part-2.parquet"):
        fs.atomic_write_parquet(table, fs.join(root, name))
    fs.atomic_write_json(fs.join(root, "stats.json"), {"rows": 3})
    # no marker lists shards yet: a plain folder of shards, every visible one counts
    assert fs.discover_shards(root) == [fs.join(root, "files/part-0.parquet"), fs.join(root, "files/part-1.parquet")]
    fs.write_marker(root, "task-0", {"task": 0}, shards=["files/part-0.parquet"])
    assert fs.discover_shards(root) == [fs.join(root, "files/part-0.parquet")]
    # pointed at a folder of the output, the job's markers one level up still decide
    assert fs.discover_shards(fs.join(root, "files")) == [fs.join(root, "files/part-0.parquet")]
    assert fs.read_marker(root, "task-0") == {"task": 0, "shards": ["files/part-0.parquet"]}
    assert fs.read_marker(root, "task-1") is None
    fs.write_marker(root, "task-1", {"task": 1}, shards=["files/part-1.parquet"])
    assert len(fs.discover_shards(root)) == 2
    assert fs.list_files(root) == ["files/part-0.parquet", "files/part-1.parquet", "markers/task-0.done",
                                   "markers/task-1.done", "stats.json"]  # fmt: skip


def test_atomic_writes_replace_whole_files(root):
    location = fs.join(root, "deep/folder/data.json")
    fs.atomic_write_json(location, {"a": 1})
    fs.atomic_write_json(location, {"a": 2})
    assert fs.read_json(location) == {"a": 2}
    assert fs.list_files(root, include_internal=True) == ["deep/folder/data.json"]  # no temporary left behind
    fs.delete_tree(fs.join(root, "deep"))
    assert not fs.exists(location) and fs.read_json_if_exists(location) is None


def test_missing_location_and_non_shard_file_are_named(root):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fs.discover_shards(fs.join(root, "absent"))
    fs.atomic_write_bytes(fs.join(root, "notes.txt"), b"x")
    with pytest.raises(ValueError, match="is not a .parquet shard"):
        fs.discover_shards(fs.join(root, "notes.txt"))


@pytest.mark.parametrize(
    "location, message",
    [
        ("s4://bucket/corpus", "no installed file system serves 's4://'"),
        ("s3://AKIAEXAMPLE:hunter2@bucket/corpus", "carries credentials in the URI"),
    ],
)
def test_unserved_or_credential_carrying_locations_are_refused(location, message):
    with pytest.raises(fs.UnsupportedLocation, match=message) as raised:
        fs.check_location(location, "input 0")
    assert "hunter2" not in str(raised.value) and "\n" not in str(raised.value)


def test_paths_join_and_split_the_same_way_for_every_scheme():
    assert fs.join("s3://b/out", "files", "p.parquet") == "s3://b/out/files/p.parquet"
    assert fs.join("/data/out/", "x") == "/data/out/x"
    assert fs.parent("s3://b/out/files") == "s3://b/out" and fs.basename("s3://b/out/files") == "files"
    assert fs.parent("s3://b") == "s3://b"
    assert fs.resolve("s3://b/out/")[1] == "b/out"
    assert fs.absolute("file:///tmp/x") == "/tmp/x" and not fs.is_local("gs://b/x") and fs.is_local("rel/x")


def test_a_failed_write_leaves_the_old_file_whole(root):
    location = fs.join(root, "files/part-0.parquet")
    fs.atomic_write_parquet(pa.table({"x": [1, 2]}), location)
    with pytest.raises(Exception, match="nonsense"):
        fs.atomic_write_parquet(pa.table({"x": [3]}), location, compression="nonsense")
    assert fs.read_parquet(location).column("x").to_pylist() == [1, 2]
    assert fs.list_files(root, include_internal=True) == ["files/part-0.parquet"]  # no temporary left behind
