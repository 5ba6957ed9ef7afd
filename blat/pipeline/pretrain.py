"""Stage 3 of the BLAT pipeline: contrastive pre-training of the dual encoder on (clip, caption) pairs.

Pairs are the scene manifest's clips with stage 2's synthetic captions (optionally plus the `captioned` split's
reference captions). Loss: symmetric InfoNCE with a learnable temperature; under `torchrun` the negatives are
gathered from every process, with gradients flowing back to each process's own shard, so N processes at
per-process batch B/N train exactly like one process at batch B (BatchNorm statistics too: `sync_batchnorm`).

    python -m blat.pipeline.pretrain --manifest runs/scenes/manifest.jsonl --synthetic runs/captions/captions.jsonl \\
        --out runs/pretrain --recipe ci
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m blat.pipeline.pretrain ...  # gloo / nccl

Writes <out>/dual.safetensors (the best checkpoint by text-to-audio geomean of R@1/5/10 on held-out pairs),
<out>/steps.jsonl (one line per step: loss, lr, temperature) and <out>/report.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from blat.models.dual import NORM_EPS, DualEncoder
from blat.pipeline.contrastive import (
    DistInfo,
    average_gradients,
    contrastive_loss,
    setup_distributed,
    use_global_batchnorm,
)
from blat.pipeline.evaluate import encode_clips, encode_texts, load_split, read_audio
from blat.pipeline.frozen import cache_file, clip_key, freeze, per_clip_outputs, tower_params
from blat.pipeline.metrics import retrieval_chance, retrieval_metrics
from blat.pipeline.recipe import load_recipe
from blat.pipeline.stages import PretrainConfig
from blat_contract.config import ConfigError, apply_env, from_dict, to_dict

log = logging.getLogger("blat.pipeline.pretrain" if __name__ == "__main__" else __name__)

SELECTION_METRIC = "t2a_geomean"  # (R@1 R@5 R@10)^(1/3), text to audio: BLAT's checkpoint selection
FROZEN_TEXT_NOTE = (
    "text tower frozen at its initial (pretrained) weights; its pooled outputs were computed once "
    "and cached; only text_proj was trained on the text side"
)


# --- data ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
    """One training clip and the captions it may be paired with (one is drawn per epoch)."""

    id: str
    audio: str  # absolute path
    captions: tuple[int, ...]  # indices into the caption table
    references: tuple[str, ...]  # the manifest's reference captions (for val_captions="references")


def load_pairs(
    manifest: str | Path,
    synthetic: str | Path | None = None,
    use_captioned: bool = False,
    captioned_split: str = "captioned",
) -> tuple[list[Pair], list[str]]:
    """(pairs, caption table). Synthetic rows {id, caption, ...} pair with the manifest clip of that id. With
    `use_captioned`, or when there is no synthetic file, the rows of `captioned_split` ("" = any split) pair with
    their own reference captions."""
    rows = {r["id"]: r for r in load_split(manifest)}
    captions: dict[str, list[str]] = {}
    if synthetic is not None:
        missing = 0
        with open(synthetic, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    s = json.loads(line)
                    if s["id"] in rows:
                        captions.setdefault(s["id"], []).append(s["caption"])
                    else:
                        missing += 1
        if missing:
            raise ValueError(f"{synthetic}: {missing} captions name clips missing from {manifest}")
    if use_captioned or synthetic is None:
        for r in rows.values():
            if captioned_split in ("", r.get("split")) and r.get("captions"):
                captions.setdefault(r["id"], []).extend(r["captions"])
    index: dict[str, int] = {}
    pairs = []
    for cid in sorted(captions):
        ids = tuple(index.setdefault(c, len(index)) for c in dict.fromkeys(captions[cid]))
        pairs.append(Pair(cid, rows[cid]["audio"], ids, tuple(rows[cid].get("captions") or ())))
    if not pairs:
        raise ValueError(f"no (clip, caption) pairs from {manifest}" + (f" and {synthetic}" if synthetic else ""))
    return pairs, list(index)


def hold_out(pairs: list[Pair], val_size: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, validation): `val_size` pairs drawn with `seed`, removed from training."""
    if val_size <= 0:
        return pairs, []
    if val_size >= len(pairs):
        raise ValueError(f"val_size={val_size} leaves no training pairs out of {len(pairs)}")
    chosen = set(np.random.default_rng([seed, 7]).permutation(len(pairs))[:val_size].tolist())
    return [p for i, p in enumerate(pairs) if i not in chosen], [p for i, p in enumerate(pairs) if i in chosen]


def crop(wave: np.ndarray, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random `samples`-long window, or the whole clip zero-padded to `samples`. -> (window, true length)."""
    if len(wave) >= samples:
        start = int(rng.integers(0, len(wave) - samples + 1))
        return wave[start : start + samples], samples
    return np.pad(wave, (0, samples - len(wave))), len(wave)


class PairDataset(torch.utils.data.Dataset):
    """Item (epoch, i) -> (crop (S,), true length, caption index). The crop offset and the caption are drawn
    from a generator seeded by (seed, epoch, i), so they do not depend on the process or worker that reads it."""

    def __init__(
        self, pairs: Sequence[Pair], clip_samples: int, sample_rate: int, seed: int, pooled: torch.Tensor | None = None
    ):
        self.pairs, self.clip_samples, self.sample_rate, self.seed = list(pairs), clip_samples, sample_rate, seed
        self.pooled = pooled  # (n, E) a frozen tower's outputs per pair: items carry them instead of audio

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        pair = self.pairs[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        caption = pair.captions[int(rng.integers(len(pair.captions)))]
        if self.pooled is not None:
            return self.pooled[i], -1, caption
        window, length = crop(read_audio(pair.audio, self.sample_rate), self.clip_samples, rng)
        return torch.from_numpy(np.ascontiguousarray(window)), length, caption


def global_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled global batches of item indices; the last incomplete batch is dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    return [order[k * batch_size : (k + 1) * batch_size] for k in range(n_items // batch_size)]


class _ShardSampler(torch.utils.data.Sampler):
    """Yields this process's contiguous slice of each global batch, as (epoch, index) keys."""

    def __init__(self, n_items: int, batch_size: int, seed: int, epoch: int, rank: int, world: int):
        self.batches = global_batches(n_items, batch_size, seed, epoch)
        self.epoch, self.rank, self.local = epoch, rank, batch_size // world

    def __iter__(self):
        for b in self.batches:
            yield [(self.epoch, int(i)) for i in b[self.rank * self.local : (self.rank + 1) * self.local]]

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items):
    waves, lengths, captions = zip(*items)
    return torch.stack(waves), torch.tensor(lengths, dtype=torch.long), torch.tensor(captions, dtype=torch.long)


# --- the model side of a step --------------------------------------------------------------------------------------


@torch.no_grad()
def text_features(
    model: DualEncoder, captions: Sequence[str], batch_size: int = 256, info: DistInfo = DistInfo()
) -> torch.Tensor:
    """(N, H) pooled text-tower outputs (before text_proj) of the frozen tower, in eval mode. Distributed, each
    process encodes a contiguous share and the shares are gathered."""
    tower = model.text_encoder
    was_training = tower.training
    tower.eval()
    device = model.logit_scale.device
    share = math.ceil(len(captions) / info.world)
    mine = list(captions[info.rank * share : (info.rank + 1) * share])
    parts = [tower(**tower.tokenize(mine[i : i + batch_size], device=device)) for i in range(0, len(mine), batch_size)]
    local = torch.cat(parts) if parts else torch.zeros(0, tower.hidden_size, device=device)
    tower.train(was_training)
    if info.world == 1:
        return local
    padded = torch.zeros(share, tower.hidden_size, device=device, dtype=local.dtype)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(info.world)]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered)[: len(captions)]


def embed_batch(
    model: DualEncoder,
    wave: torch.Tensor,
    lengths: torch.Tensor,
    caption_ids: torch.Tensor,
    captions: Sequence[str],
    features: torch.Tensor | None = None,
    pooled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (audio (b, E), text (b, E)), unit norm. With cached `features` the text side is text_proj + norm only;
    with `pooled`, `wave` holds the frozen audio tower's (b, E_audio) outputs and the audio side is the head only."""
    audio = model.project_audio(wave) if pooled else model.encode_audio(wave, lengths)
    if features is not None:
        text = F.normalize(model.text_proj(features[caption_ids]), dim=-1, eps=NORM_EPS)
    else:
        tok = model.text_encoder.tokenize([captions[i] for i in caption_ids.tolist()], device=wave.device)
        text = model.encode_text(tok["input_ids"], tok["attention_mask"])
    return audio, text


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate for 0-based `step`: linear warm-up, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_model(spec: str, seed: int) -> DualEncoder:
    """A registry name, a checkpoint file (weights kept) or a JSON DualEncoderConfig file, built under `seed`."""
    import blat
    from blat.config import config_from_dict

    torch.manual_seed(seed)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        model = blat.build_model(config_from_dict(json.loads(path.read_text()), where=str(path)))
    else:
        model = blat.load_model(spec)
    if not isinstance(model, DualEncoder):
        raise ValueError(f"{spec}: not a dual encoder ({type(model).__name__})")
    return model


def validate(
    model: DualEncoder,
    val: Sequence[Pair],
    captions: Sequence[str],
    use_references: bool,
    batch_size: int,
    device: torch.device,
    pooled: torch.Tensor | None = None,
) -> dict[str, float]:
    """Retrieval metrics on held-out pairs (whole clips, every caption of each clip). `pooled`: a frozen audio
    tower's outputs for those clips, so only the head runs."""
    was_training = model.training
    model.eval()
    texts = [list(p.references) if use_references and p.references else [captions[i] for i in p.captions] for p in val]
    flat = [t for ts in texts for t in ts]
    caption_audio = np.array([j for j, ts in enumerate(texts) for _ in ts])
    if pooled is not None:
        with torch.no_grad():
            audio = model.project_audio(pooled.to(device)).cpu().numpy()
    else:
        audio = encode_clips(model, [p.audio for p in val], batch_size, device)
    sim = audio @ encode_texts(model, flat).T
    model.train(was_training)
    return retrieval_metrics(sim, caption_audio)


def _frozen_outputs(
    model: DualEncoder,
    pairs: Sequence[Pair],
    clip_samples: int | None,
    sample_rate: int,
    device: torch.device,
    cache_dir: str = "",
) -> torch.Tensor | None:
    """(n, E_audio) the frozen tower's output per pair, or None when some clip is longer than the training crop
    `clip_samples` (each epoch would see another window, so nothing can be cached; None: whole clips)."""
    waves = [read_audio(p.audio, sample_rate) for p in tqdm(pairs, desc="reading clips", unit="clip", leave=False)]
    if clip_samples is not None and any(len(w) > clip_samples for w in waves):
        log.info("audio tower frozen; clips longer than the crop, so it runs every step")
        return None
    t0 = time.perf_counter()
    outputs = torch.stack(
        per_clip_outputs(
            model.audio_encoder,
            waves,
            model.cfg.audio.min_samples,
            device=device,
            keys=[clip_key(p.audio) for p in pairs],
            cache=cache_file(cache_dir, model.audio_encoder, "pooled"),
        )
    )
    log.info(
        "audio tower frozen; pooled outputs cached",
        extra={"clips": len(waves), "seconds": round(time.perf_counter() - t0, 2)},
    )
    return outputs


def file_sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- training ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Data:
    train: list[Pair]
    captions: list[str]  # the caption table the pairs index
    val: list[Pair]
    val_captions: list[str]
    val_references: bool  # score held-out clips with their manifest references rather than training captions


def _load_data(cfg: PretrainConfig, manifest, synthetic, val_manifest) -> _Data:
    pairs, captions = load_pairs(manifest, synthetic, cfg.use_captioned)
    if val_manifest is not None:
        val, val_captions = load_pairs(val_manifest, None, True, captioned_split=cfg.val_split)
        return _Data(pairs, captions, val, val_captions, True)
    train, val = hold_out(pairs, cfg.val_size, cfg.seed)
    return _Data(train, captions, val, captions, cfg.val_captions == "references")


def _val_caption_audio(data: _Data) -> np.ndarray:
    return np.array(
        [
            j
            for j, p in enumerate(data.val)
            for _ in (p.references if data.val_references and p.references else p.captions)
        ]
    )


def pretrain(
    cfg: PretrainConfig,
    manifest: str | Path,
    out: str | Path,
    synthetic: str | Path | None = None,
    val_manifest: str | Path | None = None,
) -> dict[str, Any]:
    """Train a dual encoder; write <out>/dual.safetensors, steps.jsonl and report.json; return the report.

    Under torchrun every process calls this (one global batch is split across them in rank order); only rank 0
    validates and writes files."""
    from blat.checkpoint import save_checkpoint

    t_start = time.perf_counter()
    info, device = setup_distributed(cfg.device)
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {info.world} processes")
    threads_before = torch.get_num_threads()
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // info.local_world)
    torch.set_num_threads(threads)
    out = Path(out)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        log.info(
            "pretrain config",
            extra={"config": to_dict(cfg), "world_size": info.world, "device": str(device), "threads": threads},
        )
    data = _load_data(cfg, manifest, synthetic, val_manifest)
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data.train)} training pairs are fewer than one global batch of {cfg.batch_size}")
    total_steps = cfg.epochs * steps_per_epoch
    total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    warmup = int(round(cfg.warmup_fraction * total_steps))

    model = build_model(cfg.model, cfg.seed)
    if cfg.panns_checkpoint:
        from blat.convert import import_panns_cnn14

        import_panns_cnn14(cfg.panns_checkpoint, model.audio_encoder, trusted=cfg.panns_trusted)
    model.to(device)
    if info.world > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)  # the same start everywhere, whatever each process's RNG did
        if cfg.sync_batchnorm:
            use_global_batchnorm(model)
    torch.manual_seed(cfg.seed + 7919 * (info.rank + 1))  # each process its own dropout masks
    features = None
    if cfg.freeze_text:
        model.text_encoder.requires_grad_(False)
        t0 = time.perf_counter()
        features = text_features(model, data.captions, info=info)
        if info.main:
            log.info(
                "text tower frozen; pooled outputs cached",
                extra={"captions": len(data.captions), "seconds": round(time.perf_counter() - t0, 2)},
            )
    groups = tower_params(model, cfg.lr, cfg.tower_lr_scale)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sample_rate = model.cfg.audio.frontend.sample_rate
    clip_samples = int(round(cfg.clip_seconds * sample_rate))
    pooled = (
        _frozen_outputs(model, data.train, clip_samples, sample_rate, device, cfg.tower_cache)
        if cfg.tower_lr_scale == 0
        else None
    )
    dataset = PairDataset(data.train, clip_samples, sample_rate, cfg.seed, pooled)
    val_pooled = None  # validation reads whole clips: a frozen tower's outputs are always cacheable
    if cfg.tower_lr_scale == 0 and data.val and info.main:
        val_pooled = _frozen_outputs(model, data.val, None, sample_rate, device, cfg.tower_cache)
    max_log_scale = math.log(cfg.max_logit_scale)
    meta = {
        "stage": "pretrain",
        "recipe": to_dict(cfg),
        "frozen_text": cfg.freeze_text,
        "frozen_audio_tower": cfg.tower_lr_scale == 0,
        "cached_audio_tower": pooled is not None,
        "text_tower": FROZEN_TEXT_NOTE if cfg.freeze_text else "trained end to end",
        "world_size": info.world,
        "global_batch": cfg.batch_size,
        "data": {
            "manifest": str(manifest),
            "manifest_sha256": file_sha256(manifest),
            "synthetic": str(synthetic) if synthetic else None,
            "synthetic_sha256": file_sha256(synthetic),
            "val_manifest": str(val_manifest) if val_manifest else None,
            "val_manifest_sha256": file_sha256(val_manifest),
            "train_pairs": len(data.train),
            "val_pairs": len(data.val),
            "captions": len(data.captions),
        },
    }

    history: list[dict] = []
    best: dict[str, Any] = {}
    step, first_loss, t_train = 0, None, time.perf_counter()
    steps_file = (out / "steps.jsonl").open("w") if info.main else None
    try:
        for epoch in range(cfg.epochs):
            model.train()
            if cfg.freeze_text:
                model.text_encoder.eval()  # the frozen tower runs without dropout, as when its outputs were cached
            if cfg.tower_lr_scale == 0:
                freeze(model.audio_encoder)
            sampler = _ShardSampler(len(data.train), cfg.batch_size, cfg.seed, epoch, info.rank, info.world)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, collate_fn=_collate, num_workers=cfg.workers
            )
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not info.main,
                leave=False,
                total=min(len(sampler), total_steps - step),
            )
            t_epoch, losses = time.perf_counter(), []
            for wave, lengths, caption_ids in bar:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * group["lr_scale"] * lr_factor(step, total_steps, warmup)
                audio, text = embed_batch(
                    model,
                    wave.to(device),
                    lengths.to(device),
                    caption_ids.to(device),
                    data.captions,
                    features,
                    pooled=pooled is not None,
                )
                loss = contrastive_loss(audio, text, model.logit_scale, distributed=info.world > 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                batch_loss = loss.detach().clone()
                if info.world > 1:
                    average_gradients(params, info.world)
                    dist.all_reduce(batch_loss)
                    batch_loss /= info.world  # the mean over processes is the global batch's loss
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0.0, max_log_scale)
                step += 1
                value = float(batch_loss)
                first_loss = value if first_loss is None else first_loss
                losses.append(value)
                if info.main:
                    record = {
                        "step": step,
                        "epoch": epoch + 1,
                        "loss": value,
                        "lr": optimizer.param_groups[0]["lr"],
                        "logit_scale": float(model.logit_scale.detach().exp()),
                        "seconds": round(time.perf_counter() - t_train, 3),
                    }
                    steps_file.write(json.dumps(record) + "\n")
                    steps_file.flush()
                    bar.set_postfix(loss=f"{value:.4f}")
                    if step % cfg.log_every == 0 or step == 1:
                        log.info("step", extra=record)
                if step >= total_steps:
                    break
            bar.close()
            entry = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(np.mean(losses)),
                "epoch_seconds": round(time.perf_counter() - t_epoch, 2),
            }
            if info.main:
                if data.val:
                    t0 = time.perf_counter()
                    entry["val"] = validate(
                        model, data.val, data.val_captions, data.val_references, cfg.eval_batch_size, device, val_pooled
                    )
                    entry["val_seconds"] = round(time.perf_counter() - t0, 2)
                score = entry["val"][SELECTION_METRIC] if data.val else float(epoch)
                if not best or score > best["value"]:
                    best = {
                        "metric": SELECTION_METRIC if data.val else "last epoch",
                        "value": score,
                        "epoch": epoch + 1,
                        "step": step,
                        "val": entry.get("val"),
                    }
                    save_checkpoint(model, out / "dual.safetensors", meta={**meta, "best": best})
                    entry["saved"] = True
                log.info("epoch done", extra=entry)
                history.append(entry)
            if info.world > 1:
                dist.barrier()  # the others wait while rank 0 validates and saves
            if step >= total_steps:
                break
    finally:
        if steps_file is not None:
            steps_file.close()
        torch.set_num_threads(threads_before)
    report = {
        "checkpoint": str(out / "dual.safetensors"),
        "best": best,
        "history": history,
        "steps": step,
        "first_loss": first_loss,
        "world_size": info.world,
        "device": str(device),
        "threads": threads,
        "train_pairs": len(data.train),
        "val_pairs": len(data.val),
        "frozen_text": cfg.freeze_text,
        "val_chance": retrieval_chance(_val_caption_audio(data), len(data.val)) if data.val else None,
        "train_seconds": round(time.perf_counter() - t_train, 2),
        "seconds": round(time.perf_counter() - t_start, 2),
        "config": to_dict(cfg),
    }
    if info.main:
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        log.info("pretrain done", extra={"best": best, "steps": step, "seconds": report["seconds"]})
    return report


# --- command line --------------------------------------------------------------------------------------------------


def load_config(
    recipe: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    environ: dict[str, str] | None = None,
) -> PretrainConfig:
    """Recipe section, then a JSON file, then BLAT_PRETRAIN_* environment variables, then --set key=value."""
    data: dict[str, Any] = {}
    if recipe:
        section = load_recipe(recipe).pretrain or {}
        data = to_dict(section) if dataclasses.is_dataclass(section) else dict(section)
    if config:
        data.update(json.loads(Path(config).read_text()))
    data = apply_env(data, "BLAT_PRETRAIN_", environ)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    return from_dict(PretrainConfig, data, where="pretrain config")


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", type=Path, required=True, help="scene manifest (JSON Lines)")
    p.add_argument("--synthetic", type=Path, help="stage 2's captions (JSON Lines rows {id, caption, ...})")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--val-manifest",
        type=Path,
        help="validate on this manifest's captioned rows instead of holding out training pairs",
    )
    p.add_argument("--recipe", help="take the `pretrain` section of this recipe (name or path)")
    p.add_argument("--config", type=Path, help="JSON file with PretrainConfig fields (over the recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field (repeatable)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level if int(os.environ.get("RANK", "0")) == 0 else "WARNING")
    try:
        cfg = load_config(args.recipe, args.config, args.set)
        report = pretrain(cfg, args.manifest, args.out, args.synthetic, args.val_manifest)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        best = report["best"]
        print(
            f"{report['steps']} steps in {report['train_seconds']} s; best {best.get('metric')} = "
            f"{best.get('value', float('nan')):.4f} at epoch {best.get('epoch')} -> {report['checkpoint']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
