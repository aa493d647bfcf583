"""Finding the shards under a path: the one shard finder, `loopcoder.pipelines.io.filesystem.discover_shards`."""

from loopcoder.pipelines.io.filesystem import discover_shards

__all__ = ["discover_shards"]
