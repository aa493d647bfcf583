"""Launch configs and the `loopcoder` command: data jobs, training launches, DeepSpeed configs."""
