"""Checks for the text a request carries: queries, labels, tags, captions, paths, ids.

Every string from a client passes `check_text` before it reaches a model, the index or the file system. JSON and
protobuf both admit strings that nothing downstream can take: a NUL byte (SQLite and file paths cut or refuse it) and
a lone UTF-16 surrogate such as "\\ud800" (no UTF-8 encoding exists, so the tokenizer and SQLite raise). Refusing them
here, per item, keeps one bad string from failing a batch of other people's requests.
"""
from __future__ import annotations

from typing import Any

from server.errors import BadRequest


def text_problem(value: Any) -> str | None:
    """Why `value` is not usable text, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode (a lone surrogate {value[e.start]!r} at index {e.start})"
    return None


def check_text(value: Any, what: str, max_chars: int | None = None, allow_empty: bool = False) -> str:
    """`value` as a string fit for the models, the index and the file system; BadRequest (400) otherwise."""
    problem = text_problem(value)
    if problem is None and not allow_empty and not value.strip():
        problem = "must not be empty"
    if problem is None and max_chars is not None and len(value) > max_chars:
        problem = f"has {len(value)} characters; the limit is {max_chars}"
    if problem is not None:
        raise BadRequest(f"{what} {problem}")
    return value
