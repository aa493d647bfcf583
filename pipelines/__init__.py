"""Ray Data pipelines: reading, cleaning, dedup, AST validation, FIM, commits, tokenised shards."""
