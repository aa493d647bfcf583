"""SFT and looped continued pre-training on DeepSpeed, over packed `packed_sequence` shards.

| module | concern |
|---|---|
| `config.py` | `SFTConfig`: every knob, YAML + CLI overrides |
| `data.py` | shard discovery and validation, seeded streaming row order, collation to position ids |
| `plan.py` | learning-rate schedule, curriculum phases, replay, the global batch of each step |
| `loss.py` | packed-batch token loss, per-category sums |
| `trainer.py` | `SFTTrainer`: the step (data plan, micro-batches, loss, checks) on the shared runtime |
| `silent_errors.py` | replica fingerprints and deterministic recomputation |
| `sample_data.py` | packed shards from the sample corpus |

Process group, engine, checkpoints and metrics are `loopcoder.postrain.runtime`'s. Nothing here imports
deepspeed at module import time except `trainer.py` (through the runtime), so that `DS_ACCELERATOR` can be
set first.
"""

from .config import SFTConfig

__all__ = ["SFTConfig"]
