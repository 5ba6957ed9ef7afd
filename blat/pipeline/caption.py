"""Step 4 of the BLAT pipeline (stage 2): caption the tags-only split, one caption per clip.

Modes: `captioner` (beam search conditioned on the clip's audio and AudioSet tags: BLAT), `no_tags` (audio only:
ablation b, use a captioner trained with --no-tags) and `templates` (text from the tag names alone, no audio:
ablation c). The job is sharded by sorted id and resumable (blat_jobs.shards): every shard file is written atomically,
a rerun skips finished shards, and a killed run loses at most the shards in flight.

It runs on Ray (blat_jobs.ray_run): Ray tasks load each shard's audio, a pool of `--workers` captioner actors (torch,
on a GPU each with --num-gpus 1 or a cuda device) captions it; without --address on a local Ray with this machine's
cores, with --address auto or ray://HOST:10001 on a cluster whose nodes share the output folder. Ray restarts a dead
actor and retries its shard; a rerun after the driver died computes only the shards not yet written. The run ends
by checking that every shard is present and whole and writing captions.jsonl; `--merge-only` does just that.
Outputs:

    <out>/shard-00000.jsonl ...   <out>/captions.jsonl (all shards merged, at the end)   <out>/job.json

Each row: {id, audio, caption, log_prob, tags, provenance{mode, checkpoint_sha256, use_tags, decoding, seed}}.
Run `python -m blat.pipeline.caption -h`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from blat.pipeline import templates
from blat.pipeline.data import batch_audio, file_sha256, load_audio, load_jsonl, load_scene_manifest
from blat.pipeline.frozen import cache_file, clip_key, pad_frames, per_clip_outputs
from blat.pipeline.recipe import load_recipe, with_overrides
from blat.pipeline.stages import CaptioningConfig
from blat_contract.audio import SAMPLE_RATE
from blat_contract.beam import DecodingOptions
from blat_contract.config import to_dict
from blat_jobs import ray_run
from blat_jobs import shards as js
from blat_jobs.ray_run import RayOptions
from blat_jobs.shards import Incomplete, JobMismatch

log = logging.getLogger("blat.pipeline.caption" if __name__ == "__main__" else __name__)

MERGED = "captions.jsonl"
JOB = js.JOB
TEMPLATE_VERSION = "tags_caption/1"  # bump when templates.tags_caption changes its wording
__all__ = ["JOB", "MERGED", "Incomplete", "JobMismatch", "caption_split", "read_captions", "shard_name"]


def shard_name(k: int) -> str:
    return js.shard_path(Path(), k, "jsonl").name


def _decoding(cfg: CaptioningConfig) -> dict:
    return {"beam_size": cfg.beam_size, "max_tokens": cfg.max_tokens, "length_penalty": cfg.length_penalty, "n_best": 1}


def _job_spec(cfg: CaptioningConfig, manifest: Path, checkpoint_sha: str | None, ids: list[str]) -> dict:
    """What a shard's content depends on; device and batch size are left out (they do not change the captions)."""
    return {
        "mode": cfg.mode,
        "split": cfg.split,
        "shard_size": cfg.shard_size,
        "seed": cfg.seed,
        "decoding": _decoding(cfg) if cfg.mode != "templates" else {"template": TEMPLATE_VERSION},
        "checkpoint_sha256": checkpoint_sha,
        "scenes_manifest_sha256": file_sha256(manifest),
        "ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
        "rows": len(ids),
    }


def _read_ids(path: Path) -> list[str]:
    return [r["id"] for r in load_jsonl(path)]


def _write_rows(f, rows: list[dict]) -> None:
    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def _concat(paths: list[Path], f) -> None:
    """The merged file is the shards' bytes in order: identical to re-serialising their rows, and cheaper."""
    for p in paths:
        with open(p, "rb") as src:
            shutil.copyfileobj(src, f)


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
            log.warning(
                "the checkpoint was trained without tags: tags are ignored", extra={"checkpoint": str(checkpoint)}
            )
        if cfg.mode == "no_tags" and self.model.cfg.use_tags:
            log.warning(
                "no_tags mode with a captioner trained on tags: its tag input is left empty (zeros), which "
                "it never saw in training; train one with --no-tags for ablation (b)"
            )
        self.options = DecodingOptions(
            beam_size=cfg.beam_size, max_tokens=cfg.max_tokens, length_penalty=cfg.length_penalty
        )

    def __call__(self, rows: list[dict], waves: list) -> list[tuple[str, float]]:
        from blat.models.captioner import tags_tensor

        tower = self.model.audio_encoder
        frames = None
        if self.cfg.tower_cache:  # the tower's frames once per clip, shared with stage 1, other variants and seeds
            frames = per_clip_outputs(
                tower.frames,
                waves,
                tower.cfg.min_samples,
                device=self.device,
                keys=[clip_key(r["audio_path"]) for r in rows],
                cache=cache_file(self.cfg.tower_cache, tower, "frames"),
            )
        out = []
        for i in range(0, len(rows), self.cfg.batch_size):
            batch = slice(i, i + self.cfg.batch_size)
            tags = tags_tensor([r["tags"] for r in rows[batch]], self.device) if self.use_tags else None
            if frames is not None:
                f, valid = pad_frames(frames[batch])
                encoded = self.model.encode_frames(f.to(self.device), valid.to(self.device), tags)
            else:
                wave, lengths = batch_audio(waves[batch], min_samples=tower.cfg.min_samples)
                encoded = self.model.encode(
                    torch.from_numpy(wave).to(self.device), torch.from_numpy(lengths).to(self.device), tags
                )
            hyps = self.model.generate_encoded(encoded, self.options)
            out += [
                (self.model.vocab.decode(h[0].tokens), round(float(h[0].log_prob), 4)) if h else ("", float("-inf"))
                for h in hyps
            ]
        return out


@dataclasses.dataclass
class _Task:
    """The job as the driver opens it."""

    job: js.Job
    rows: dict[str, dict]
    cfg: CaptioningConfig
    checkpoint: Path | None
    checkpoint_sha: str | None
    decoding: dict


def _open(
    manifest: Path, out: Path, cfg: CaptioningConfig, checkpoint, limit, overwrite: bool, readonly: bool = False
) -> _Task:
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
    job = js.open_job(
        out,
        spec,
        js.plan(ids, cfg.shard_size),
        "jsonl",
        _read_ids,
        _write_rows,
        overwrite=overwrite,
        info={
            "config": to_dict(cfg),
            "scenes_manifest": str(manifest),
            "checkpoint": str(checkpoint) if checkpoint else None,
        },
        outputs=[MERGED],
        readonly=readonly,
    )
    return _Task(
        job, {i: rows[i] for i in ids}, cfg, Path(checkpoint) if checkpoint else None, checkpoint_sha, spec["decoding"]
    )


def _load(rows: list[dict], mode: str) -> tuple[list[dict], list | None]:
    """A decode task (CPU): the shard's rows and their waveforms (none for templates: text from tags only)."""
    return rows, None if mode == "templates" else [load_audio(r["audio_path"], SAMPLE_RATE) for r in rows]


class _ShardCaptioner:
    """The model side of one actor: the captioner loaded once, then one shard's rows per call."""

    def __init__(self, worker: str, cpus: float, cfg: CaptioningConfig, checkpoint, checkpoint_sha, decoding: dict):
        self.cfg = cfg
        # num_threads 0 would give every actor all cores: Ray's CPUs are its share of them
        torch.set_num_threads(cfg.num_threads or max(1, int(cpus)))
        self.checkpoint_sha, self.decoding = checkpoint_sha, decoding
        self.model = None if cfg.mode == "templates" else _Captioner(checkpoint, cfg)

    def __call__(self, k: int, loaded: tuple[list[dict], list | None]) -> list[dict]:
        cfg, (batch, waves) = self.cfg, loaded
        torch.manual_seed(cfg.seed + k)  # decoding is deterministic; seeded anyway, per shard
        if self.model is None:
            texts = [(templates.tags_caption(r["tags"]), None) for r in batch]
        else:
            texts = self.model(batch, waves)
        provenance = {
            "mode": cfg.mode,
            "checkpoint_sha256": self.checkpoint_sha,
            "use_tags": cfg.mode == "templates" or self.model.use_tags,
            "decoding": self.decoding,
            "seed": cfg.seed,
        }  # the key order of earlier runs' rows
        return [
            {
                "id": r["id"],
                "audio": r["audio"],
                "caption": text,
                "log_prob": lp,
                "tags": r["tags"],
                "provenance": provenance,
            }
            for r, (text, lp) in zip(batch, texts)
        ]


def caption_split(
    scenes_manifest: str | Path,
    out_dir: str | Path,
    config: CaptioningConfig | None = None,
    checkpoint: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    ray: RayOptions | None = None,
    merge_only: bool = False,
) -> Path:
    """Caption one split of a scene manifest into `out_dir`; returns the merged captions.jsonl.

    Resumable: rerun with the same arguments to finish a killed job. `limit` keeps the first n sorted ids (tests).
    ray: where and on how many actors (default: one actor on a local Ray, or on the Ray this process is connected
    to; a GPU when captioning.device is cuda). merge_only: compute nothing; check the job is complete (else
    Incomplete, naming the shards) and merge."""
    cfg = config or CaptioningConfig()
    gpu = cfg.device.startswith("cuda")
    ray = ray or RayOptions(num_gpus=1.0 if gpu else 0.0, progress=progress)
    if gpu and not ray.num_gpus:
        raise ValueError(f"captioning.device {cfg.device!r}: give the actors a GPU (--num-gpus 1), or use cpu")
    manifest, out = Path(scenes_manifest), Path(out_dir)
    task = _open(manifest, out, cfg, checkpoint, limit, overwrite, readonly=merge_only)
    job = task.job
    if merge_only:
        return js.merge(job, MERGED, _concat)
    log.info(
        "captioning",
        extra={"split": cfg.split, "mode": cfg.mode, "rows": len(job.ids), "shards": len(job.shards), "out": str(out)},
    )
    started = time.time()
    summary = ray_run.run_shards(
        job,
        lambda k: [task.rows[i] for i in job.shards[k]],
        functools.partial(_load, mode=cfg.mode),
        functools.partial(
            _ShardCaptioner,
            cfg=dataclasses.replace(cfg, device="cuda" if ray.num_gpus else "cpu"),  # an actor sees its GPU as cuda:0
            checkpoint=task.checkpoint,
            checkpoint_sha=task.checkpoint_sha,
            decoding=task.decoding,
        ),
        ray,
        desc=f"stage 2: {cfg.mode}",
    )
    merged = js.merge(job, MERGED, _concat)
    log.info(
        "captions written",
        extra={
            "captions": str(merged),
            "rows": len(job.ids),
            "computed_shards": len(summary.computed),
            "seconds": round(time.time() - started, 1),
        },
    )
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
        prog="python -m blat.pipeline.caption",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:4]),
        epilog="examples:\n"
        "  python -m blat.pipeline.caption --scenes runs/scenes/ci/manifest.jsonl \\\n"
        "      --checkpoint runs/ci/captioner.safetensors --out runs/ci/captions\n"
        "  python -m blat.pipeline.caption --scenes ... --checkpoint runs/ci/captioner-notags.safetensors "
        "--no-tags --out runs/ci/captions-notags\n"
        "  python -m blat.pipeline.caption --scenes ... --mode templates --out runs/ci/captions-templates\n"
        "  python -m blat.pipeline.caption --scenes ... --checkpoint ... --out ... --workers 2   (2 actors here)\n"
        "  python -m blat.pipeline.caption --scenes ... --checkpoint ... --out /shared/captions --address auto "
        "--workers 16 --num-gpus 1\n"
        "  python -m blat.pipeline.caption --scenes ... --checkpoint ... --out ... --merge-only\n\n"
        + ray_run.CLUSTER_HELP,
    )
    p.add_argument("--scenes", type=Path, required=True, help="scene manifest.jsonl (python -m blat.pipeline.scenes)")
    p.add_argument("--out", type=Path, required=True, help="output folder (shards, captions.jsonl, job.json)")
    p.add_argument("--checkpoint", type=Path, help="captioner checkpoint (python -m blat.pipeline.train_captioner)")
    p.add_argument(
        "--recipe", default="ci", help="preset name (ci, demo) or recipe JSON path; its 'captioning' section"
    )
    p.add_argument("--mode", choices=("captioner", "no_tags", "templates"), help="override captioning.mode")
    p.add_argument("--no-tags", dest="mode", action="store_const", const="no_tags", help="same as --mode no_tags")
    p.add_argument("--split", help="override captioning.split (default tags_only)")
    for name in ("beam_size", "max_tokens", "batch_size", "shard_size", "seed", "num_threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"override captioning.{name}")
    p.add_argument("--device", help="override captioning.device (cpu, or cuda: each actor takes a GPU)")
    p.add_argument("--limit", type=int, help="caption only the first N ids (sorted)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of a job with other settings")
    p.add_argument(
        "--merge-only",
        action="store_true",
        help="compute nothing: check every shard is present and "
        "whole (exit 2 naming those that are not) and write captions.jsonl; same other arguments as the run",
    )
    ray_run.add_arguments(p, gpus_from="--device cuda")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_recipe(args.recipe).captioning
    cfg = with_overrides(cfg, args)
    try:
        merged = caption_split(
            args.scenes,
            args.out,
            cfg,
            args.checkpoint,
            limit=args.limit,
            overwrite=args.overwrite,
            ray=ray_run.options(args, gpus=1.0 if cfg.device.startswith("cuda") else 0.0),
            merge_only=args.merge_only,
        )
    except (JobMismatch, Incomplete, ValueError, FileNotFoundError, ray_run.Unschedulable, ray_run.JobFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = load_jsonl(merged)
    print(
        f"{merged}: {len(rows)} captions; e.g. {rows[0]['id']}: {rows[0]['caption']!r}" if rows else f"{merged}: empty"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
