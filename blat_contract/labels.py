"""The 527 AudioSet classes (order of class_labels_indices.csv) and tag multi-hot vectors."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import numpy as np

NUM_AUDIOSET_CLASSES = 527


@lru_cache(maxsize=1)
def _rows() -> tuple[dict[str, str], ...]:
    path = resources.files("blat_contract") / "data" / "audioset" / "class_labels_indices.csv"
    with path.open(newline="") as f:
        rows = tuple(sorted(csv.DictReader(f), key=lambda r: int(r["index"])))
    assert len(rows) == NUM_AUDIOSET_CLASSES, len(rows)
    return rows


def audioset_labels() -> tuple[str, ...]:
    """Display names, index-aligned with the 527-d tag vector."""
    return tuple(r["display_name"] for r in _rows())


def labels_for_mids(mids: Iterable[str]) -> tuple[str, ...]:
    """AudioSet machine ids ("/m/09x0r") -> display names ("Speech"). An id outside the 527 raises KeyError."""
    by_mid = {r["mid"]: r["display_name"] for r in _rows()}
    mids = list(mids)
    unknown = [m for m in mids if m not in by_mid]
    if unknown:
        raise KeyError(f"not AudioSet class ids: {unknown[:5]}")
    return tuple(by_mid[m] for m in mids)


@lru_cache(maxsize=1)
def _label_index() -> dict[str, int]:
    return {name.lower(): i for i, name in enumerate(audioset_labels())}


def tags_to_multi_hot(tags: Iterable[str]) -> np.ndarray:
    """AudioSet display names -> float32 (527,) multi-hot. Unknown names raise KeyError naming them."""
    index = _label_index()
    tags = list(tags)
    unknown = [t for t in tags if t.lower() not in index]
    if unknown:
        raise KeyError(f"not AudioSet display names: {unknown}")
    vec = np.zeros(NUM_AUDIOSET_CLASSES, dtype=np.float32)
    vec[[index[t.lower()] for t in tags]] = 1.0
    return vec
