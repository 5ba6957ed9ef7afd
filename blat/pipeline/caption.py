"""Step 4 of the BLAT pipeline (stage 2): caption the tags-only split, one caption per clip.

Modes: `captioner` (beam search conditioned on the clip's audio and AudioSet tags: BLAT), `no_tags` (audio only:
ablation b, use a captioner trained with --no-tags) and `templates` (text from the tag names alone, no audio:
ablation c). The job is sharded by sorted id and resumable: every shard file is written atomically, a rerun skips
finished shards, and a killed run loses at most the shard in flight. Outputs:

    <out>/shard-00000.jsonl ...   <out>/captions.jsonl (all shards merged, at the end)   <out>/job.json

Each row: {id, audio, caption, log_prob, tags, provenance{mode, checkpoint_sha256, use_tags, decoding, seed}}.
Run `python -m blat.pipeline.caption -h`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from blat.pipeline import templates
from blat.pipeline.data import batch_audio, file_sha256, load_audio, load_jsonl, load_scene_manifest, write_jsonl
from blat.pipeline.frozen import cache_file, clip_key, pad_frames, per_clip_outputs
from blat.pipeline.recipe import CaptioningConfig, load_recipe, with_overrides
from contract.audio import SAMPLE_RATE
from contract.beam import DecodingOptions
from contract.config import to_dict

log = logging.getLogger("blat.pipeline.caption" if __name__ == "__main__" else __name__)

MERGED = "captions.jsonl"
JOB = "job.json"
TEMPLATE_VERSION = "tags_caption/1"  # bump when templates.tags_caption changes its wording


class JobMismatch(ValueError):
    """The output folder holds shards of a job with other settings; mixing them would give inconsistent captions."""


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.jsonl"


def shard_ids(ids: list[str], shard_size: int) -> list[list[str]]:
    """Shards are fixed by the sorted ids, so a rerun recomputes exactly the missing ones."""
    ids = sorted(ids)
    return [ids[i: i + shard_size] for i in range(0, len(ids), shard_size)]


def _decoding(cfg: CaptioningConfig) -> dict:
    return {"beam_size": cfg.beam_size, "max_tokens": cfg.max_tokens, "length_penalty": cfg.length_penalty, "n_best": 1}


def _job_spec(cfg: CaptioningConfig, manifest: Path, checkpoint_sha: str | None, ids: list[str]) -> dict:
    """What a shard's content depends on; device and batch size are left out (they do not change the captions)."""
    return {"mode": cfg.mode, "split": cfg.split, "shard_size": cfg.shard_size, "seed": cfg.seed,
            "decoding": _decoding(cfg) if cfg.mode != "templates" else {"template": TEMPLATE_VERSION},
            "checkpoint_sha256": checkpoint_sha, "scenes_manifest_sha256": file_sha256(manifest),
            "ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(), "rows": len(ids)}


def _shard_done(path: Path, expected: list[str]) -> bool:
    """A shard counts as finished when it parses and holds exactly the expected ids (atomic writes make this so)."""
    try:
        return [r["id"] for r in load_jsonl(path)] == expected
    except (OSError, ValueError, KeyError):
        return False


def _write_shard(rows: list[dict], path: Path) -> None:
    write_jsonl(rows, path, fsync=True)  # temp file + fsync + os.replace: a reader sees all of a shard or none
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


class _Captioner:
    """The model side of modes captioner / no_tags: loads audio, batches, runs beam search."""

    def __init__(self, checkpoint: Path, cfg: CaptioningConfig):
        from blat.checkpoint import load_checkpoint

        self.model, self.meta = load_checkpoint(checkpoint, map_location="cpu")
        self.device = torch.device(cfg.device)
        self.model.to(self.device).eval()
        self.cfg = cfg
        self.use_tags = cfg.mode == "captioner" and self.model.cfg.use_tags
        if cfg.mode == "captioner" and not self.model.cfg.use_tags:
            log.warning("the checkpoint was trained without tags: tags are ignored", extra={"checkpoint": str(checkpoint)})
        if cfg.mode == "no_tags" and self.model.cfg.use_tags:
            log.warning("no_tags mode with a captioner trained on tags: its tag input is left empty (zeros), which "
                        "it never saw in training; train one with --no-tags for ablation (b)")
        self.options = DecodingOptions(beam_size=cfg.beam_size, max_tokens=cfg.max_tokens,
                                       length_penalty=cfg.length_penalty)

    def __call__(self, rows: list[dict]) -> list[tuple[str, float]]:
        from blat.models.captioner import tags_tensor

        tower = self.model.audio_encoder
        waves = [load_audio(r["audio_path"], SAMPLE_RATE) for r in rows]
        frames = None
        if self.cfg.tower_cache:  # the tower's frames once per clip, shared with stage 1, other variants and seeds
            frames = per_clip_outputs(tower.frames, waves, tower.cfg.min_samples, device=self.device,
                                      keys=[clip_key(r["audio_path"]) for r in rows],
                                      cache=cache_file(self.cfg.tower_cache, tower, "frames"))
        out = []
        for i in range(0, len(rows), self.cfg.batch_size):
            batch = slice(i, i + self.cfg.batch_size)
            tags = tags_tensor([r["tags"] for r in rows[batch]], self.device) if self.use_tags else None
            if frames is not None:
                f, valid = pad_frames(frames[batch])
                encoded = self.model.encode_frames(f.to(self.device), valid.to(self.device), tags)
            else:
                wave, lengths = batch_audio(waves[batch], min_samples=tower.cfg.min_samples)
                encoded = self.model.encode(torch.from_numpy(wave).to(self.device),
                                            torch.from_numpy(lengths).to(self.device), tags)
            hyps = self.model.generate_encoded(encoded, self.options)
            out += [(self.model.vocab.decode(h[0].tokens), round(float(h[0].log_prob), 4)) if h else ("", float("-inf"))
                    for h in hyps]
        return out


def caption_split(scenes_manifest: str | Path, out_dir: str | Path, config: CaptioningConfig | None = None,
                  checkpoint: str | Path | None = None, limit: int | None = None, progress: bool = True,
                  overwrite: bool = False) -> Path:
    """Caption one split of a scene manifest into `out_dir`; returns the merged captions.jsonl.

    Resumable: rerun with the same arguments to finish a killed job. `limit` keeps the first n sorted ids (tests)."""
    cfg = config or CaptioningConfig()
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _caption(Path(scenes_manifest), Path(out_dir), cfg, checkpoint, limit, progress, overwrite)
    finally:
        torch.set_num_threads(threads)


def _caption(manifest: Path, out: Path, cfg: CaptioningConfig, checkpoint, limit, progress, overwrite) -> Path:
    rows = {r["id"]: r for r in load_scene_manifest(manifest, cfg.split)}
    if not rows:
        raise ValueError(f"{manifest}: no rows in split {cfg.split!r}")
    ids = sorted(rows)[:limit] if limit else sorted(rows)
    if cfg.mode == "templates":
        checkpoint_sha = None
    elif checkpoint is None:
        raise ValueError(f"mode {cfg.mode!r} needs a captioner checkpoint")
    else:
        checkpoint_sha = file_sha256(checkpoint)
    spec = _job_spec(cfg, manifest, checkpoint_sha, ids)
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / JOB
    if job_path.is_file():
        old = json.loads(job_path.read_text())["spec"]
        if old != spec:
            if not overwrite:
                diff = sorted(k for k in spec if old.get(k) != spec[k])
                raise JobMismatch(f"{out} holds a job with other settings (differs in {diff}); use another folder "
                                  "or overwrite=True (--overwrite) to start over")
            for p in [*out.glob("shard-*.jsonl"), out / MERGED]:
                p.unlink(missing_ok=True)
    write_jsonl([], out / ".probe")  # fail early on an unwritable folder
    (out / ".probe").unlink()
    job_path.write_text(json.dumps({"spec": spec, "config": to_dict(cfg), "scenes_manifest": str(manifest),
                                    "checkpoint": str(checkpoint) if checkpoint else None}, indent=1) + "\n")
    for stale in out.glob("shard-*.jsonl.tmp*"):  # left by a killed run
        stale.unlink(missing_ok=True)

    shards = shard_ids(ids, cfg.shard_size)
    todo = [k for k, s in enumerate(shards) if not _shard_done(out / shard_name(k), s)]
    log.info("captioning", extra={"split": cfg.split, "mode": cfg.mode, "rows": len(ids), "shards": len(shards),
                                  "done": len(shards) - len(todo), "out": str(out)})
    started = time.time()
    model = _Captioner(Path(checkpoint), cfg) if cfg.mode != "templates" and todo else None
    provenance = {"mode": cfg.mode, "checkpoint_sha256": checkpoint_sha,
                  "use_tags": cfg.mode == "templates" or bool(model and model.use_tags),
                  "decoding": spec["decoding"], "seed": cfg.seed}
    bar = tqdm(total=len(ids), initial=len(ids) - sum(len(shards[k]) for k in todo), desc=f"stage 2: {cfg.mode}",
               unit="clip", disable=not progress)
    for k in todo:
        torch.manual_seed(cfg.seed + k)  # decoding is deterministic; seeded anyway, per shard
        batch = [rows[i] for i in shards[k]]
        if cfg.mode == "templates":
            texts = [(templates.tags_caption(r["tags"]), None) for r in batch]
        else:
            texts = model(batch)
        _write_shard([{"id": r["id"], "audio": r["audio"], "caption": text, "log_prob": lp, "tags": r["tags"],
                       "provenance": provenance} for r, (text, lp) in zip(batch, texts)], out / shard_name(k))
        bar.update(len(batch))
        log.debug("shard written", extra={"shard": k, "rows": len(batch)})
    bar.close()
    merged = out / MERGED
    write_jsonl(read_captions(out, len(shards)), merged, fsync=True)
    log.info("captions written", extra={"captions": str(merged), "rows": len(ids), "computed_shards": len(todo),
                                        "seconds": round(time.time() - started, 1)})
    return merged


def read_captions(out_dir: str | Path, n_shards: int | None = None) -> list[dict]:
    """All caption rows of a job folder, from its shards in order (use while a job runs or after it was killed)."""
    out = Path(out_dir)
    paths = sorted(out.glob("shard-*.jsonl"))
    if n_shards is not None and len(paths) != n_shards:
        raise FileNotFoundError(f"{out}: {len(paths)} of {n_shards} shards present")
    return [row for p in paths for row in load_jsonl(p)]


# --- command line -------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.caption", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:3]),
        epilog="examples:\n"
               "  python -m blat.pipeline.caption --scenes runs/scenes/ci/manifest.jsonl \\\n"
               "      --checkpoint runs/ci/captioner.safetensors --out runs/ci/captions\n"
               "  python -m blat.pipeline.caption --scenes ... --checkpoint runs/ci/captioner-notags.safetensors "
               "--no-tags --out runs/ci/captions-notags\n"
               "  python -m blat.pipeline.caption --scenes ... --mode templates --out runs/ci/captions-templates\n"
               "\nRerun the same command to resume a killed job.")
    p.add_argument("--scenes", type=Path, required=True, help="scene manifest.jsonl (python -m blat.pipeline.scenes)")
    p.add_argument("--out", type=Path, required=True, help="output folder (shards, captions.jsonl, job.json)")
    p.add_argument("--checkpoint", type=Path, help="captioner checkpoint (python -m blat.pipeline.train_captioner)")
    p.add_argument("--recipe", default="ci", help="preset name (ci, demo) or recipe JSON path; its 'captioning' section")
    p.add_argument("--mode", choices=("captioner", "no_tags", "templates"), help="override captioning.mode")
    p.add_argument("--no-tags", dest="mode", action="store_const", const="no_tags", help="same as --mode no_tags")
    p.add_argument("--split", help="override captioning.split (default tags_only)")
    for name in ("beam_size", "max_tokens", "batch_size", "shard_size", "seed", "num_threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"override captioning.{name}")
    p.add_argument("--device", help="override captioning.device (cpu, cuda)")
    p.add_argument("--limit", type=int, help="caption only the first N ids (sorted)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of a job with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_recipe(args.recipe).captioning
    cfg = with_overrides(cfg, args)
    try:
        merged = caption_split(args.scenes, args.out, cfg, args.checkpoint, limit=args.limit,
                               progress=not args.no_progress, overwrite=args.overwrite)
    except (JobMismatch, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = load_jsonl(merged)
    print(f"{merged}: {len(rows)} captions; e.g. {rows[0]['id']}: {rows[0]['caption']!r}" if rows else f"{merged}: empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
