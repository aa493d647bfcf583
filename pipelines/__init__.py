"""Ray Data pipelines: reading, cleaning, dedup, AST validation, FIM, commits, tokenised shards."""

# Imported from a checkout as `pipelines` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.pipelines`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.pipelines":
    raise ImportError(f"import this package as `loopcoder.pipelines`, not `{__name__}` (pip install -e . first)")
