"""Step 4 of the BLAT pipeline (stage 2): caption the tags-only split, one caption per clip.

Modes: `captioner` (beam search conditioned on the clip's audio and AudioSet tags: BLAT), `no_tags` (audio only:
ablation b, use a captioner trained with --no-tags) and `templates` (text from the tag names alone, no audio:
ablation c). The job is sharded by sorted id and resumable (blat_jobs.shards): every shard file is written atomically,
a rerun skips finished shards, and a killed run loses at most the shards in flight.

Several workers can share one job: `--workers N` starts N local processes; under `torchrun --nproc-per-node N`
(on one or several nodes sharing the output folder) every rank works. Workers claim shards through files in
<out>/claims/; a dead worker's claim goes stale after --lease-s seconds (at once for a process of this machine
that is gone) and another worker redoes its shard. Rank 0 (or the --workers parent) waits for every shard, checks
that all are present and whole, and writes captions.jsonl; `--merge-only` does just that check and merge. With
--device cuda each worker takes cuda:<LOCAL_RANK>. Outputs:

    <out>/shard-00000.jsonl ...   <out>/captions.jsonl (all shards merged, at the end)   <out>/job.json
    <out>/claims/ (shards being worked on)   <out>/workers/<worker>.json (the shards each worker computed)

Each row: {id, audio, caption, log_prob, tags, provenance{mode, checkpoint_sha256, use_tags, decoding, seed}}.
Run `python -m blat.pipeline.caption -h`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from blat.pipeline import templates
from blat.pipeline.data import batch_audio, file_sha256, load_audio, load_jsonl, load_scene_manifest
from blat.pipeline.frozen import cache_file, clip_key, pad_frames, per_clip_outputs
from blat.pipeline.recipe import load_recipe, with_overrides
from blat.pipeline.stages import CaptioningConfig
from blat_contract.audio import SAMPLE_RATE
from blat_contract.beam import DecodingOptions
from blat_contract.config import to_dict
from blat_jobs import shards as js
from blat_jobs.shards import LEASE_S, Identity, Incomplete, JobMismatch

log = logging.getLogger("blat.pipeline.caption" if __name__ == "__main__" else __name__)

MERGED = "captions.jsonl"
JOB = js.JOB
TEMPLATE_VERSION = "tags_caption/1"  # bump when templates.tags_caption changes its wording
__all__ = ["JOB", "MERGED", "Incomplete", "JobMismatch", "caption_split", "read_captions", "shard_name"]


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.jsonl"


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

    def __call__(self, rows: list[dict]) -> list[tuple[str, float]]:
        from blat.models.captioner import tags_tensor

        tower = self.model.audio_encoder
        waves = [load_audio(r["audio_path"], SAMPLE_RATE) for r in rows]
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
    """One job as every worker derives it from the same arguments."""

    job: js.Job
    rows: dict[str, dict]
    cfg: CaptioningConfig
    checkpoint: Path | None
    checkpoint_sha: str | None
    decoding: dict


def _open(
    manifest: Path,
    out: Path,
    cfg: CaptioningConfig,
    checkpoint,
    limit,
    overwrite: bool,
    reset: bool = True,
    readonly: bool = False,
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
        reset=reset,
        readonly=readonly,
    )
    return _Task(
        job, {i: rows[i] for i in ids}, cfg, Path(checkpoint) if checkpoint else None, checkpoint_sha, spec["decoding"]
    )


def _work(task: _Task, ident: Identity, lease_s: float, wait: bool, progress: bool) -> js.Summary:
    """This process's claim loop over the job's shards (blat_jobs.shards.run_worker)."""
    cfg = dataclasses.replace(task.cfg, device=ident.device(task.cfg.device))
    job, model = task.job, None

    def process(k: int, ids: list[str]) -> list[dict]:
        nonlocal model
        if cfg.mode != "templates" and model is None:
            model = _Captioner(task.checkpoint, cfg)  # once, and only when a shard is left to compute
        torch.manual_seed(cfg.seed + k)  # decoding is deterministic; seeded anyway, per shard
        batch = [task.rows[i] for i in ids]
        texts = [(templates.tags_caption(r["tags"]), None) for r in batch] if model is None else model(batch)
        use_tags = cfg.mode == "templates" or model.use_tags
        provenance = {
            "mode": cfg.mode,
            "checkpoint_sha256": task.checkpoint_sha,
            "use_tags": use_tags,
            "decoding": task.decoding,
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

    where = f" (rank {ident.rank} of {ident.world_size})" if ident.world_size > 1 else ""
    bar = tqdm(
        total=len(job.ids),
        initial=_rows_present(job),
        desc=f"stage 2: {cfg.mode}{where}",
        unit="clip",
        disable=not progress,
    )
    try:
        return js.run_worker(job, process, ident, lease_s, wait=wait, on_shard=lambda k, n: bar.update(n))
    finally:
        bar.close()


def _rows_present(job: js.Job) -> int:
    return sum(len(s) for k, s in enumerate(job.shards) if job.path(k).exists())


def caption_split(
    scenes_manifest: str | Path,
    out_dir: str | Path,
    config: CaptioningConfig | None = None,
    checkpoint: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    lease_s: float = LEASE_S,
    identity: Identity | None = None,
    merge_only: bool = False,
) -> Path | None:
    """Caption one split of a scene manifest into `out_dir`; returns the merged captions.jsonl.

    Resumable: rerun with the same arguments to finish a killed job. `limit` keeps the first n sorted ids (tests).
    workers > 1: that many local worker processes share the job, then this process finishes what they left and
    merges. identity: this process's place among workers started together (torchrun; the CLI reads it from the
    environment): rank 0 waits for every shard and merges, the other ranks return None after their pass.
    merge_only: compute nothing; check the job is complete (else Incomplete, naming the shards) and merge."""
    cfg = config or CaptioningConfig()
    ident = identity or Identity()
    if workers > 1 and ident.world_size > 1:
        raise ValueError("workers > 1 starts local worker processes: not under torchrun (use --nproc-per-node)")
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        manifest, out = Path(scenes_manifest), Path(out_dir)
        task = _open(manifest, out, cfg, checkpoint, limit, overwrite, reset=ident.rank == 0, readonly=merge_only)
        if merge_only:
            return js.merge(task.job, MERGED, _concat)
        job = task.job
        log.info(
            "captioning",
            extra={
                "split": cfg.split,
                "mode": cfg.mode,
                "rows": len(job.ids),
                "shards": len(job.shards),
                "out": str(out),
                "rank": ident.rank,
                "world_size": ident.world_size,
                "local_workers": workers,
            },
        )
        started = time.time()
        if workers > 1:
            _run_local_workers(task, (manifest, out, cfg, checkpoint, limit), workers, lease_s, progress)
        # The --workers parent's own pass finishes whatever a failed local worker left (its claims are stale at once).
        summary = _work(task, ident, lease_s, wait=ident.rank == 0, progress=progress and workers == 1)
        if ident.rank != 0:
            log.info(
                "worker done; rank 0 merges",
                extra={"computed_shards": summary.computed, "held_by_others": summary.unfinished},
            )
            return None
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
    finally:
        torch.set_num_threads(threads)


def _run_local_workers(task: _Task, args: tuple, n: int, lease_s: float, progress: bool) -> None:
    bar = tqdm(
        total=len(task.job.ids),
        initial=_rows_present(task.job),
        desc=f"stage 2: {task.cfg.mode} ({n} workers)",
        unit="clip",
        disable=not progress,
    )
    js.run_local_workers(
        _local_worker, (*args, lease_s), n, "caption-worker", poll=lambda: bar.update(_rows_present(task.job) - bar.n)
    )
    bar.close()


def _local_worker(
    manifest, out, cfg: CaptioningConfig, checkpoint, limit, lease_s: float, ident: Identity, level: str
) -> None:
    """One --workers process: the claim loop, no waiting, no merge (the parent does both)."""
    from blat_contract.logs import setup_logging

    setup_logging(level)
    # num_threads 0 would give every worker all cores: share them instead
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // ident.world_size))
    task = _open(manifest, out, cfg, checkpoint, limit, overwrite=False, reset=False)
    _work(task, ident, lease_s, wait=False, progress=False)


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
        "  python -m blat.pipeline.caption --scenes ... --checkpoint ... --out ... --workers 4\n"
        "  torchrun --nproc-per-node 8 -m blat.pipeline.caption --scenes ... --checkpoint ... --out ... "
        "--device cuda\n"
        "  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29400 -m blat.pipeline.caption ... "
        "(out on a shared filesystem)\n"
        "  python -m blat.pipeline.caption --scenes ... --checkpoint ... --out ... --merge-only\n"
        "\nRerun the same command to resume a killed job; workers may also be added to a running job.",
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
    p.add_argument("--device", help="override captioning.device (cpu, cuda: each worker takes cuda:<LOCAL_RANK>)")
    p.add_argument("--limit", type=int, help="caption only the first N ids (sorted)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of a job with other settings")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes sharing the job (default 1; under torchrun leave it at 1: every rank is a worker)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=LEASE_S,
        help="seconds without a heartbeat after which a "
        f"worker's claim is stale and its shard is redone by another (default {LEASE_S:g})",
    )
    p.add_argument(
        "--merge-only",
        action="store_true",
        help="compute nothing: check every shard is present and "
        "whole (exit 2 naming those that are not) and write captions.jsonl; same other arguments as the run",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_recipe(args.recipe).captioning
    cfg = with_overrides(cfg, args)
    ident = Identity.from_env()
    try:
        merged = caption_split(
            args.scenes,
            args.out,
            cfg,
            args.checkpoint,
            limit=args.limit,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            workers=args.workers,
            lease_s=args.lease_s,
            identity=ident,
            merge_only=args.merge_only,
        )
    except (JobMismatch, Incomplete, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if merged is None:
        print(f"rank {ident.rank} of {ident.world_size}: done; rank 0 merges")
        return 0
    rows = load_jsonl(merged)
    print(
        f"{merged}: {len(rows)} captions; e.g. {rows[0]['id']}: {rows[0]['caption']!r}" if rows else f"{merged}: empty"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
