"""The curated table that maps sound paths inside packages to AudioSet tags (`data/tag_rules.csv`).

Columns: `package` (a Debian package name, or `*` for any), `pattern` (a case-insensitive regex searched in the
member's path relative to the package root, see `sources.PACKAGES`), `tags` (`;`-separated AudioSet display
names; empty = exclude the file, used for speech, music and voices), `caption_hint` (a short description of
the sound, or empty). Rows are tried in order and the first match wins; files no row matches are skipped.
Lines starting with `#` are comments.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from blat_contract.labels import audioset_labels

TAG_RULES_PATH = Path(__file__).with_name("data") / "tag_rules.csv"
COLUMNS = ("package", "pattern", "tags", "caption_hint")


class TagTableError(ValueError):
    """The tag table (or a user CSV) is malformed; the message names the file, line and the bad value."""


@dataclass(frozen=True)
class TagRule:
    package: str  # Debian package name or "*"
    pattern: re.Pattern  # searched in the member path relative to the package root
    tags: tuple[str, ...]  # AudioSet display names; () = exclude
    caption_hint: str  # short description of the sound ("" if none)
    line: int  # in the table file, for messages

    @property
    def excludes(self) -> bool:
        return not self.tags


def parse_tags(text: str, where: str = "") -> tuple[str, ...]:
    """'Fire; Crackle' -> ("Fire", "Crackle"), each checked against the 527 AudioSet display names."""
    names = set(audioset_labels())
    tags = tuple(t.strip() for t in text.split(";") if t.strip())
    for tag in tags:
        if tag not in names:
            close = difflib.get_close_matches(tag, names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TagTableError(
                f"{where}: {tag!r} is not one of the 527 AudioSet display names "
                f"(blat_contract/data/audioset/class_labels_indices.csv){hint}"
            )
    if len(set(tags)) != len(tags):
        raise TagTableError(f"{where}: repeated tag in {text!r}")
    return tags


class TagTable:
    """Ordered rules; `match(package, path)` returns the first rule that applies, or None."""

    def __init__(self, rules: list[TagRule], source: str = "<memory>"):
        self.rules, self.source = rules, source
        self._by_package: dict[str, list[TagRule]] = {}

    def rules_for(self, package: str) -> list[TagRule]:
        if package not in self._by_package:
            self._by_package[package] = [r for r in self.rules if r.package in (package, "*")]
        return self._by_package[package]

    def match(self, package: str, path: str) -> TagRule | None:
        return next((r for r in self.rules_for(package) if r.pattern.search(path)), None)

    def tags_used(self) -> set[str]:
        return {t for r in self.rules for t in r.tags}


def parse_tag_table(text: str, source: str = "<memory>") -> TagTable:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows or tuple(c.strip() for c in rows[0]) != COLUMNS:
        raise TagTableError(f"{source}: the header must be {','.join(COLUMNS)}, got {rows[0] if rows else 'nothing'}")
    # csv line numbers ignore the comment lines we removed, so map back to physical lines for messages
    physical = [i + 1 for i, ln in enumerate(text.splitlines()) if not ln.lstrip().startswith("#")]
    rules = []
    for k, row in enumerate(rows[1:], start=1):
        line = physical[k] if k < len(physical) else k + 1
        where = f"{source}:{line}"
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(COLUMNS):
            raise TagTableError(f"{where}: expected {len(COLUMNS)} columns ({','.join(COLUMNS)}), got {len(row)}")
        package, pattern, tags, hint = (c.strip() for c in row)
        try:
            rx = re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise TagTableError(f"{where}: bad regex {pattern!r}: {e}") from None
        rules.append(TagRule(package, rx, parse_tags(tags, where), hint, line))
    return TagTable(rules, source)


def load_tag_table(path: str | Path | None = None) -> TagTable:
    """Read and validate a tag table (the committed one by default). Raises TagTableError naming the line."""
    path = Path(path) if path else TAG_RULES_PATH
    return parse_tag_table(path.read_text(encoding="utf-8"), str(path))
