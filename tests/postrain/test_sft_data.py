"""SFT data path: config loading, shard validation, seeded streaming, rank sharding, collation, packing, schedule."""

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.postrain.sft import SFTConfig
from loopcoder.postrain.sft.data import Row, ShardError, ShardStream, collate, discover_shards
from loopcoder.postrain.sft.plan import BatchPlanner, learning_rate, phase_at, rank_share
from loopcoder.postrain.sft.sample_data import build_stdlib_shards, write_shards
from loopcoder.schemas import PACKED_SEQUENCE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return build_stdlib_shards(tmp_path_factory.getbasetemp() / "sft_stdlib", max_files=200, seq_len=128)


def record(ids, bounds, mask, category="sft", documents=None):
    return {
        "input_ids": ids,
        "cu_seqlens": bounds,
        "loss_mask": mask,
        "category": category,
        "num_documents": documents if documents is not None else len(bounds) - 1,
    }


# -- config -----------------------------------------------------------------------------------------
def test_config_yaml_and_overrides():
    config = SFTConfig.from_yaml(
        REPO / "jobs/sft/sample_tiny.yaml",
        ["max_steps=7", "learning_rate=1e-4", "mixture={sft_easy: 1.0}", "curriculum=[]"],
    )
    assert config.max_steps == 7 and config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.phases == [{"name": "main", "steps": 7, "mixture": {"sft_easy": 1.0}}]
    assert SFTConfig.from_yaml(REPO / "jobs/sft/sample_tiny.yaml").total_steps == 60


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["nonsense=1"], r"sample_tiny.yaml: unknown key\(s\) nonsense; valid keys: .*learning_rate"),
        (["mixture={nope: 1.0}", "curriculum=[]"], "unknown shard set"),
        (["replay_fraction=1.5"], "replay_fraction"),
        (["mode=rl"], "mode must be"),
        (["learning_rate=fast"], "learning_rate must be a number"),
    ],
)
def test_config_rejects(overrides, message):
    with pytest.raises(ValueError, match=message):
        SFTConfig.from_yaml(REPO / "jobs/sft/sample_tiny.yaml", overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["zero_stage=4"], "zero_stage must be"),
        (["precision=fp16"], "precision must be"),
        (["log_interval=0"], ">= 1"),
    ],
)
def test_shared_fields_are_validated_once_for_both_trainers(overrides, message):
    from loopcoder.postrain.grpo import GRPOConfig

    with pytest.raises(ValueError, match=message):
        SFTConfig.from_yaml(REPO / "jobs/sft/sample_tiny.yaml", overrides)
    with pytest.raises(ValueError, match=message):
        GRPOConfig.from_yaml(REPO / "jobs/rl/print_number_tiny.yaml", overrides)
    with pytest.raises(ValueError, match="tokenizer must not be null"):
        GRPOConfig.from_yaml(REPO / "jobs/rl/print_number_tiny.yaml", ["tokenizer=null"])


# -- shards ---------------------------------------------------------------------------------------
def test_missing_and_corrupt_shards_fail_clearly(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        discover_shards("sft", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no \\*.parquet"):
        discover_shards("sft", tmp_path / "empty")
    good = tmp_path / "good"
    write_shards([record([1, 2, 3], [0, 3], [0, 1, 1])], good)
    (good / "part-00001.parquet").write_bytes((good / "part-00000.parquet").read_bytes()[:40])
    with pytest.raises(ShardError, match="corrupt shard .*part-00001"):
        discover_shards("sft", good)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    pq.write_table(pa.table({"input_ids": [[1, 2]]}), wrong / "part-00000.parquet")
    with pytest.raises(ShardError, match="not a packed_sequence shard"):
        discover_shards("sft", wrong)


def test_stream_is_seeded_and_covers_each_epoch_once(tmp_path):
    rows = [record([i, i + 1], [0, 2], [0, 1], category=str(i)) for i in range(23)]
    write_shards(rows, tmp_path / "set", rows_per_shard=5)
    shards = discover_shards("set", tmp_path / "set")
    stream = ShardStream("set", shards, seed=3)
    epoch0 = [stream.row(i).category for i in range(23)]
    epoch1 = [stream.row(i).category for i in range(23, 46)]
    assert sorted(epoch0, key=int) == [str(i) for i in range(23)] == sorted(epoch1, key=int)
    assert epoch0 != epoch1 and epoch0 != [str(i) for i in range(23)]
    again = ShardStream("set", shards, seed=3)
    assert [again.row(i).category for i in reversed(range(46))] == list(reversed(epoch0 + epoch1))
    assert [ShardStream("set", shards, seed=4).row(i).category for i in range(23)] != epoch0


def test_rank_shares_partition_the_global_batch():
    batch = list(range(12))
    for world, micro in [(1, 1), (2, 2), (3, 2), (4, 1)]:
        shares = [rank_share(batch, r, world, micro) for r in range(world)]
        flat = sorted(x for share in shares for m in share for x in m)
        assert flat == batch
        assert all(len(m) == micro for share in shares for m in share)


# -- collation and packing ----------------------------------------------------------------------
def test_collate_positions_targets_and_mask():
    # two documents (3 + 2 tokens) and a padding segment of 3; loss mask on the assistant tokens
    row = Row(
        input_ids=np.array([5, 6, 7, 8, 9, 0, 0, 0]),
        cu_seqlens=np.array([0, 3, 5, 8]),
        loss_mask=np.array([0, 1, 1, 1, 1, 0, 0, 0], dtype=np.int8),
        category="sft",
        num_documents=2,
        source="x#0",
    )
    short = Row(np.array([1, 2, 3]), np.array([0, 3]), np.array([1, 1, 1], dtype=np.int8), "pre", 1, "y#0")
    batch = collate([row, short], "sft")
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch.targets[0, :4].tolist() == [6, 7, 8, 9]
    # target t+1 trained when mask[t+1] and t+1 is not a document start; never into padding
    assert batch.weights[0].tolist() == [1, 1, 0, 1, 0, 0, 0, 0]
    assert batch.weights[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert batch.real.tolist()[0] == [True] * 5 + [False] * 3
    pretrain = collate([Row(row.input_ids, row.cu_seqlens, np.zeros(8, dtype=np.int8), "x", 2, "x#0")], "pretrain")
    assert pretrain.weights[0].tolist() == [1, 1, 0, 1, 0, 0, 0, 0]


def test_packed_loss_equals_unpacked_documents(shards):
    torch.manual_seed(0)
    config = LoopCoderConfig(
        vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_loops=2, loop_window=16, max_position_embeddings=1024,
    )  # fmt: skip
    model = LoopCoderForCausalLM(config).eval()
    rows = []
    for name, documents in (("sft_easy", 2), ("pretrain", 3)):
        stream = ShardStream(name, discover_shards(name, shards / name), seed=0)
        rows += [r for r in (stream.row(i) for i in range(stream.num_rows)) if r.num_documents >= documents][:1]
    assert len(rows) == 2, "the sample shards should pack several documents into a row"
    batch = collate(rows, "sft")
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        packed = (
            F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none") * batch.weights.flatten()
        )
        unpacked, tokens = 0.0, 0.0
        for row in rows:
            for d in range(row.num_documents):
                a, b = int(row.cu_seqlens[d]), int(row.cu_seqlens[d + 1])
                ids = torch.tensor(row.input_ids[a:b], dtype=torch.long)[None]
                doc_logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
                mask = torch.tensor(row.loss_mask[a + 1 : b], dtype=torch.float32)
                unpacked += float((F.cross_entropy(doc_logits, ids[0, 1:], reduction="none") * mask).sum())
                tokens += float(mask.sum())
    assert tokens == float(batch.weights.sum()) > 0
    assert math.isclose(float(packed.sum()), unpacked, rel_tol=1e-5)


# -- schedule, curriculum, replay -----------------------------------------------------------------
def test_learning_rate_schedule():
    lr = [
        learning_rate(s, 100, 1.0, warmup_steps=10, min_lr_ratio=0.1, anneal_steps=30, anneal_lr_ratio=0.01)
        for s in range(100)
    ]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(lr[10:70], lr[11:70], strict=False))
    assert lr[70] == pytest.approx(0.1 + (0.01 - 0.1) / 30)
    assert lr[99] == pytest.approx(0.01)
    flat = [learning_rate(s, 50, 2.0, anneal_steps=20) for s in range(30, 50)]
    assert flat == [pytest.approx(0.2)] * 20


def test_curriculum_and_replay_shares():
    phases = [
        {"name": "easy", "steps": 4, "mixture": {"a": 1.0}},
        {"name": "hard", "steps": 6, "mixture": {"a": 0.25, "b": 0.75}},
    ]
    planner = BatchPlanner(phases, {"r": 1.0}, replay_fraction=0.125, global_batch_size=8, seed=0)
    batches = [planner.plan(step) for step in range(10)]
    assert [phase_at(phases, s)["name"] for s in (0, 3, 4, 9, 12)] == ["easy", "easy", "hard", "hard", "hard"]
    assert all({name for name, _ in b} <= {"a", "r"} for b in batches[:4])
    names = [name for b in batches for name, _ in b]
    assert names.count("r") == 10  # exactly 1 in 8
    hard = [name for b in batches[4:] for name, _ in b if name != "r"]
    assert hard.count("b") / len(hard) == pytest.approx(0.75, abs=0.03)
    # each set's stream indices are handed out once, in order
    for name in "abr":
        indices = sorted(i for b in batches for n, i in b if n == name)
        assert indices == list(range(len(indices)))
    # resuming from the saved position continues with the same batches
    replay = BatchPlanner(phases, {"r": 1.0}, replay_fraction=0.125, global_batch_size=8, seed=0)
    for step in range(5):
        replay.plan(step)
    resumed = BatchPlanner(phases, {"r": 1.0}, replay_fraction=0.125, global_batch_size=8, seed=0)
    resumed.load_state_dict(replay.state_dict())
    assert [resumed.plan(s) for s in range(5, 10)] == batches[5:]


def test_shards_from_the_sample_corpus_validate(shards):
    for name in ("pretrain", "sft_easy", "sft_medium", "sft_hard", "eval"):
        found = discover_shards(name, shards / name)
        assert found and all(PACKED_SEQUENCE.validate(pq.read_schema(s.path)) is None for s in found)
