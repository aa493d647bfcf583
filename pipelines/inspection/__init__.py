"""Looking at shards: discovery, validation, statistics, samples and charts.

    loopcoder shards validate PATH
    loopcoder shards stats PATH [--json]
    loopcoder shards show PATH [--n N] [--where EXPR]
    loopcoder shards plot PATH -o DIR

PATH is a shard file, a directory of shards or a whole job output. See docs/shards.md.
"""

from loopcoder.pipelines.inspection.validate import ShardProblem, validate_shards
from loopcoder.pipelines.io.filesystem import discover_shards

__all__ = ["ShardProblem", "discover_shards", "validate_shards"]
