"""`loopcoder model` commands."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Adds this group's commands; the group prints its help when none is given."""
