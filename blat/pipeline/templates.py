"""Template captions for simulated scenes: a phrase bank per AudioSet tag (`data/tag_phrases.csv`) joined by the
true temporal relations of the events ("a dog barks, then a door slams while rain falls").

Also the tags-only captions of ablation (c): text from the tag names alone, no audio and no captioner.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from blat_contract.labels import audioset_labels

PHRASES_PATH = Path(__file__).with_name("data") / "tag_phrases.csv"
OVERLAP_TOLERANCE_S = 0.05  # an event that starts this close to the previous one's end follows it ("then")

# Connectives between consecutive events, by relation and by the form of the phrases ("clause" or "noun").
THEN = {
    "clause": (", then ", " and then ", " before ", ", and after that "),
    "noun": (" followed by ", ", then ", " and then "),
}
WHILE = {"clause": (" while ", " as ", " and at the same time "), "noun": (" along with ", " together with ", " and ")}
# Background (a steady bed under the events): {ev} the events, {bg} the background phrase of the same form.
BACKGROUND = {
    "clause": (
        "{ev} while {bg} in the background",
        "{ev} as {bg}",
        "{ev} over the sound of {bgn}",
        "{bg} as {ev}",
        "{ev}, with {bgn} in the background",
    ),
    "noun": ("{ev} with {bg} in the background", "{ev} over {bg}", "{bg} in the background with {ev}"),
}


@dataclass(frozen=True)
class Phrases:
    clauses: tuple[str, ...]  # full clauses: "a dog barks"
    nouns: tuple[str, ...]  # noun phrases: "a dog barking"

    def of(self, form: str) -> tuple[str, ...]:
        return self.clauses if form == "clause" else self.nouns


class PhraseBankError(ValueError):
    """The phrase bank file is malformed or names a tag that is not an AudioSet display name."""


@lru_cache(maxsize=4)
def load_phrase_bank(path: str | Path | None = None) -> dict[str, Phrases]:
    """tag_phrases.csv -> {AudioSet display name: Phrases}; every tag is checked against the 527 names."""
    path = Path(path) if path else PHRASES_PATH
    names = set(audioset_labels())
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.lstrip().startswith("#")]
    bank = {}
    for row in csv.DictReader(lines):
        tag = row["tag"].strip()
        if tag not in names:
            raise PhraseBankError(f"{path}: {tag!r} is not an AudioSet display name")
        clauses = tuple(p.strip() for p in row["clauses"].split("|") if p.strip())
        nouns = tuple(p.strip() for p in row["nouns"].split("|") if p.strip())
        if not clauses or not nouns:
            raise PhraseBankError(f"{path}: {tag!r} needs at least one clause and one noun phrase")
        bank[tag] = Phrases(clauses, nouns)
    return bank


def _plain_name(tag: str) -> str:
    """'Walk, footsteps' -> 'walk, footsteps'; 'Chopping (food)' -> 'chopping'."""
    return re.sub(r"\s*\(.*?\)", "", tag).strip().lower()


def phrases_for(tag: str) -> Phrases:
    """The bank's phrases for one tag, or a generic fallback built from its name."""
    bank = load_phrase_bank()
    if tag in bank:
        return bank[tag]
    name = _plain_name(tag)
    return Phrases((f"a {name} sound is heard",), (f"the sound of {name}",))


def clip_phrases(tags: Sequence[str]) -> Phrases:
    """Every phrase of every tag of a clip (a caption may describe a clip by any of its tags)."""
    ps = [phrases_for(t) for t in tags]
    return Phrases(tuple(c for p in ps for c in p.clauses), tuple(n for p in ps for n in p.nouns))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _event_phrase(tags: Sequence[str], form: str, rng: np.random.Generator) -> str:
    """Mostly the clip's first (main) tag; sometimes another of its tags, for variety."""
    tag = tags[0] if len(tags) == 1 or rng.random() < 0.7 else _pick(rng, tags[1:])
    return _pick(rng, phrases_for(tag).of(form))


def relations(events: Sequence[dict], tolerance: float = OVERLAP_TOLERANCE_S) -> list[str]:
    """Events sorted by onset -> relation of each to the next: "while" (overlap) or "then"."""
    return ["while" if b["onset"] < a["offset"] - tolerance else "then" for a, b in zip(events, events[1:])]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def scene_caption(events: Sequence[dict], background: dict | None, rng: np.random.Generator) -> str:
    """One caption: `events` sorted by onset (dicts with tags, onset, offset); events appear in that order."""
    form = "clause" if rng.random() < 0.6 else "noun"
    text, last = _event_phrase(events[0]["tags"], form, rng), ""
    for rel, ev in zip(relations(events), events[1:]):
        options = [c for c in (THEN if rel == "then" else WHILE)[form] if c != last]  # no "then ..., then ..."
        last = _pick(rng, options)
        text += last + _event_phrase(ev["tags"], form, rng)
    if background:
        template = _pick(rng, BACKGROUND[form])
        text = template.format(
            ev=text, bg=_event_phrase(background["tags"], form, rng), bgn=_event_phrase(background["tags"], "noun", rng)
        )
    elif len(events) == 1 and form == "noun" and rng.random() < 0.3:
        text = "the sound of " + text
    return _sentence(text)


def shipped_text(hint: str = "", captions: Sequence[str] = ()) -> list[str]:
    """A clip's own descriptions: the tag table's hint first (written as a caption), then shipped titles, cleaned
    ("Toyland: Jet take off (early)" -> "jet take off"; one-word titles dropped)."""
    out = [hint] if hint else []
    for c in captions:
        c = re.sub(r"\s*\(.*?\)?$", "", re.sub(r"^[A-Za-z ]+: ", "", c)).strip().lower()
        if len(c.split()) >= 2:
            out.append(c)
    return list(dict.fromkeys(out))


def distinct_captions(make, rng: np.random.Generator, n: int, first: Sequence[str] = (), tries: int = 60) -> list[str]:
    """`first`, then calls of make(rng) until there are n distinct captions (repeats only when there are too few)."""
    out: list[str] = []
    for c in [*first, *(make(rng) for _ in range(tries))]:
        if c.lower() not in {o.lower() for o in out}:
            out.append(c)
        if len(out) == n:
            return out
    return [out[i % len(out)] for i in range(n)]


def event_captions(
    tags: Sequence[str], hint: str, captions: Sequence[str], rng: np.random.Generator, n: int
) -> list[str]:
    """n references for a single recorded event: its shipped description and hint first, then bank phrases."""
    ps = clip_phrases(tags)
    bank = list(ps.clauses) + list(ps.nouns) + [f"the sound of {x}" for x in ps.nouns]
    return distinct_captions(
        lambda r: _sentence(_pick(r, bank)), rng, n, first=[_sentence(c) for c in shipped_text(hint, captions)]
    )


def tags_caption(tags: Sequence[str]) -> str:
    """Ablation (c): a caption from the tag names alone, e.g. "the sound of dog, walk and heavy engine" (the first
    part of each display name: "Walk, footsteps" -> "walk").

    Deliberately not from the phrase bank, which also writes the reference captions: a tags-only baseline should not
    borrow the references' wording."""
    names = list(dict.fromkeys(_plain_name(t).split(",")[0].strip() for t in tags))
    if not names:
        return "a sound"
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return "the sound of " + joined
