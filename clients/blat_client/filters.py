"""Search filters: a mapping with any of these keys, the same on both transports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Filter = Mapping[str, Any]
FILTER_KEYS = ("tags_any", "tags_all", "source_prefix", "min_duration_s", "max_duration_s")


def check_filter(flt: Filter | None) -> dict[str, Any]:
    """The filter without empty values; an unknown key is a mistake, not something to ignore."""
    flt = dict(flt or {})
    unknown = set(flt) - set(FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown filter keys {sorted(unknown)}; known: {list(FILTER_KEYS)}")
    return {k: v for k, v in flt.items() if v not in (None, [], ())}
