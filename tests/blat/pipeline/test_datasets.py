"""blat.pipeline.datasets: AudioCaps / AudioSet CSVs (their real layouts) over a folder of downloaded clips -> a
scenes manifest; the paper recipe; run.py's prebuilt-manifest path. Tiny CSVs and WAVs, no training."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blat.pipeline import datasets as ds
from blat.pipeline.data import load_scene_manifest
from blat.pipeline.evaluate import load_split
from blat_contract.audio import SAMPLE_RATE

# Real AudioSet segment CSV layout: three comment lines, ", " separators, quoted mid lists.
BALANCED = """# Segments csv created Sun Mar  5 10:54:25 2017
# num_ytids=7, num_segs=7, num_unique_labels=5, num_positive_labels=10
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
aaa111, 0.000, 10.000, "/m/0bt9lr,/m/05tny_"
capTrain1, 30.000, 40.000, "/m/09x0r"
capTest01, 10.000, 20.000, "/m/0bt9lr"
valClip1, 0.000, 10.000, "/m/04rlf"
noAudio01, 0.000, 10.000, "/m/04rlf"
broken1, 0.000, 10.000, "/m/06mb1"
"""
EVAL = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
evalOne1, 0.000, 10.000, "/m/04rlf"
evalMul1, 20.000, 30.000, "/m/09x0r,/m/04rlf"
capTest02, 10.000, 20.000, "/m/06mb1,/m/0ngt1"
"""
AC_TRAIN = """audiocap_id,youtube_id,start_time,caption
91139,capTrain1,30,A man speaks loudly
91140,capTrain2,0,"Rain falls, then thunder rumbles"
"""
AC_VAL = "audiocap_id,youtube_id,start_time,caption\n" + "".join(
    f"{500 + i},valClip1,0,music plays number {i}\n" for i in range(5)
)
AC_TEST = (
    "audiocap_id,youtube_id,start_time,caption\n"
    + "".join(f"{100 + i},capTest01,10,a dog barks {i}\n" for i in range(5))
    + "".join(f'{200 + i},capTest02,10,"rain and thunder, take {i}"\n' for i in range(5))
)

# Files as common downloaders name them: PANNs ("Y" + id), aac-datasets ("{id}_{start}"), audiocaps-download
# ("{audiocap_id}", one file per caption row: only the third row's was downloaded), plain id, millisecond start.
FILES = {
    "audioset/Y--PJHxphWEs.wav": SAMPLE_RATE,
    "audioset/aaa111_0.flac": SAMPLE_RATE,
    "audiocaps/train/capTrain1_30.wav": SAMPLE_RATE,
    "audiocaps/train/capTrain2_0.wav": SAMPLE_RATE,
    "audiocaps/test/102.wav": SAMPLE_RATE,
    "audiocaps/test/capTest02_10.000.ogg": SAMPLE_RATE,
    "eval/evalOne1.wav": SAMPLE_RATE,
    "eval/evalMul1.flac": SAMPLE_RATE,
    "audioset/valClip1.wav": SAMPLE_RATE,
}


def _write_audio(root, files=FILES):
    for i, (rel, rate) in enumerate(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        wave = 0.1 * np.sin(np.arange(rate // 10 + i) * 0.05).astype(np.float32)  # 0.1 s, a unique length
        sf.write(str(path), wave, rate)
    (root / "audioset" / "broken1_0.wav").write_bytes(b"RIFF not really a wave file")


@pytest.fixture()
def data(tmp_path):
    csvs = tmp_path / "csv"
    csvs.mkdir()
    for name, text in {
        "balanced.csv": BALANCED,
        "eval.csv": EVAL,
        "train.csv": AC_TRAIN,
        "val.csv": AC_VAL,
        "test.csv": AC_TEST,
    }.items():
        (csvs / name).write_text(text)
    _write_audio(tmp_path / "audio")
    src = ds.Sources(
        audiocaps_train=(str(csvs / "train.csv"),),
        audiocaps_val=(str(csvs / "val.csv"),),
        audiocaps_test=(str(csvs / "test.csv"),),
        audioset_train=(str(csvs / "balanced.csv"),),
        audioset_eval=(str(csvs / "eval.csv"),),
    )
    return tmp_path, src


def _rows(manifest):
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_readers_parse_the_real_layouts(data):
    root, src = data
    segs = ds.read_audioset(src.audioset_train[0])
    assert [s.youtube_id for s in segs][:2] == ["--PJHxphWEs", "aaa111"] and len(segs) == 7
    assert segs[0].tags == ["Speech", "Gush"] and (segs[0].start, segs[0].end) == (30.0, 40.0)
    assert segs[1].tags == ["Dog", "Bark"]
    caps = ds.read_audiocaps(src.audiocaps_test[0])
    assert [(c.youtube_id, c.start, len(c.captions)) for c in caps] == [("capTest01", 10.0, 5), ("capTest02", 10.0, 5)]
    assert caps[1].captions[0] == "rain and thunder, take 0"
    assert caps[0].audiocap_ids == ["100", "101", "102", "103", "104"]
    train = ds.read_audiocaps(src.audiocaps_train[0])
    assert train[1].captions == ["Rain falls, then thunder rumbles"] and train[1].end == 10.0


def test_manifest_splits_tags_captions_and_audio(data):
    root, src = data
    report = ds.build_manifest(src, [root / "audio"], root / "out")
    manifest = root / "out" / "manifest.jsonl"
    rows = {r["id"]: r for r in _rows(manifest)}
    by_split = {}
    for r in rows.values():
        by_split.setdefault(r["split"], set()).add(r["id"])
    assert by_split == {
        "captioned": {"capTrain1_30", "capTrain2_0"},
        "val": {"valClip1_0"},
        "test_scenes": {"capTest01_10", "capTest02_10"},
        "tags_only": {"--PJHxphWEs_30", "aaa111_0"},
        "test_events": {"evalOne1_0", "evalMul1_20"},
    }
    # AudioCaps clips take their tags from the AudioSet segment of the same YouTube id (train or eval CSV).
    assert rows["capTrain1_30"]["tags"] == ["Speech"] and rows["capTrain2_0"]["tags"] == []
    assert rows["capTest01_10"]["tags"] == ["Dog"] and rows["capTest02_10"]["tags"] == ["Rain", "Thunder"]
    assert len(rows["capTest01_10"]["captions"]) == 5 and rows["capTrain2_0"]["captions"] == [
        "Rain falls, then thunder rumbles"
    ]
    assert rows["aaa111_0"]["captions"] == [] and rows["aaa111_0"]["tags"] == ["Dog", "Bark"]
    assert rows["evalMul1_20"]["tags"] == ["Speech", "Music"]  # every label by default (multi-label tagging)
    # the file each naming convention points at
    assert rows["--PJHxphWEs_30"]["audio"].endswith("audioset/Y--PJHxphWEs.wav")
    assert rows["capTest01_10"]["audio"].endswith("audiocaps/test/102.wav")
    assert rows["capTest02_10"]["audio"].endswith("audiocaps/test/capTest02_10.000.ogg")
    assert rows["evalMul1_20"]["duration"] == pytest.approx((SAMPLE_RATE // 10 + 7) / SAMPLE_RATE, abs=1e-3)
    # stages read it: audio paths resolve, splits load
    assert all(Path(r["audio_path"]).is_file() for r in load_scene_manifest(manifest))
    assert len(load_split(manifest, "test_scenes")) == 2
    counts = report["splits"]
    assert counts["captioned"]["without_tags"] == 1 and counts["captioned"]["written"] == 2
    assert json.loads((root / "out" / "report.json").read_text())["rows"] == len(rows) == 9


def test_missing_and_unreadable_files_are_counted_not_fatal(data):
    root, src = data
    c = ds.build_manifest(src, [root / "audio"], root / "out")["splits"]["tags_only"]
    assert c["missing_audio"] == 1 and c["missing_examples"] == ["noAudio01_0"]
    assert c["unreadable_audio"] == 1 and "broken1_0.wav" in c["unreadable_examples"][0]
    assert c["csv_segments"] == 7 and c["written"] == 2


def test_youtube_ids_are_in_one_split_only(data):
    root, src = data
    report = ds.build_manifest(src, [root / "audio"], root / "out")
    ids = {}
    for r in _rows(root / "out" / "manifest.jsonl"):
        ids.setdefault(r["split"], set()).add(r["youtube_id"])
    for a, b in combinations(ids, 2):
        assert not ids[a] & ids[b], (a, b)
    c = report["splits"]
    # AudioSet rows of AudioCaps clips are dropped from tags_only (test, val and train alike) ...
    assert (
        c["tags_only"]["dropped_in_test_scenes"],
        c["tags_only"]["dropped_in_val"],
        c["tags_only"]["dropped_in_captioned"],
    ) == (1, 1, 1)
    # ... and an AudioCaps test clip that is also an AudioSet eval segment stays in test_scenes only.
    assert c["test_events"]["dropped_in_test_scenes"] == 1


def test_single_label_events(data):
    root, src = data
    ds.build_manifest(src, [root / "audio"], root / "out", events="single")
    rows = [r for r in _rows(root / "out" / "manifest.jsonl") if r["split"] == "test_events"]
    assert [(r["id"], r["tags"]) for r in rows] == [("evalOne1_0", ["Music"])]


def test_unknown_mid_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(BALANCED.replace('"/m/0bt9lr,/m/05tny_"', '"/m/0bt9lr,/m/nope42"'))
    with pytest.raises(ds.DatasetError, match=r"bad.csv: 1 label id.*527 AudioSet classes.*'/m/nope42' \(line 5\)"):
        ds.read_audioset(bad)
    assert ds.main(["--out", str(tmp_path / "o"), "--audio", str(tmp_path), "--audioset", str(bad)]) == 2


def test_patterns_and_clips_at_other_rates(data):
    root, src = data
    with pytest.raises(ds.DatasetError, match="start_sec"):
        ds.check_patterns(["{youtube_id}_{start_sec}"])
    only = ds.Sources(audioset_eval=src.audioset_eval)
    # a custom pattern (a path below the audio folder): capTest02, an eval segment here, has no such file
    report = ds.build_manifest(only, [root / "audio"], root / "o1", patterns=["eval/{youtube_id}"])
    assert report["splits"]["test_events"]["written"] == 2 and report["splits"]["test_events"]["missing_audio"] == 1
    sf.write(str(root / "audio" / "eval" / "evalOne1.wav"), np.zeros(1600, np.float32), 16000)
    with pytest.raises(ds.DatasetError, match="not at 32000 Hz.*--resample"):
        ds.build_manifest(only, [root / "audio"], root / "o2", patterns=["eval/{youtube_id}"])
    report = ds.build_manifest(only, [root / "audio"], root / "o3", patterns=["eval/{youtube_id}"], resample=True)
    row = next(r for r in _rows(root / "o3" / "manifest.jsonl") if r["id"] == "evalOne1_0")
    assert row["audio"] == "audio32k/evalOne1_0.flac" and report["splits"]["test_events"]["resampled"] == 1
    info = sf.info(str(root / "o3" / row["audio"]))
    assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, 3200)


def test_command_line(data, capsys):
    root, src = data
    with pytest.raises(SystemExit) as e:
        ds.main(["--help"])
    assert e.value.code == 0 and "--audiocaps-train" in capsys.readouterr().out
    rc = ds.main(
        [
            "--out",
            str(root / "cli"),
            "--audio",
            str(root / "audio"),
            "--audiocaps-train",
            *src.audiocaps_train,
            "--audiocaps-test",
            *src.audiocaps_test,
            "--audioset",
            *src.audioset_train,
            "--log-level",
            "WARNING",
        ]
    )
    assert rc == 0 and "test_scenes" in capsys.readouterr().out
    assert {r["split"] for r in _rows(root / "cli" / "manifest.jsonl")} == {"captioned", "test_scenes", "tags_only"}


def test_paper_recipe_parses():
    from blat.pipeline.recipe import load_recipe

    r = load_recipe("paper")
    assert r.manifest and r.captioner.arch == "blat-captioner" and r.pretrain.model == "blat-cnn14-bertm"
    assert r.pretrain.batch_size == 128 and not r.pretrain.freeze_text and r.pretrain.clip_seconds == 10.0
    assert (r.captioning.beam_size, r.captioning.max_tokens) == (3, 20) and r.captioner.device == "cuda"
    assert r.evaluate.splits == {"tagging_scenes": "test_events"}
    assert load_recipe("ci").manifest == "" and load_recipe("ci").evaluate.splits == {}


def test_run_with_a_manifest_skips_corpus_and_scenes(data, monkeypatch, tmp_path):
    import dataclasses

    from blat.pipeline import corpus, run, scenes
    from blat.pipeline.recipe import load_recipe

    def refuse(*args, **kwargs):
        raise AssertionError("corpus/scenes must not run with a prebuilt manifest")

    monkeypatch.setattr(corpus, "build_corpus", refuse)
    monkeypatch.setattr(scenes, "make_scenes", refuse)
    root, src = data
    ds.build_manifest(src, [root / "audio"], root / "out")
    recipe = dataclasses.replace(load_recipe("paper"), manifest=str(root / "out" / "manifest.jsonl"))
    assert run.scenes_manifest(recipe, tmp_path / "run") == root / "out" / "manifest.jsonl"
    assert not (tmp_path / "run" / "corpus").exists()
    with pytest.raises(FileNotFoundError, match="blat.pipeline.datasets"):
        run.scenes_manifest(dataclasses.replace(recipe, manifest=str(tmp_path / "nope.jsonl")), tmp_path / "run")
    with pytest.raises(AssertionError, match="must not run"):  # without a manifest the corpus step runs
        run.scenes_manifest(load_recipe("ci"), tmp_path / "run")
