"""blat.pipeline.families: AudioSet tags -> one of six families, by the ontology's hierarchy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blat.pipeline.families import FAMILIES, derive_from_ontology, family, tag_families
from blat_contract.labels import audioset_labels

ONTOLOGY = Path("/work/shared/data/audioset/ontology.json")


def test_every_audioset_class_has_one_family():
    table = tag_families()
    assert set(table) == set(audioset_labels()) and set(table.values()) == set(FAMILIES)


@pytest.mark.parametrize(
    "tags,expected",
    [
        (["Piano", "Keyboard (musical)", "Musical instrument", "Music"], "instruments"),
        (["Music", "Video game music"], "music"),
        (["Singing", "Music"], "music"),
        (["Speech", "Male speech, man speaking"], "speech"),
        (["Laughter", "Speech"], "speech"),
        (["Screaming"], "human non-speech"),
        (["Crowd", "Chatter"], "human non-speech"),
        (["Dog", "Bark"], "animals and nature"),
        (["Rain"], "animals and nature"),
        (["Horse", "Clip-clop"], "animals and nature"),
        (["Steam", "Hiss"], "animals and nature"),
        (["Hiss"], "sound effects"),
        (["Explosion", "Boom"], "sound effects"),
        ([], "sound effects"),
        (["not a class"], "sound effects"),
    ],
)
def test_family_precedence(tags, expected):
    assert family(tags) == expected


def test_committed_table_matches_the_ontology():
    if not ONTOLOGY.is_file():
        pytest.skip("AudioSet ontology.json not available here")
    derived = derive_from_ontology(json.loads(ONTOLOGY.read_text()), list(audioset_labels()))
    assert derived == tag_families()


def test_derive_from_a_toy_ontology():
    toy = [
        {"id": "a", "name": "Music", "child_ids": ["b", "g"]},
        {"id": "b", "name": "Musical instrument", "child_ids": ["c"]},
        {"id": "c", "name": "Bell", "child_ids": []},
        {"id": "g", "name": "Jazz", "child_ids": []},
        {"id": "t", "name": "Sounds of things", "child_ids": ["c", "x"]},
        {"id": "x", "name": "Engine", "child_ids": []},
    ]
    assert derive_from_ontology(toy, ["Bell", "Jazz", "Engine"]) == {
        "Bell": "instruments",
        "Jazz": "music",
        "Engine": "sound effects",
    }
