"""Evaluation: pass@k through the sandbox, FIM exact match and edit similarity, held-out loss, loop-count study.

    loopcoder eval humaneval --model DIR --n-samples 10 --temperature 0.8 --k 1,10
    loopcoder eval problems problems.jsonl --model DIR
    loopcoder eval fim --model DIR --data SHARDS
    loopcoder eval loss --model DIR --data PACKED_SHARDS
    loopcoder eval loops --model DIR --data PACKED_SHARDS [--fim-data SHARDS]

Every command writes `results.json` (metrics with the model, data, config and code version) and
`report.md` into its output directory; see docs/evaluation.md.
"""

from .generation import Generator, HFGenerator, load_model
from .metrics import edit_similarity, exact_match, levenshtein, pass_at_k

__all__ = ["Generator", "HFGenerator", "load_model", "edit_similarity", "exact_match", "levenshtein", "pass_at_k"]
