"""Word-level caption vocabulary: pad=0, start=1, end=2, unk=3, then words by frequency."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
MAX_CAPTION_TOKENS = 20  # words per caption, BLAT's cap (start/end not counted)

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-case words; punctuation is dropped (captions are compared word by word)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """An index-aligned tuple of tokens whose first four are `SPECIALS`."""

    tokens: tuple[str, ...]

    def __post_init__(self):
        if tuple(self.tokens[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {self.tokens[:4]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in words(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_tokens: int = MAX_CAPTION_TOKENS) -> list[int]:
        """start + up to `max_tokens` word ids + end."""
        ids = [self._index.get(w, UNK) for w in words(text)][:max_tokens]  # type: ignore[attr-defined]
        return [START, *ids, END]

    def decode(self, ids: Sequence[int]) -> str:
        """Word ids -> text; stops at the first end token, skips pad/start."""
        out = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK])
        return " ".join(out)

    def to_json(self) -> str:
        return json.dumps(list(self.tokens))

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(tuple(json.loads(text)))
