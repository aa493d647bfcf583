"""The training runtime SFT and GRPO share: config base, process group, engine, model, run loop, checkpoints.

| module | concern |
|---|---|
| `config.py` | `TrainerConfig` (the shared fields) and the YAML + `name=value` loader |
| `distributed.py` | CPU environment, process group and device, the DeepSpeed config and engine |
| `collectives.py` | every collective, on the device the process group's backend needs |
| `model.py` | the one model builder and tokenizer loader |
| `trainer.py` | `Trainer`: resume, the step loop with callbacks, logging, checkpoints, gradient norm, final model |
| `checkpoint.py` | atomic checkpoints, exact resume, the final Hugging Face model |
| `metrics.py` | `metrics.jsonl`, the trackers of `report_to`, the progress bar |
| `trackers.py` | `report_to`: TensorBoard, Weights & Biases, MLflow (rank 0) |
| `adapters.py` | LoRA (`peft:` block): the wrapped model, the adapter export, the merged model |
| `logprobs.py` | per-token log-probabilities and entropy, a chunk of fp32 logits at a time |

Nothing here imports deepspeed at module import time except `trainer.py` (through `distributed`), so
that `DS_ACCELERATOR` can be set first.
"""

from .config import TrainerConfig

__all__ = ["TrainerConfig"]
