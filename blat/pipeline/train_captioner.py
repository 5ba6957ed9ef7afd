"""Step 3 of the BLAT pipeline (stage 1): train the tag-guided captioner on the captioned split.

Teacher forcing with label-smoothed cross-entropy (predict tokens[1:] from tokens[:-1], pad ignored), Adam at a
constant rate, a word vocabulary built from the training captions. Every caption of a clip is a training pair; a
step encodes each clip once and decodes all of its captions. The audio is decoded once and kept in memory.
Writes one self-describing checkpoint (blat.checkpoint). Run `python -m blat.pipeline.train_captioner -h`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from blat.checkpoint import save_checkpoint
from blat.config import CaptionerConfig as ModelCaptionerConfig
from blat.models import build_model, get_model_config
from blat.models.captioner import TagGuidedCaptioner, tags_tensor
from blat.pipeline.data import batch_audio, file_sha256, load_clips, load_scene_manifest
from blat.pipeline.frozen import cache_file, clip_key, freeze, pad_frames, per_clip_outputs, tower_params
from blat.pipeline.recipe import load_recipe, with_overrides
from blat.pipeline.stages import CaptionerConfig
from blat_contract.audio import SAMPLE_RATE
from blat_contract.config import to_dict
from blat_contract.vocab import PAD, Vocabulary

log = logging.getLogger("blat.pipeline.train_captioner" if __name__ == "__main__" else __name__)

TRAIN_SPLIT = "captioned"  # the only split whose captions training may read


def build_captioner(cfg: CaptionerConfig, vocab: Vocabulary) -> TagGuidedCaptioner:
    """A fresh captioner of registry architecture `cfg.arch`, with `use_tags`, `max_tokens` and the tag table's initial
    scale from `cfg` (seeded by the caller)."""
    arch = get_model_config(cfg.arch)
    if not isinstance(arch, ModelCaptionerConfig):
        raise ValueError(f"{cfg.arch!r} is not a captioner architecture (kind {arch.kind!r})")
    model = build_model(dataclasses.replace(arch, use_tags=cfg.use_tags, max_tokens=cfg.max_tokens), vocab=vocab)
    if model.tag_table is not None and cfg.tag_init_std > 0:
        nn.init.normal_(model.tag_table, std=cfg.tag_init_std)  # on the words' scale: see CaptionerConfig
    return model


def caption_loss(
    model: TagGuidedCaptioner,
    encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tokens: torch.Tensor,
    clip_index: torch.Tensor,
    label_smoothing: float,
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over the non-pad target tokens of every caption.

    encoded: model.encode(...) of C clips, (C, T, d) memory, (C,) valid frames, (C, d) tag vectors; tokens (P, L)
    per caption (start ... end, pad), and clip_index (P,) the clip of each caption: each clip is encoded once for
    all of its captions."""
    memory, valid, tag_vec = encoded
    logits = model.decode(tokens[:, :-1], memory[clip_index], valid[clip_index], tag_vec[clip_index])  # (P, L-1, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        tokens[:, 1:].reshape(-1),
        ignore_index=PAD,
        label_smoothing=label_smoothing,
    )


def _pad(seqs: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def train_captioner(
    scenes_manifest: str | Path, out_path: str | Path, config: CaptionerConfig | None = None, progress: bool = True
) -> Path:
    """Train on the captioned split of a scene manifest and save the checkpoint to `out_path` (returned)."""
    cfg = config or CaptionerConfig()
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # one thread is much faster than two on a busy 2-core machine
    try:
        return _train(scenes_manifest, out_path, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(scenes_manifest: str | Path, out_path: str | Path, cfg: CaptionerConfig, progress: bool) -> Path:
    started = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)

    rows = load_scene_manifest(scenes_manifest, TRAIN_SPLIT)
    if not rows:
        raise ValueError(f"{scenes_manifest}: no rows in split {TRAIN_SPLIT!r}")
    vocab = Vocabulary.build((c for r in rows for c in r["captions"]), min_count=cfg.min_count)
    model = build_captioner(cfg, vocab).to(device).train()
    tokens = [[vocab.encode(c, cfg.max_tokens) for c in r["captions"]] for r in rows]  # per clip, per caption
    tags = tags_tensor([r["tags"] for r in rows])  # (n_clips, 527)
    waves = load_clips(rows, SAMPLE_RATE)
    max_samples = int(cfg.clip_s * SAMPLE_RATE)
    per_clip = max(1, round(sum(map(len, tokens)) / len(tokens)))
    clips_per_step = max(1, cfg.batch_size // per_clip)
    steps = math.ceil(len(rows) / clips_per_step)
    optimizer = torch.optim.Adam(tower_params(model, cfg.lr, cfg.tower_lr_scale), lr=cfg.lr)
    frames = None  # a frozen tower's frames, once per clip
    if cfg.tower_lr_scale == 0 and all(len(w) <= max_samples for w in waves):
        frames = per_clip_outputs(
            model.audio_encoder.frames,
            waves,
            model.audio_encoder.cfg.min_samples,
            device=device,
            desc="stage 1: frozen tower",
            keys=[clip_key(r["audio_path"]) for r in rows],
            cache=cache_file(cfg.tower_cache, model.audio_encoder, "frames"),
        )
    log.info(
        "training captioner",
        extra={
            "arch": cfg.arch,
            "use_tags": cfg.use_tags,
            "clips": len(rows),
            "pairs": sum(map(len, tokens)),
            "vocab_size": len(vocab),
            "params": sum(p.numel() for p in model.parameters()),
            "clips_per_step": clips_per_step,
            "steps_per_epoch": steps,
            "device": str(device),
            "tower_lr_scale": cfg.tower_lr_scale,
            "cached_tower_frames": frames is not None,
        },
    )
    losses: list[float] = []
    bar = tqdm(total=cfg.epochs * steps, desc="stage 1: captioner", unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(rows))
        model.train()
        if cfg.tower_lr_scale == 0:
            freeze(model.audio_encoder)
        total, count, t0 = 0.0, 0, time.time()
        for s in range(steps):
            batch = order[s * clips_per_step : (s + 1) * clips_per_step]
            if frames is not None:
                f, valid = pad_frames([frames[i] for i in batch])
                encoded = model.encode_frames(f.to(device), valid.to(device), tags[batch].to(device))
            else:
                wave, lengths = batch_audio(
                    [waves[i] for i in batch], max_samples, model.audio_encoder.cfg.min_samples, rng
                )
                encoded = model.encode(
                    torch.from_numpy(wave).to(device), torch.from_numpy(lengths).to(device), tags[batch].to(device)
                )
            caps = [(j, t) for j, i in enumerate(batch) for t in tokens[i]]
            clip_index = torch.tensor([j for j, _ in caps], device=device)
            loss = caption_loss(model, encoded, _pad([t for _, t in caps]).to(device), clip_index, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(caps), count + len(caps)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.3f}")
        losses.append(round(total / count, 5))
        log.info("epoch done", extra={"epoch": epoch + 1, "loss": losses[-1], "seconds": round(time.time() - t0, 1)})
    bar.close()
    meta = {
        "stage": "captioner",
        "recipe": to_dict(cfg),
        "epochs": cfg.epochs,
        "final_train_loss": losses[-1],
        "train_losses": losses,
        "vocab_size": len(vocab),
        "use_tags": cfg.use_tags,
        "arch": cfg.arch,
        "data_manifest": str(scenes_manifest),
        "data_manifest_sha256": file_sha256(scenes_manifest),
        "train_split": TRAIN_SPLIT,
        "clips": len(rows),
        "pairs": sum(map(len, tokens)),
        "seed": cfg.seed,
        "seconds": round(time.time() - started, 1),
    }
    path = save_checkpoint(model.cpu().eval(), out_path, meta)
    log.info(
        "captioner saved", extra={"checkpoint": str(path), "final_train_loss": losses[-1], "seconds": meta["seconds"]}
    )
    return path


# --- command line -------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.train_captioner",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog="examples:\n"
        "  python -m blat.pipeline.train_captioner --scenes runs/scenes/ci/manifest.jsonl \\\n"
        "      --out runs/ci/captioner.safetensors\n"
        "  python -m blat.pipeline.train_captioner --scenes ... --out ... --no-tags --arch tiny-captioner --epochs 3\n",
    )
    p.add_argument("--scenes", type=Path, required=True, help="scene manifest.jsonl (python -m blat.pipeline.scenes)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint path to write (.safetensors)")
    p.add_argument("--recipe", default="ci", help="preset name (ci, demo) or recipe JSON path; its 'captioner' section")
    p.add_argument("--arch", help="override captioner.arch (a registry name, e.g. tiny-captioner, small-captioner)")
    p.add_argument(
        "--no-tags", dest="use_tags", action="store_const", const=False, help="train without tag conditioning"
    )
    for name, kind in (
        ("epochs", int),
        ("batch_size", int),
        ("lr", float),
        ("min_count", int),
        ("seed", int),
        ("clip_s", float),
        ("num_threads", int),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"override captioner.{name}")
    p.add_argument("--device", help="override captioner.device (cpu, cuda, cuda:1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_recipe(args.recipe).captioner
    cfg = with_overrides(cfg, args)
    log.info("config", extra={"captioner": to_dict(cfg)})
    path = train_captioner(args.scenes, args.out, cfg, progress=not args.no_progress)
    from blat.checkpoint import read_header

    meta = json.loads(read_header(path)["meta"])
    print(f"{path}: final train loss {meta['final_train_loss']} after {meta['epochs']} epochs ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
