"""RL problems mined from the cleaned corpus (`mining`)."""
