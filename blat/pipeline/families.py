"""Sound families for reporting and evaluation by family: a clip's AudioSet tags -> one of `FAMILIES`.

Each of the 527 AudioSet display names belongs to one family, read from the AudioSet ontology's hierarchy and kept
in `data/audioset_families.csv` (regenerate it with `python -m blat.pipeline.families ONTOLOGY.json`):

- under "Speech" (Human sounds > Human voice > Speech: speech, male/female/child speech, conversation, narration,
  babbling, speech synthesizer) -> "speech";
- under "Musical instrument" -> "instruments";
- under "Music" otherwise (genres, moods, music roles), and the whole "Singing" subtree (singing, choir, chant,
  rapping: music, although the ontology files it under Human voice and Choir also under Musical instrument) -> "music";
- under "Human sounds" otherwise (shouts, screams, laughter, crying, coughs, breathing, footsteps, clapping, crowds)
  -> "human non-speech";
- under "Animal" or "Natural sounds" (wind, thunderstorm, water, fire) -> "animals and nature";
- everything else (Sounds of things, Source-ambiguous sounds, Channel/environment/background) -> "sound effects".

A class with several parents in the ontology takes the first family in `FAMILIES` order that any of its ancestor
paths gives (so "Bell", under both Musical instrument and Sounds of things, is "instruments"; "Growling", under Dog and
Cat, is "animals and nature"), except the onomatopoeic classes in `_GENERIC`, which are "sound effects" whatever else
they also hang under ("Hiss" is a cat's, a snake's and steam's).

Precedence for a clip whose tags fall in several families: the first in `FAMILIES` order wins, i.e.
speech > instruments > music > human non-speech > animals and nature > sound effects. So a piano note tagged
"Piano; Keyboard (musical); Musical instrument; Music" is "instruments", a game soundtrack tagged "Music; Video game
music" is "music", "Laughter; Speech" is "speech", "Horse; Clip-clop" is "animals and nature". A clip with no tags
(or only unknown names) is "sound effects".
"""

from __future__ import annotations

import csv
import json
import sys
from functools import lru_cache
from pathlib import Path

SPEECH, INSTRUMENTS, MUSIC = "speech", "instruments", "music"
HUMAN, NATURE, EFFECTS = "human non-speech", "animals and nature", "sound effects"
FAMILIES = (SPEECH, INSTRUMENTS, MUSIC, HUMAN, NATURE, EFFECTS)  # also the precedence order
FAMILIES_PATH = Path(__file__).with_name("data") / "audioset_families.csv"

_ROOTS = (
    ("Speech", SPEECH),
    ("Musical instrument", INSTRUMENTS),
    ("Music", MUSIC),
    ("Human sounds", HUMAN),
    ("Animal", NATURE),
    ("Natural sounds", NATURE),
)
_GENERIC = ("Hiss", "Buzz", "Rattle", "Crackle")  # onomatopoeia that are sound effects unless other tags say more


@lru_cache(maxsize=1)
def tag_families() -> dict[str, str]:
    """AudioSet display name -> family, from data/audioset_families.csv."""
    with open(FAMILIES_PATH, newline="", encoding="utf-8") as f:
        return {r["display_name"]: r["family"] for r in csv.DictReader(f)}


def family(tags) -> str:
    """A clip's AudioSet display names -> one of FAMILIES (the first in FAMILIES order among its tags' families)."""
    table = tag_families()
    found = {table[t] for t in tags if t in table}
    return next((f for f in FAMILIES if f in found), EFFECTS)


def derive_from_ontology(ontology: list[dict], names: list[str]) -> dict[str, str]:
    """The family of each display name in `names` from the AudioSet ontology (a list of {id, name, child_ids})."""
    by_name = {o["name"]: o for o in ontology}
    parents: dict[str, list[str]] = {}
    for o in ontology:
        for c in o.get("child_ids", []):
            parents.setdefault(c, []).append(o["id"])
    name_of = {o["id"]: o["name"] for o in ontology}

    def lineage(node_id: str) -> set[str]:  # the node and all its ancestors, by name
        out, todo = set(), [node_id]
        while todo:
            n = todo.pop()
            if name_of[n] not in out:
                out.add(name_of[n])
                todo += parents.get(n, [])
        return out

    result = {}
    for name in names:
        if name in _GENERIC:
            result[name] = EFFECTS
            continue
        seen = lineage(by_name[name]["id"])
        if "Singing" in seen:  # singing (choir, chant, rapping...) is music, not a human sound nor an instrument
            result[name] = MUSIC
            continue
        found = {fam for root, fam in _ROOTS if root in seen}
        result[name] = next((f for f in FAMILIES if f in found), EFFECTS)
    return result


def main(argv: list[str] | None = None) -> int:
    from blat_contract.labels import audioset_labels

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m blat.pipeline.families ONTOLOGY.json  (rewrites data/audioset_families.csv)")
        return 2
    ontology = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    table = derive_from_ontology(ontology, list(audioset_labels()))
    with open(FAMILIES_PATH, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["display_name", "family"])
        w.writerows(table.items())
    print(f"{FAMILIES_PATH}: {len(table)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
