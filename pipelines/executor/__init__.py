"""What every data job runs on: per-task stages on Ray (`tasks`) and mergeable statistics (`stats`)."""
