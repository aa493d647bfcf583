# Everyday targets. `make demo` and `make test` work on a fresh machine: both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= jobs/constraints-cpu.txt
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-gpu lint style bench docs-check clean

setup: $(VENV)/.installed

# torch is pinned through the constraints file in the same resolution as everything else, so
# that no dependency can pull a CUDA build of torch on a CPU machine.
$(VENV)/.installed: pyproject.toml setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	@touch $@

# The main job on the embedded defaults (local Ray, CPU, the sample corpus): corpus -> clean and
# dedup -> FIM, repo-level FIM, commits, SFT conversations, per-category packed sets -> continued
# looped pre-training on the packed mixture -> SFT with curriculum and replay on the pipeline's
# conversations -> RL problems mined from the cleaned corpus -> a few GRPO steps on them with sandboxed
# rewards and held-out pass@1 before and after -> held-out loss and the loop-count study.
demo: setup
	$(BIN)/loopcoder data sample-corpus --out data/sample
	$(BIN)/loopcoder data run jobs/data/clean_dedup.yaml
	$(BIN)/loopcoder data samples jobs/data/samples.yaml
	$(BIN)/loopcoder shards stats data/samples/packed
	$(BIN)/loopcoder train sft --config jobs/sft/pretrain_tiny.yaml
	$(BIN)/loopcoder train sft --config jobs/sft/sample_tiny.yaml
	$(BIN)/loopcoder rl mine jobs/data/rl_mining.yaml
	$(BIN)/loopcoder train grpo --config jobs/rl/mined_tiny.yaml
	$(BIN)/loopcoder eval loss --model runs/sample_tiny/final --data data/samples/heldout --max-rows 64 --threads 1 --out runs/eval/loss
	$(BIN)/loopcoder eval loops --model runs/sample_tiny/final --data data/samples/heldout --max-rows 16 --threads 1 --out runs/eval/loops

test: setup  ## the whole test suite (larger sweeps marked slow are skipped)
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: setup  ## also the larger sweeps
	LOOPCODER_SLOW=1 $(BIN)/pytest $(PYTEST_ARGS)

# On a GPU machine install the CUDA build of torch into $(VENV) first (docs/install.md); without CUDA every test is
# skipped with its reason. The throughput report goes to runs/gpu_throughput.json (docs/launch.md).
test-gpu: setup  ## the GPU tests: kernel and model in bf16, SFT and GRPO on one and two GPUs, throughput
	$(BIN)/pytest tests/gpu -m gpu -rs $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

style: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup  ## benchmark tables (ratios measured side by side); see docs/benchmarks.md
	@for script in tests/bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache data runs
