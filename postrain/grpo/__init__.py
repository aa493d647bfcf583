"""GRPO for code RL: no KL, DAPO clip-higher, token-level loss, sandboxed pass-rate rewards, on DeepSpeed.

| module | concern |
|---|---|
| `config.py` | `GRPOConfig`: every knob, named as in the papers; YAML + CLI overrides |
| `loss.py` | group advantages, clipped surrogate, token-level aggregation (pure functions) |
| `data.py` | problem sources (JSONL, shards, HumanEval, contest rows, synthetic), held-out split by id, seeded stream, chat prompts |
| `rollout.py` | batched generation with the looped model's cache; reward calls with a deadline |
| `trainer.py` | the DeepSpeed engine loop: collect, dynamic sampling, several clipped updates, checkpoints |
| `metrics.py` | `Collected` (what a step's collection produced) and the step's metric record |
| `evaluation.py` | pass@1 on held-out problems through the sandboxed pass-rate reward |
| `synthetic.py` | the print-a-number task a tiny model learns on CPU |

docs/grpo.md states the objective and explains each knob. Nothing here imports deepspeed at import time
except `trainer.py` (through `loopcoder.postrain.runtime`), so `DS_ACCELERATOR` can be set first.
"""

from .config import GRPOConfig

__all__ = ["GRPOConfig"]
