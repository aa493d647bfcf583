"""Finding the shards under a path: the one shard finder, `loopcoder.pipelines.filesystem.discover_shards`."""

from loopcoder.pipelines.filesystem import discover_shards

__all__ = ["discover_shards"]
