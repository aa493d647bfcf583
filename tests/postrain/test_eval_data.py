"""`eval fim`, `eval loss` and `eval loops` end to end on a briefly trained tiny model and held-out shards.

The data is a small sample corpus (the `json` and `email` packages of the standard library, built by the
sample-corpus pipeline): its first shard trains the model for a few steps, the other shards are held out.
FIM samples and packed rows are made by the data pipelines (`FimSplitter`, `pack`).
"""

import json
import sysconfig

import pytest
import torch

from loopcoder.jobs.cli import main
from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
from loopcoder.pipelines.io.writers import ShardWriter
from loopcoder.pipelines.sample_corpus import SampleCorpusConfig, build_sample_corpus
from loopcoder.pipelines.samples.fim import FimConfig, FimSplitter
from loopcoder.pipelines.samples.packing import PackingConfig, pack, tokenize_text
from loopcoder.postrain.evaluation.fim import load_fim_samples
from loopcoder.postrain.evaluation.generation import load_model
from loopcoder.postrain.evaluation.loss import collate_rows, evaluate_loss, read_packed_rows
from loopcoder.schemas import FIM_SAMPLE, PACKED_SEQUENCE
from loopcoder.schemas.tokens import load_tokenizer

pytestmark = pytest.mark.timeout(400)

SEQ_LEN = 256


def packed_rows(docs, tokenizer, seed):
    splitter = FimSplitter(FimConfig(fim_rate=1.0, split_kind_weights={"line": 1.0, "ast": 1.0}, seed=seed))
    documents = []
    for doc in docs:
        sample = splitter(doc)
        if sample is not None:
            documents.append(tokenize_text(tokenizer, sample["text"], "file_fim"))
        documents.append(tokenize_text(tokenizer, doc["content"][:2000], "pretrain_replay"))
    rows, _ = pack(documents, PackingConfig(seq_len=SEQ_LEN, split_long_documents=True), tokenizer.pad_token_id)
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: two OpenMP threads make small matmuls many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("eval")
    stdlib = sysconfig.get_paths()["stdlib"]
    sources = [
        {"kind": "directory", "repo": "python-stdlib", "path": f"{stdlib}/{package}", "include": ["*.py"],
         "max_files": 8}
        for package in ("json", "email")
    ]  # fmt: skip
    build_sample_corpus(SampleCorpusConfig(sources=sources, rows_per_shard=6), root / "corpus")
    shards = sorted((root / "corpus" / "source_files").glob("part-*.parquet"))
    assert len(shards) >= 3
    heldout_sources = root / "heldout_sources"
    heldout_sources.mkdir()
    for shard in shards[1:]:
        (heldout_sources / shard.name).write_bytes(shard.read_bytes())

    import pyarrow.parquet as pq

    tokenizer = load_tokenizer()
    train_docs = pq.read_table(shards[0]).to_pylist()
    heldout_docs = [doc for shard in shards[1:] for doc in pq.read_table(shard).to_pylist()]
    with ShardWriter(root / "heldout_packed", PACKED_SEQUENCE, rows_per_shard=8) as writer:
        rows = packed_rows(heldout_docs, tokenizer, seed=1)
        for category in ("file_fim", "pretrain_replay"):
            writer.write_all([row for row in rows if row["category"] == category][:4])
    splitter = FimSplitter(FimConfig(fim_rate=1.0, split_kind_weights={"line": 1.0, "ast": 1.0}, seed=2))
    with ShardWriter(root / "heldout_fim", FIM_SAMPLE, rows_per_shard=100) as writer:
        writer.write_all(s for s in map(splitter, heldout_docs) if s is not None)

    torch.manual_seed(0)
    config = LoopCoderConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_loops=2, loop_window=32, max_position_embeddings=1024,
    )  # fmt: skip
    model = LoopCoderForCausalLM(config)
    train_rows = packed_rows(train_docs, tokenizer, seed=0)[:24]
    heldout = read_packed_rows(root / "heldout_packed")
    before = evaluate_loss(model, heldout, batch_size=4)["overall"]["loss"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(12):
        batch = collate_rows([train_rows[(2 * step + i) % len(train_rows)] for i in range(2)], mode="pretrain")
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
        loss = (losses * batch["weights"].flatten()).sum() / batch["weights"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = evaluate_loss(model, heldout, batch_size=4)["overall"]["loss"]
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return {"root": root, "before": before, "after": after}


def test_training_lowered_the_heldout_loss(workspace):
    assert workspace["after"] < workspace["before"] - 0.5, workspace


def test_eval_loss_per_category(workspace, capsys):
    root = workspace["root"]
    out = root / "loss"
    assert main(["eval", "loss", "--model", str(root / "model"), "--data", str(root / "heldout_packed"),
                 "--out", str(out), "--batch-size", "4"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert set(metrics["by_category"]) == {"file_fim", "pretrain_replay"}
    assert metrics["overall"]["loss"] == pytest.approx(workspace["after"], rel=1e-4)
    assert metrics["overall"]["perplexity"] == pytest.approx(torch.tensor(workspace["after"]).exp().item(), rel=1e-3)
    tokens = sum(v["tokens"] for v in metrics["by_category"].values())
    assert tokens == metrics["overall"]["tokens"] > 0
    assert "| file_fim |" in (out / "report.md").read_text()
    assert "loss:" in capsys.readouterr().out


def test_loss_skips_padding_and_document_starts():
    rows = [{"input_ids": [5, 6, 7, 8, 9, 0], "cu_seqlens": [0, 3, 5, 6], "loss_mask": [1, 1, 0, 1, 1, 0],
             "category": "c", "num_documents": 2}]  # fmt: skip
    batch = collate_rows(rows, "sft")
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    # targets 6 and (masked) 7 of doc 0, 9 of doc 1; never 8 (a document start) nor the padding
    assert batch["weights"].tolist() == [[1, 0, 0, 1, 0, 0]]
    assert collate_rows(rows, "pretrain")["weights"].tolist() == [[1, 1, 0, 1, 0, 0]]


@pytest.mark.parametrize("source", ["heldout_fim", "heldout_sources"])
def test_eval_fim_on_heldout_shards(workspace, source):
    root = workspace["root"]
    out = root / f"fim_{source}"
    assert main(["eval", "fim", "--model", str(root / "model"), "--data", str(root / source), "--out", str(out),
                 "--max-samples", "6", "--max-new-tokens", "16", "--max-new-tokens-single-line", "12",
                 "--max-prefix-chars", "400", "--max-suffix-chars", "200"]) == 0  # fmt: skip
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    overall = metrics["overall"]
    assert overall["count"] == 6
    assert 0.0 <= overall["em"] <= overall["es"] <= 1.0
    assert set(metrics["by_split_kind"]) <= {"line", "ast"} and metrics["by_level"].keys() == {"file"}
    assert "Python" in metrics["by_language"]
    rows = [json.loads(line) for line in (out / "fim_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        if row["lines"] == "single":
            assert "\n" not in row["prediction"]
    report = (out / "report.md").read_text()
    assert "## By split_kind" in report and "## By language" in report


def test_load_fim_samples_from_source_files_is_seeded(workspace):
    data = workspace["root"] / "heldout_sources"
    first = load_fim_samples(data, max_samples=6, seed=3)
    assert first == load_fim_samples(data, max_samples=6, seed=3)
    assert all(s["prompt"].endswith("<|fim_middle|>") and s["split_kind"] in ("line", "ast") for s in first)


def test_eval_loops_table_and_plot(workspace, capsys):
    root = workspace["root"]
    out = root / "loops"
    assert main(["eval", "loops", "--model", str(root / "model"), "--data", str(root / "heldout_packed"),
                 "--max-rows", "4", "--fim-data", str(root / "heldout_fim"), "--fim-max-samples", "3",
                 "--max-prefix-chars", "300", "--max-suffix-chars", "100", "--out", str(out), "--batch-size", "4"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    rows = results["metrics"]["rows"]
    assert [r["loops"] for r in rows] == [1, 2, 3]
    assert [r["trained"] for r in rows] == [False, True, False]
    for row in rows:
        assert row["loss"] > 0 and 0 <= row["fim_es"] <= 1 and row["decode_ms_per_token"] > 0
    details = results["metrics"]["details"]
    assert [len(d["diagnostics"]["loops"]) for d in details] == [1, 2, 3]
    assert [len(d["diagnostics"]["gates"][0]["per_loop"]) for d in details] == [0, 1, 2]
    assert rows[0]["mean_gate"] is None  # one loop has no gate (NaN in memory, null in JSON)
    plot = out / "loops.png"
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Loop-count study" in report and "![loops](loops.png)" in report
    assert "loops: " in capsys.readouterr().out


def test_load_model_with_another_loop_count(workspace):
    model = load_model(workspace["root"] / "model", num_loops=3)
    assert model.config.num_loops == 3
    with pytest.raises(ValueError, match="num_loops"):
        load_model(workspace["root"] / "model", num_loops=0)


def test_batched_generation_keeps_the_prompt_order(workspace):
    from loopcoder.postrain.evaluation.generation import HFGenerator

    generator = HFGenerator.from_pretrained(workspace["root"] / "model", batch_size=4)
    prompts = ["def add(a, b):\n    return", "x", "import os\nimport sys\n\n\ndef main():\n"]
    together = generator.generate(prompts, n=1, temperature=0.0, max_new_tokens=4, stop=[])
    alone = [generator.generate([p], n=1, temperature=0.0, max_new_tokens=4, stop=[])[0] for p in prompts]
    assert together == alone


def test_a_row_cap_takes_rows_from_every_category_folder(workspace, tmp_path):
    rows = read_packed_rows(workspace["root"] / "heldout_packed")
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    assert len(by_category) == 2
    for category, category_rows in by_category.items():
        with ShardWriter(tmp_path / "heldout" / category, PACKED_SEQUENCE, rows_per_shard=2) as writer:
            writer.write_all(category_rows)
    capped = read_packed_rows(tmp_path / "heldout", max_rows=3)
    assert len(capped) == 3 and {r["category"] for r in capped} == set(by_category)
    assert len(read_packed_rows(tmp_path / "heldout")) == len(rows)
