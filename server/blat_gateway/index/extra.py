"""An item's metadata (`extra`) and the filter conditions on its keys, for every engine.

`extra` is a JSON object. What a caller may write into it: at most MAX_EXTRA_KEYS top-level keys named by KEY
(letters, digits, `_`; they address filters, so they stay plain), no key starting with "predicted_" (the server's
own: the tagger's scores, a predicted caption), and within limits.max_extra_bytes as compact JSON (item_limits.py).
Values may be any JSON; filters compare top-level scalars.

A condition on one key holds when every bound given holds:
    eq      equal to a string, number or boolean (the same kind: true is not 1)
    in      equal to one of these
    gt gte lt lte   numbers against numbers, strings against strings (ISO dates sort as text)
An item without the key, or with a value of another kind, does not match. `matches` (Python), `sql` (SQLite JSON1)
and `milvus` (a Milvus JSON-field expression) say the same thing; Milvus cannot tell true from 1, so its engine
re-checks its hits with `matches`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blat_gateway.errors import BadRequest

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_EXTRA_KEYS = 64
MAX_CONDITIONS = 16  # keys per filter
MAX_IN = 64  # values per `in`
RESERVED_PREFIX = "predicted_"
BOUNDS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS = ("eq", "in", *BOUNDS)

Scalar = str | int | float | bool


def check_key(key: Any, what: str = "extra key") -> str:
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise BadRequest(f"{what} {str(key)[:80]!r}: use 1-64 of A-Z a-z 0-9 _, not starting with a digit")
    return key


def check_written(extra: Any) -> dict[str, Any]:
    """What a caller writes as `extra` (the size limit is item_limits.check_fields')."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise BadRequest(f"extra must be a JSON object, got {type(extra).__name__}")
    if len(extra) > MAX_EXTRA_KEYS:
        raise BadRequest(f"extra has {len(extra)} keys; at most {MAX_EXTRA_KEYS}")
    for key in extra:
        check_key(key)
        if key.startswith(RESERVED_PREFIX):
            raise BadRequest(f"extra key {key!r}: keys starting with {RESERVED_PREFIX!r} are the server's own")
    return dict(extra)


def _kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "number"
    if isinstance(v, str):
        return "text"
    return None


def _scalar(v: Any, where: str, kinds: tuple[str, ...] = ("bool", "number", "text")) -> Scalar:
    kind = _kind(v)
    if kind not in kinds or (kind == "number" and not math.isfinite(v)):
        wanted = " or ".join({"bool": "a boolean", "number": "a finite number", "text": "a string"}[k] for k in kinds)
        raise BadRequest(f"{where} must be {wanted}, got {str(v)[:80]!r}")
    return v


@dataclass(frozen=True)
class Condition:
    """Bounds on one key's value; None: not given."""

    eq: Scalar | None = None
    in_: tuple[Scalar, ...] | None = None
    gt: str | float | None = None
    gte: str | float | None = None
    lt: str | float | None = None
    lte: str | float | None = None

    @classmethod
    def parse(cls, key: str, spec: Any) -> Condition:
        """A bare scalar means `eq`; otherwise an object of operators."""
        where = f"filter.extra.{key}"
        if not isinstance(spec, Mapping):
            return cls(eq=_scalar(spec, where))
        unknown = set(spec) - set(OPERATORS)
        if unknown or not spec:
            raise BadRequest(f"{where}: give one or more of {', '.join(OPERATORS)}, got {sorted(map(str, spec))}")
        values = spec.get("in")
        if values is not None:
            if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= MAX_IN:
                raise BadRequest(f"{where}.in must be a list of 1-{MAX_IN} values")
            values = tuple(_scalar(v, f"{where}.in") for v in values)
        bounds = {
            op: _scalar(spec[op], f"{where}.{op}", ("number", "text")) for op in BOUNDS if spec.get(op) is not None
        }
        eq = _scalar(spec["eq"], f"{where}.eq") if spec.get("eq") is not None else None
        return cls(eq=eq, in_=values, **bounds)

    def to_json(self) -> dict[str, Any]:
        out = {"eq": self.eq, "in": list(self.in_) if self.in_ is not None else None}
        out.update({op: getattr(self, op) for op in BOUNDS})
        return {k: v for k, v in out.items() if v is not None}

    def _equals(self) -> tuple[Scalar, ...] | None:
        """The values `eq` and `in` allow together (None: no equality bound)."""
        if self.eq is None and self.in_ is None:
            return None
        allowed = self.in_ if self.in_ is not None else (self.eq,)
        return tuple(v for v in allowed if self.eq is None or _same(v, self.eq))

    def matches(self, value: Any) -> bool:
        kind = _kind(value)
        if kind is None or (kind == "number" and not math.isfinite(value)):
            return False
        allowed = self._equals()
        if allowed is not None and not any(_same(value, v) for v in allowed):
            return False
        for op, sym in BOUNDS.items():
            bound = getattr(self, op)
            if bound is not None and (_kind(bound) != kind or not _compare(value, sym, bound)):
                return False
        return True

    def sql(self, key: str) -> tuple[str, list]:
        """SQLite JSON1 over the `extra` column; json_type tells the kinds apart (true is not 1 there either)."""
        path = f'$."{key}"'
        where, params = [], []
        allowed = self._equals()
        if allowed is not None:
            terms = []
            for v in allowed:
                if _kind(v) == "bool":
                    terms.append("json_type(extra, ?) = ?")
                    params += [path, "true" if v else "false"]
                else:
                    kinds = "('integer', 'real')" if _kind(v) == "number" else "('text')"
                    terms.append(f"(json_type(extra, ?) IN {kinds} AND json_extract(extra, ?) = ?)")
                    params += [path, path, v]
            where.append("(" + (" OR ".join(terms) or "0") + ")")
        for op, sym in BOUNDS.items():
            bound = getattr(self, op)
            if bound is not None:
                kinds = "('integer', 'real')" if _kind(bound) == "number" else "('text')"
                where.append(f"(json_type(extra, ?) IN {kinds} AND json_extract(extra, ?) {sym} ?)")
                params += [path, path, bound]
        return " AND ".join(where), params

    def milvus(self, key: str, literal) -> str:
        """A Milvus expression on a JSON field `extra`, as strict as Milvus allows (true == 1 there)."""
        ref = f'extra["{key}"]'
        parts = []
        allowed = self._equals()
        if allowed is not None:
            terms = [f"{ref} == {_milvus_literal(v, literal)}" for v in allowed]
            # `in: []` matches nothing; Milvus 2.3 takes no bare `false`, and an id is never empty
            parts.append("(" + (" or ".join(terms) or 'id == ""') + ")")
        for op, sym in BOUNDS.items():
            bound = getattr(self, op)
            if bound is not None:
                parts.append(f"{ref} {sym} {_milvus_literal(bound, literal)}")
        return " and ".join(parts)


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _compare(a: Any, sym: str, b: Any) -> bool:
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[sym]


def _milvus_literal(v: Scalar, literal) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return literal(v)
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def parse_conditions(spec: Any) -> tuple[tuple[str, Condition], ...]:
    """filter.extra, {key: scalar or {operator: value}}, checked; sorted by key so equal filters compare equal."""
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise BadRequest(f"filter.extra must be an object of key: condition, got {type(spec).__name__}")
    if len(spec) > MAX_CONDITIONS:
        raise BadRequest(f"filter.extra has {len(spec)} keys; at most {MAX_CONDITIONS}")
    return tuple((check_key(k, "filter.extra key"), Condition.parse(k, spec[k])) for k in sorted(spec))
