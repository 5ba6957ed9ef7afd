"""Supervised AudioSet heads: the class list a tower's head (`head_classes` on its config) predicts, in order."""

from __future__ import annotations

import csv

from blat.models.text import resolve_path


def read_head_classes(source: str) -> tuple[str, ...]:
    """The AudioSet `mid` of every output of a supervised head, in order, from a CSV file or package data."""
    with open(resolve_path(source), newline="") as f:
        return tuple(row["mid"] for row in csv.DictReader(f))
