"""Search filters: a mapping with any of these keys, the same on both transports.

    {"tags_any": ["Rain"], "min_duration_s": 2, "extra": {"licence": "CC0-1.0", "year": {"gte": 2020}}}

`extra` holds conditions on keys of the items' metadata: a bare value means equal; an object takes eq, in, gt, gte,
lt, lte (numbers against numbers, strings such as ISO dates against strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Filter = Mapping[str, Any]
FILTER_KEYS = ("tags_any", "tags_all", "source_prefix", "min_duration_s", "max_duration_s", "extra")


def check_filter(flt: Filter | None) -> dict[str, Any]:
    """The filter without empty values; an unknown key is a mistake, not something to ignore."""
    flt = dict(flt or {})
    unknown = set(flt) - set(FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown filter keys {sorted(unknown)}; known: {list(FILTER_KEYS)}")
    return {k: v for k, v in flt.items() if v not in (None, [], (), {})}


def extra_conditions(conditions: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """filter["extra"] with every bare value written as {"eq": value}: the form blat.proto's ExtraCondition takes."""
    return {k: dict(v) if isinstance(v, Mapping) else {"eq": v} for k, v in conditions.items()}
