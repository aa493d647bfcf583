"""MinHash signatures against datasketch, LSH bands, and dedup quality on real near-duplicates."""

import os
import subprocess
import sys
import sysconfig
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from datasketch import MinHash

from loopcoder.jobs.commands.data import print_job_summary
from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import normalised_sha256, run_job
from loopcoder.pipelines.dedup.minhash import (
    MinhashConfig,
    MinhashSignatures,
    affine32_permutations,
    jaccard,
    shingle_hash,
    shingle_hashes,
    shingle_set,
    shingles,
    tokens,
)
from loopcoder.pipelines.dedup.stages import bucket_pairs
from loopcoder.pipelines.inspection.plots import plot_stats
from loopcoder.pipelines.inspection.stats import collect_stats

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "def add(a, b):\n    return a + b  # same code, one comment\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n",
    "x = 1",  # fewer tokens than one shingle
    "",
    "é ünïcode_names = [ñ for ñ in range(3)]\n" * 3,
]


@pytest.fixture(scope="module")
def signer():
    return MinhashSignatures(MinhashConfig())


def test_signatures_equal_datasketch_bit_for_bit(signer):
    reference = MinHash.bulk([shingles(t) for t in TEXTS], num_perm=256, seed=1, hashfunc=shingle_hash)
    for text, expected in zip(TEXTS, reference, strict=True):
        assert np.array_equal(signer.signature(text), expected.hashvalues)
        assert signer.signature(text).dtype == expected.hashvalues.dtype


def test_other_seeds_and_sizes_match_too():
    config = MinhashConfig(num_perm=112, bands=14, rows=8, seed=7, ngram=3)
    reference = MinHash.bulk([shingles(t, 3) for t in TEXTS], num_perm=112, seed=7, hashfunc=shingle_hash)
    signer = MinhashSignatures(config)
    for text, expected in zip(TEXTS, reference, strict=True):
        assert np.array_equal(signer.signature(text), expected.hashvalues)


@pytest.mark.parametrize("num_perm, seed", [(256, 1), (112, 7), (1, 0), (4096, 2**32 - 1)])
def test_permutations_are_datasketchs_draws(num_perm, seed):
    reference_a, reference_b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    a, b = affine32_permutations(num_perm, seed)
    assert a.dtype == b.dtype == np.uint32 and np.all(a % 2 == 1)
    assert np.array_equal(a, reference_a) and np.array_equal(b, reference_b)


def test_signing_does_not_import_datasketch():
    """datasketch (and the scipy it imports) is the tests' reference, not a cost of every worker."""
    code = (
        "import sys; from loopcoder.pipelines.dedup.minhash import MinhashSignatures;"
        "MinhashSignatures().signature('def f(a, b): return a + b + 1'); assert 'datasketch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vectorised_shingle_hashes_equal_the_python_hash():
    toks = tokens(TEXTS[2])
    assert shingle_hashes(toks, 5).tolist() == [shingle_hash(s) for s in shingles(TEXTS[2])]
    assert len(shingle_hashes(tokens("a b c"), 5)) == 0


def test_bands_share_a_bucket_only_when_their_values_agree(signer):
    a, b, c = (signer.band_hashes(signer.signature(t)) for t in (TEXTS[0], TEXTS[0], TEXTS[2]))
    assert a.shape == (signer.config.bands,) and np.array_equal(a, b)
    assert not np.any(a == c)


def test_bands_times_rows_cannot_exceed_permutations():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinhashConfig(num_perm=64, bands=25, rows=10)


def test_files_without_a_shingle_never_reach_the_buckets():
    """Fewer tokens than one shingle: an empty set, which would share every band with every other such file."""
    with pytest.raises(ValueError, match="min_tokens"):
        MinhashConfig(min_tokens=2)
    assert MinhashConfig(ngram=3, min_tokens=3).min_tokens == 3


def near_duplicate_corpus() -> list[str]:
    """Vendored copies of packages next to the installed ones, plus unrelated standard-library files."""
    site = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = [site / "pip" / "_vendor", site / "setuptools" / "_vendor", site]
    names = ["rich", "packaging", "urllib3", "requests", "idna", "certifi", "platformdirs", "tomli"]
    files = []
    for root in roots:
        for name in names:
            files += sorted((root / name).rglob("*.py")) if (root / name).is_dir() else []
    files += sorted((site / "pygments" / "lexers").glob("_*.py"))[:10]
    files += sorted((site / "pip" / "_vendor" / "pygments").rglob("*.py"))
    files += sorted((stdlib / "distutils").glob("*.py")) + sorted((site / "setuptools" / "_distutils").glob("*.py"))
    files += sorted((stdlib / "tomllib").glob("*.py"))
    files += sorted((stdlib / "email").glob("*.py")) + sorted((stdlib / "json").glob("*.py"))
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    return [t for t in texts if len(tokens(t)) >= 5]


def exact_jaccard_pairs(sets: list[np.ndarray], threshold: float) -> set[tuple[int, int]]:
    """All pairs with Jaccard >= threshold, from a sparse document x shingle incidence matrix."""
    vocabulary = np.unique(np.concatenate(sets))
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    cols = np.searchsorted(vocabulary, np.concatenate(sets))
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(sets), len(vocabulary)))
    inter = sp.triu(matrix @ matrix.T, k=1).tocoo()
    sizes = np.array([len(s) for s in sets])
    similarity = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    keep = similarity >= threshold
    return set(zip(inter.row[keep].tolist(), inter.col[keep].tolist(), strict=True))


def test_jaccard_is_exact_on_shingle_sets():
    a, b = shingle_set(TEXTS[2]), shingle_set(TEXTS[2] + "    def pop(self):\n        return self.items.pop()\n")
    common = set(a.tolist()) & set(b.tolist())
    assert jaccard(a, b) == len(common) / len(set(a.tolist()) | set(b.tolist())) < 1.0
    assert jaccard(a, a) == 1.0 and jaccard(a, shingle_set(TEXTS[0])) == 0.0
    assert list(a) == sorted(set(a.tolist()))


def test_bucket_pairs_stay_within_the_window_and_their_bucket():
    rng = np.random.default_rng(0)
    keys = rng.permutation(np.arange(100, 106, dtype=np.uint64))  # members of one bucket, in no order
    one_bucket = (np.zeros(6, np.uint8), np.full(6, 42, np.uint64), keys)
    u, v = bucket_pairs(*one_bucket, window=2)
    ordered = sorted(keys.tolist())
    expected = {(ordered[i], ordered[j]) for i in range(6) for j in range(i + 1, min(i + 3, 6))}
    assert set(zip(u.tolist(), v.tolist(), strict=True)) == expected and len(u) == len(expected)
    u, v = bucket_pairs(*one_bucket, window=32)
    assert set(zip(u.tolist(), v.tolist(), strict=True)) == set(combinations(ordered, 2))
    # the same hash in another band, and a bucket of one, pair nothing across buckets
    band = np.array([0, 0, 0, 1, 1, 2], np.uint8)
    u, v = bucket_pairs(band, np.full(6, 42, np.uint64), np.arange(6, dtype=np.uint64), window=32)
    assert set(zip(u.tolist(), v.tolist(), strict=True)) == {(0, 1), (0, 2), (1, 2), (3, 4)}


def test_candidate_probability_matches_the_measured_band_collisions(signer):
    """The S-curve the defaults are chosen with, against the band collisions of real similar pairs."""
    config = signer.config
    assert config.candidate_probability(0.7) > 0.99 and config.candidate_probability(0.3) < 0.05
    assert MinhashConfig(bands=25, rows=10).candidate_probability(0.7) == pytest.approx(0.51, abs=0.01)
    texts = near_duplicate_corpus()
    sets = [shingle_set(t) for t in texts]
    bands = np.stack([signer.band_hashes(signer.signature(t)) for t in texts])
    pairs = sorted(exact_jaccard_pairs(sets, 0.5))
    collided = np.array([np.any(bands[a] == bands[b]) for a, b in pairs])
    expected = np.array([config.candidate_probability(jaccard(sets[a], sets[b])) for a, b in pairs])
    # a sum of independent Bernoulli trials: within 4 standard deviations of its mean
    assert abs(collided.sum() - expected.sum()) < 4 * np.sqrt(np.sum(expected * (1 - expected))) + 1


def output_rows(output: Path, folder: str = "files") -> list[dict]:
    return [r for path in sorted((output / folder).glob("*.parquet")) for r in pq.read_table(path).to_pylist()]


def write_corpus(texts: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"doc-{i:04d}.py" for i in range(len(texts))]
    for path, text in zip(paths, texts, strict=True):
        path.write_text(text, encoding="utf-8")
    return paths


# with the larger sweeps: test_job.py compares the distributed stages with the same reference on every run
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LOOPCODER_SLOW") != "1", reason="slow: set LOOPCODER_SLOW=1")
def test_dedup_quality_on_real_near_duplicates(ray_local, tmp_path, capsys, reference_dedup):
    """Pair precision and recall of the job's near-duplicate pairs against exact Jaccard over all pairs."""
    texts = near_duplicate_corpus()
    assert len(texts) > 300, "the corpus needs pip, setuptools and the packages they vendor"
    write_corpus(texts, tmp_path / "corpus")
    job = JobConfig.from_dict({
        "name": "quality", "output": str(tmp_path / "out"),
        "inputs": [{"kind": "directory", "path": str(tmp_path / "corpus"), "repo": "corpus", "include": ["*.py"]}],
        "steps": ["decode", "minhash_dedup"], "tasks": {"files_per_task": 150}, "ray": {"shuffle_partitions": 2},
        "keep_work": True,
    })  # fmt: skip
    stats = run_job(job, tmp_path / "out")
    work = tmp_path / "out" / "_work"
    documents = {}  # (task, row) -> corpus index
    for path in sorted((work / "documents").glob("task-*.parquet")):
        task = int(path.stem.split("-")[1])
        for row, name in enumerate(pq.read_table(path, columns=["path"]).column("path").to_pylist()):
            documents[(task, row)] = int(name[4:8])
    assert sorted(documents.values()) == list(range(len(texts)))
    scored = pq.read_table(work / "dedup" / "verified").to_pylist()
    ranks = pq.read_table(work / "dedup" / "ranks", columns=["rank", "task", "row"]).to_pylist()
    position = {r["rank"]: (r["task"], r["row"]) for r in ranks}

    def index(rank: int) -> int:
        return documents[position[rank]]

    # copies of one content are one point: a bucket pairs a copy with its first copy only, and a pair found
    # for one copy holds for all of them
    copies: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        copies.setdefault(normalised_sha256(text), []).append(i)
    same = {i: members for members in copies.values() for i in members}
    found = {
        tuple(sorted((a, b)))
        for r in scored if r["duplicate"]
        for a in same[index(r["u"])] for b in same[index(r["v"])] if a != b
    }  # fmt: skip
    candidates = {tuple(sorted((index(r["u"]), index(r["v"])))) for r in scored}
    sets = [shingle_set(t) for t in texts]
    truth = exact_jaccard_pairs(sets, 0.7)
    assert len(truth) > 100
    precision, recall = len(found & truth) / len(found), len(found & truth) / len(truth)
    print(f"docs {len(texts)}, true pairs {len(truth)}, candidates {len(candidates)}, duplicate pairs {len(found)}: "
          f"precision {precision:.3f}, recall {recall:.3f}; LSH candidates alone: precision "
          f"{len(candidates & truth) / len(candidates):.3f}")  # fmt: skip
    assert precision >= 0.95 and recall >= 0.95
    for r in scored:  # the similarity the job recorded is the exact one
        assert r["jaccard"] == pytest.approx(jaccard(sets[index(r["u"])], sets[index(r["v"])]))
    verified = stats["dedup"]["verified"]
    assert verified["candidate_pairs"] == len(scored)
    assert (
        verified["duplicate_pairs"]
        == sum(r["duplicate"] for r in scored)
        == sum(verified["jaccard_histogram"].values()) - verified["below_threshold"]
    )

    print_job_summary(stats, tmp_path / "out")
    assert (
        f"{len(scored):,} candidate pair(s) from the LSH buckets, {verified['duplicate_pairs']:,} at exact Jaccard >= 0.7"
        in (" ".join(capsys.readouterr().out.split()))
    )

    # the shard tools show the candidates by similarity, as a table and a chart
    inspected = collect_stats(tmp_path / "out")
    assert dict(inspected.candidate_pairs_by_jaccard) == verified["jaccard_histogram"]
    assert inspected.near_duplicate_threshold == 0.7
    charts = {p.name: p for p in plot_stats(inspected, tmp_path / "charts")}
    assert charts["near_duplicate_pairs.png"].read_bytes()[:4] == b"\x89PNG"

    # every removed file belongs to a cluster whose representative survives
    kept = {int(r["path"][4:8]): r["near_dup_cluster"] for r in output_rows(tmp_path / "out")}
    removed = [r for r in output_rows(tmp_path / "out", "rejected") if r["rejection_reason"] == "near_duplicate"]
    assert removed and {r["near_dup_cluster"] for r in removed} <= set(kept.values())
    assert len(removed) + len(kept) == len(texts)
    # the same removals and clusters as the string-keyed single-process definition
    rows = output_rows(tmp_path / "out") + removed
    expected = reference_dedup(rows, exact=False, minhash=MinhashConfig())
    assert [(None if r["kept"] else r["rejection_reason"], r["near_dup_cluster"]) for r in rows] == expected
