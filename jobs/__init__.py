"""Launch configs and the `loopcoder` command: data jobs, training launches, DeepSpeed configs."""

# Imported from a checkout as `jobs` (the repository root on sys.path), this folder would be a second copy
# of `loopcoder.jobs`, with its own module state: refuse, and say how to import it.
if __name__ != "loopcoder.jobs":
    raise ImportError(f"import this package as `loopcoder.jobs`, not `{__name__}` (pip install -e . first)")
