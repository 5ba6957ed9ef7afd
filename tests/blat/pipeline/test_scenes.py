"""Step 2: simulated scenes. Splits by source, captions that follow the true event order, and mixes that put each
event where the manifest says; on the real ci corpus (tiny scene counts) and on a synthetic corpus."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf

from blat.pipeline import templates
from blat.pipeline.data import load_audio, load_jsonl
from blat.pipeline.recipe import load_recipe
from blat.pipeline.scenes import SPLITS, assign_sources, make_scenes, render_scene
from blat.pipeline.stages import ScenesConfig
from blat.pipeline.tags import load_tag_table
from blat_contract.labels import audioset_labels

from .pipeline_data import TINY, scenes_config, synthetic_corpus, tiny_scenes

GROUP_OF_SPLIT = {"captioned": "captioned", "tags_only": "tags_only", "test_scenes": "test", "test_events": "test"}


@pytest.fixture(scope="module")
def scenes():
    manifest = tiny_scenes()
    return manifest, load_jsonl(manifest)


def _sources(row):
    return {e["source"] for e in row["events"]} | ({row["background"]["source"]} if row["background"] else set())


def test_manifest_rows_are_complete_and_valid(scenes):
    manifest, rows = scenes
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    assert counts["captioned"] == TINY["n_captioned"] and counts["tags_only"] == TINY["n_tags_only"]
    assert counts["test_scenes"] == TINY["n_test_scenes"] and counts["test_events"] >= 20
    names = set(audioset_labels())
    for r in rows[::5]:
        assert set(r) >= {"id", "audio", "duration", "tags", "captions", "split", "events", "background", "seed"}
        assert r["tags"] and set(r["tags"]) <= names
        assert len(r["captions"]) == 5 and len({c.lower() for c in r["captions"]}) >= 3
        assert 1 <= len(r["events"]) <= 3
        info = sf.info(str(manifest.parent / r["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (32000, 1, "PCM_16")
        assert abs(info.frames / 32000 - r["duration"]) < 1e-3
        event_tags = {t for e in r["events"] for t in e["tags"]}
        bg_tags = set(r["background"]["tags"]) if r["background"] else set()
        assert set(r["tags"]) == event_tags | bg_tags
        if r["split"] != "test_events":
            assert r["duration"] == TINY["canvas_s"]
            assert all(0 <= e["onset"] < e["offset"] <= r["duration"] + 1e-6 for e in r["events"])


def test_splits_never_share_a_source(scenes):
    _, rows = scenes
    groups = defaultdict(set)
    for r in rows:
        groups[GROUP_OF_SPLIT[r["split"]]] |= _sources(r)
    assert set(groups) == {"captioned", "tags_only", "test"}
    assert not groups["captioned"] & groups["tags_only"]
    assert not groups["captioned"] & groups["test"]
    assert not groups["tags_only"] & groups["test"]


def test_source_assignment_is_stratified_and_deterministic():
    rows = [{"id": f"c{i}", "source": f"s{i // 2}", "tags": [["Dog"], ["Rain"], ["Door"]][i % 3]} for i in range(300)]
    a = assign_sources(rows, (0.35, 0.45, 0.2), seed=1)
    assert a == assign_sources(rows, (0.35, 0.45, 0.2), seed=1)
    share = {g: sum(v == g for v in a.values()) / len(a) for g in ("captioned", "tags_only", "test")}
    assert abs(share["captioned"] - 0.35) < 0.05 and abs(share["tags_only"] - 0.45) < 0.05
    for tag in ("Dog", "Rain", "Door"):  # every common tag reaches every group
        groups = {a[r["source"]] for r in rows if r["tags"] == [tag]}
        assert groups == {"captioned", "tags_only", "test"}, tag


def _matches(caption: str, events: list[dict]) -> list[tuple[int, int, int]]:
    """Non-overlapping (start, end, event index) of the events' bank phrases in `caption`, longest first."""
    text, found, taken = caption.lower(), [], np.zeros(len(caption) + 1, bool)
    candidates = sorted(
        (
            (p.lower(), i)
            for i, e in enumerate(events)
            for p in {*templates.clip_phrases(e["tags"]).clauses, *templates.clip_phrases(e["tags"]).nouns}
        ),
        key=lambda x: -len(x[0]),
    )
    for phrase, i in candidates:
        for m in re.finditer(r"\b" + re.escape(phrase) + r"\b", text):
            if not taken[m.start() : m.end()].any():
                taken[m.start() : m.end()] = True
                found.append((m.start(), m.end(), i))
    return sorted(found)


def test_captions_name_the_events_in_their_true_order_and_relation(scenes):
    _, rows = scenes
    then_words = {c for f in templates.THEN.values() for c in f}
    while_words = {c for f in templates.WHILE.values() for c in f}
    checked = 0
    for r in rows:
        if r["split"] == "test_events":
            continue
        events = sorted(r["events"], key=lambda e: e["onset"])
        for n, caption in enumerate(r["captions"]):
            if n == 0 and len(events) == 1 and not r["background"] and not _matches(caption, events):
                continue  # a lone event's first reference may be its recording's own description
            found = [m for m in _matches(caption, events)]
            first = {}
            for start, end, i in found:
                first.setdefault(i, (start, end))
            assert set(first) == set(range(len(events))), (caption, [e["tags"] for e in events])
            starts = [first[i][0] for i in range(len(events))]
            assert starts == sorted(starts), (caption, [(e["tags"], e["onset"]) for e in events])
            for i in range(len(events) - 1):  # the connective between consecutive events states their relation
                between = caption[first[i][1] : first[i + 1][0]]
                overlap = events[i + 1]["onset"] < events[i]["offset"] - 0.05
                if between in then_words | while_words:
                    assert between in (while_words if overlap else then_words), (caption, between, events)
                    checked += 1
    assert checked > 50


def test_written_audio_puts_each_event_where_the_manifest_says(scenes):
    manifest, rows = scenes
    corpus = manifest.parent / "report.json"
    import json

    report = json.loads(corpus.read_text())
    root = __import__("pathlib").Path(report["corpus_manifest"]).parent
    corpus_rows = {r["id"]: r for r in load_jsonl(report["corpus_manifest"])}
    sr, checked = 32000, 0
    for r in rows:
        if r["split"] == "test_events":
            continue
        audio = load_audio(manifest.parent / r["audio"])
        ids = {e["clip_id"] for e in r["events"]} | ({r["background"]["clip_id"]} if r["background"] else set())
        clips = {i: load_audio(root / corpus_rows[i]["audio"]) for i in ids}
        expected = render_scene(r, clips, r["duration"], sr)
        assert np.abs(audio - expected).max() < 2e-4, r["id"]  # 16-bit FLAC of the exact mix
        if r["background"]:
            continue
        inside = np.zeros(len(audio), bool)
        for e in r["events"]:
            a, b = round(e["onset"] * sr), round(e["offset"] * sr)
            inside[max(0, a - 2) : b + 2] = True  # +-2 samples: rounding of the onset to a sample
            assert np.sqrt(np.mean(audio[a:b] ** 2)) > 10 ** (-50 / 20), (r["id"], e)  # energy in the window
        assert np.abs(audio[~inside]).max(initial=0) < 1e-3, r["id"]  # and none outside the event windows
        checked += 1
    assert checked >= 10


def test_synthetic_scenes_are_deterministic_and_cached(tmp_path):
    corpus = synthetic_corpus(tmp_path / "corpus")
    cfg = scenes_config(n_captioned=12, n_tags_only=8, n_test_scenes=4, canvas_s=3.0, seed=3)
    first = make_scenes(corpus, tmp_path / "a", cfg)
    rows = load_jsonl(first)
    mtime = first.stat().st_mtime_ns
    assert make_scenes(corpus, tmp_path / "a", cfg).stat().st_mtime_ns == mtime  # up to date: nothing redone
    again = make_scenes(corpus, tmp_path / "b", cfg)
    assert load_jsonl(again) == rows
    bg = [r for r in rows if r["background"]]
    assert bg and all(r["background"]["tags"][0] in ("Rain", "Wind") for r in bg)
    assert all(
        not set(r["background"]["tags"]) & {t for e in r["events"] for t in e["tags"]} for r in bg
    )  # bed != event
    # onsets come from the tones: the synthetic dog is 440 Hz, so its window holds the 440 Hz energy
    sr = 32000
    for r in rows:
        if r["split"] == "test_events" or r["background"]:
            continue
        audio = load_audio(first.parent / r["audio"])
        for e in r["events"]:
            if e["tags"][0] == "Dog":
                a, b = int(e["onset"] * sr), int(e["offset"] * sr)
                t = np.arange(len(audio)) / sr
                tone = np.abs(np.convolve(audio * np.exp(-2j * np.pi * 440 * t), np.ones(320) / 320, "same"))
                assert tone[a:b].mean() > 5 * tone[~np.isin(np.arange(len(audio)), np.arange(a, b))].mean()


def test_phrase_bank_covers_the_tag_table_and_tags_are_audioset_names():
    bank = templates.load_phrase_bank()
    assert set(bank) <= set(audioset_labels())
    assert load_tag_table().tags_used() <= set(bank)
    assert templates.tags_caption(["Walk, footsteps", "Dog"]) == "the sound of walk and dog"


def test_recipes_load_and_unknown_names_fail():
    for name in ("ci", "demo"):
        recipe = load_recipe(name)
        assert isinstance(recipe.scenes, ScenesConfig) and recipe.scenes.n_captioned > 0
    assert load_recipe("demo").scenes.n_tags_only > load_recipe("ci").scenes.n_tags_only
    with pytest.raises(FileNotFoundError, match="presets"):
        load_recipe("no-such-recipe")
    with pytest.raises(ValueError):
        ScenesConfig(split_fractions=(0.5, 0.5))


def test_cli_help(capsys):
    from blat.pipeline import scenes

    with pytest.raises(SystemExit) as e:
        scenes.main(["--help"])
    assert e.value.code == 0 and "--corpus" in capsys.readouterr().out


def test_source_events_add_each_training_recording_to_its_own_group(tmp_path):
    corpus = synthetic_corpus(tmp_path / "corpus")
    cfg = scenes_config(n_captioned=6, n_tags_only=4, n_test_scenes=2, canvas_s=3.0, seed=1)
    plain = load_jsonl(make_scenes(corpus, tmp_path / "plain", cfg))
    rows = load_jsonl(make_scenes(corpus, tmp_path / "events", dataclasses.replace(cfg, source_events=True)))
    assert [r for r in rows if "/e" not in r["id"]] == plain  # the scenes and test events are unchanged
    events = [r for r in rows if "/e" in r["id"]]
    corpus_rows = {r["id"]: r for r in load_jsonl(corpus)}
    group = {
        s: {e["source"] for r in rows if r["split"] == s and "/e" not in r["id"] for e in r["events"]}
        for s in ("captioned", "tags_only", "test_scenes", "test_events")
    }
    assert {r["split"] for r in events} == {"captioned", "tags_only"}
    # every recording of a training group appears once, alone, in its group's split, never in another group
    for split in ("captioned", "tags_only"):
        mine = [r for r in events if r["split"] == split]
        sources = {r["events"][0]["source"] for r in mine}
        assert not sources & (group["test_events"] | group["test_scenes"])
        expected = {cid for cid, c in corpus_rows.items() if c["source"] in sources}
        assert sorted(r["events"][0]["clip_id"] for r in mine) == sorted(expected)
    for r in events:
        clip = corpus_rows[r["events"][0]["clip_id"]]
        assert r["tags"] == clip["tags"] and len(r["captions"]) == cfg.n_captions
        assert r["duration"] <= cfg.canvas_s + 1e-6
        assert abs(len(load_audio(tmp_path / "events" / r["audio"])) / 32000 - r["duration"]) < 1e-3
