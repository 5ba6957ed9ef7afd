"""Checks for the text a request carries: queries, labels, tags, captions, paths, ids.

Every string from a client passes `check_text` before it reaches a model, the index or the file system. JSON and
protobuf both admit strings that nothing downstream can take: a NUL byte (SQLite and file paths cut or refuse it) and
a lone UTF-16 surrogate such as "\\ud800" (no UTF-8 encoding exists, so the tokenizer and SQLite raise). Refusing them
here, per item, keeps one bad string from failing a batch of other people's requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blat_gateway.errors import BadRequest


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


def manifest_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, {id, audio, tags, caption, extra}) for each row of a JSON Lines audio manifest, as the rebuild
    and the embedding job read it: `audio` (or `path`) as written, relative to the manifest's folder unless absolute;
    `id` defaults to the file's stem; `caption` to the first of `captions`; `extra` (the item's metadata: licence,
    source...) to {}. BadRequest names a row that is not one."""
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = row.get("audio") or row["path"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise BadRequest(f"{path}:{n}: need a JSON object with 'audio' or 'path'") from None
        check_text(audio, f"{path}:{n}: audio")
        if not isinstance(row.get("extra", {}), dict):
            raise BadRequest(f"{path}:{n}: extra must be a JSON object")
        captions = row.get("captions") or []
        yield (
            n,
            {
                "id": row.get("id") or Path(audio).stem,
                "audio": audio,
                "tags": row.get("tags", []),
                "caption": row.get("caption") or (captions[0] if captions else ""),
                "extra": row.get("extra") or {},
            },
        )
