"""Embed a manifest of audio with the serving model, sharded over many workers: the index's input, made offline.

    python -m blat_jobs.embed run --manifest M --bundle B --out DIR [--workers N | under torchrun] [--backend triton
    ...]
    python -m blat_jobs.embed merge --out DIR

The manifest is JSON Lines as the gateway's rebuild reads it: `audio` (or `path`; relative to the manifest's
folder), optional `id` (default: the file's stem), `tags`, `caption` (or the first of `captions`). Each worker
decodes audio with the gateway's decoder and embeds it in length-sorted batches through `blat_gateway.runtime.
ModelRuntime`, so an item's embedding is the one the gateway's rebuild computes. The model runs in-process (ONNX
Runtime; --device cuda takes GPU <LOCAL_RANK>) or on a Triton cluster (--backend triton --triton-url HOST:8001), where
workers only decode audio. Shards, claims and resumption are blat_jobs.shards'; job.json's spec holds the bundle id and
the manifest's sha256, so shards of another model or manifest are never mixed.

Each shard is shard-00000.npz: `ids` (n,), `embeddings` (n, D) float32, `records` (n,) JSON strings {id,
source_uri, duration_s, tags, caption, content_hash} and `worker`, the worker that wrote it. It counts as finished
when it loads and its ids, records and embeddings all agree with the planned ids. `merge` checks completeness and
writes complete.json; `blat_gateway.index.bulk.read_folder` reads the finished folder (the gateway's rebuild does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from blat_contract.bundle import read_bundle, sha256_file
from blat_gateway.index.bulk import COMPLETE
from blat_jobs import shards as js
from blat_jobs.shards import LEASE_S, Identity, Incomplete, JobMismatch

log = logging.getLogger("blat_jobs.embed" if __name__ == "__main__" else __name__)
MERGED = COMPLETE  # the folder the gateway rebuilds from (server/blat_gateway/index/bulk.py holds the contract)
BATCH = 16  # clips per model call: the gateway's default max_batch, which its rebuild uses too


def read_manifest(path: str | Path) -> list[dict]:
    """Rows -> {id, path (absolute), tags, caption, extra}: the same rules as the gateway's rebuild entries
    (`IngestService.rebuild_entries`, minus its ingest-roots check: the operator runs this job on their own files)."""
    from blat_gateway.errors import BadRequest
    from blat_gateway.inputs import manifest_rows

    path = Path(path)
    try:
        return [
            {
                "id": str(row["id"]),
                "tags": list(row["tags"]),
                "path": str(path.parent / row["audio"]),
                "caption": row["caption"],
                "extra": row["extra"],
            }
            for _, row in manifest_rows(path)
        ]
    except BadRequest as e:
        raise ValueError(e.message) from None


def _read_ids(path: Path) -> list[str]:
    with np.load(path, allow_pickle=False) as z:
        ids, emb, records = z["ids"].tolist(), z["embeddings"], z["records"].tolist()
    if emb.dtype != np.float32 or emb.ndim != 2 or len(emb) != len(ids) or len(records) != len(ids):
        raise ValueError(f"{path}: embeddings {emb.dtype} {emb.shape} for {len(ids)} ids")
    if [json.loads(r)["id"] for r in records] != ids:
        raise ValueError(f"{path}: records do not match ids")
    return ids


def _write_shard(f, result: tuple[list[dict], np.ndarray, str]) -> None:
    records, emb, worker = result
    np.savez(
        f,
        ids=np.array([r["id"] for r in records], dtype=str),
        embeddings=emb.astype(np.float32),
        records=np.array([json.dumps(r, ensure_ascii=False) for r in records], dtype=str),
        worker=np.array(worker),
    )


def open_job(
    out: str | Path,
    manifest: str | Path | None = None,
    bundle: str | Path | None = None,
    shard_size: int = 256,
    batch_size: int = BATCH,
    overwrite: bool = False,
    reset: bool = True,
    readonly: bool = False,
) -> tuple[js.Job, dict[str, dict]]:
    """The job in `out` and its entries by id. Without manifest/bundle (merge) they come from job.json,
    and the manifest must still hash to the recorded sha256."""
    out = Path(out)
    if manifest is None or bundle is None:
        saved = json.loads((out / js.JOB).read_text())
        manifest, bundle, spec = saved["manifest"], saved["bundle"], saved["spec"]
        shard_size, batch_size, readonly = spec["shard_size"], spec["batch_size"], True
    manifest, bundle = Path(manifest).resolve(), Path(bundle).resolve()
    entries = read_manifest(manifest)
    if not entries:
        raise ValueError(f"{manifest}: no rows")
    shards = js.plan([e["id"] for e in entries], shard_size)
    spec = {
        "bundle_id": read_bundle(bundle, verify=False).id,
        "manifest_sha256": sha256_file(manifest),
        "items": len(entries),
        "shard_size": shard_size,
        "batch_size": batch_size,
    }  # batches set the padding
    job = js.open_job(
        out,
        spec,
        shards,
        "npz",
        _read_ids,
        _write_shard,
        overwrite=overwrite,
        reset=reset,
        readonly=readonly,
        outputs=[MERGED],
        info={"manifest": str(manifest), "bundle": str(bundle)},
    )
    return job, {e["id"]: e for e in entries}


def make_runtime(
    bundle: str | Path,
    backend: str = "onnxruntime",
    triton_url: str | None = None,
    threads: int = 0,
    device: str = "cpu",
):
    """The gateway's ModelRuntime over ONNX Runtime in-process, or over Triton (the settings the gateway takes)."""
    # server's model side is imported here, not at the top: merge needs no model.
    from blat_gateway.runtime import ModelRuntime
    from blat_gateway.settings import Settings, TritonSettings

    if backend == "triton":
        from blat_gateway.inference import make_backend

        url = triton_url or TritonSettings().url
        settings = Settings(bundle=str(bundle), backend="triton", triton=TritonSettings(url=url))
        return ModelRuntime(bundle, make_backend(settings))
    from blat_gateway.backends.ort import OnnxRuntimeBackend

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):  # cuda:<LOCAL_RANK> from Identity.device: one GPU per local worker
        gpu = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    return ModelRuntime(bundle, OnnxRuntimeBackend(bundle, threads=threads, providers=providers))


def embed_entries(runtime, entries: list[dict], batch_size: int = BATCH) -> tuple[list[dict], np.ndarray]:
    """Records and (n, D) embeddings of `entries`, in their order: decoded and batched as the gateway's rebuild."""
    from blat_gateway.audio import AudioLimits, decode_audio, read_limited
    from blat_gateway.inference import embed_files
    from blat_gateway.settings import LimitSettings, PredictSettings

    lim = LimitSettings()
    limits = AudioLimits(max_bytes=lim.max_upload_bytes, max_seconds=lim.max_audio_seconds)

    def decode(path: str):
        with open(path, "rb") as f:
            return decode_audio(read_limited(f, lim.max_upload_bytes), runtime.sample_rate, limits)

    out = {
        record["id"]: (record, emb)
        for record, emb in embed_files(runtime, entries, decode, batch_size, PredictSettings())
    }
    records = [out[e["id"]][0] for e in entries]
    return records, np.stack([out[e["id"]][1] for e in entries]).astype(np.float32)


def run(
    manifest,
    bundle,
    out,
    *,
    shard_size: int = 256,
    batch_size: int = BATCH,
    backend: str = "onnxruntime",
    triton_url: str | None = None,
    threads: int = 0,
    device: str = "cpu",
    lease_s: float = LEASE_S,
    overwrite: bool = False,
    workers: int = 1,
    identity: Identity | None = None,
) -> js.Summary:
    """One worker's part of the job (identity: rank 0 of 1 by default). Rank 0 waits for every shard and merges;
    with workers > 1 it first starts that many local worker processes and then finishes what they left."""
    ident = identity or Identity()
    if workers > 1 and ident.world_size > 1:
        raise ValueError("workers > 1 starts local worker processes: not under torchrun (use --nproc-per-node)")
    kw = dict(
        shard_size=shard_size,
        batch_size=batch_size,
        backend=backend,
        triton_url=triton_url,
        threads=threads,
        device=device,
        lease_s=lease_s,
    )
    job, entries = open_job(out, manifest, bundle, shard_size, batch_size, overwrite, reset=ident.rank == 0)
    log.info(
        "embedding",
        extra={
            "items": len(entries),
            "shards": len(job.shards),
            "out": str(out),
            "rank": ident.rank,
            "world_size": ident.world_size,
            "local_workers": workers,
        },
    )
    if workers > 1:
        js.run_local_workers(_local_worker, (manifest, bundle, out, kw), workers, "embed-worker")
    summary = _work(job, entries, bundle, kw, ident, wait=ident.rank == 0)
    if ident.rank == 0:
        merge(out)
    return summary


def _local_worker(manifest, bundle, out, kw: dict, ident: Identity, level: str) -> None:
    """One --workers process: the claim loop, no waiting, no merge (the parent does both)."""
    from blat_contract.logs import setup_logging

    setup_logging(level)
    kw = {**kw, "threads": kw["threads"] or max(1, (os.cpu_count() or 1) // ident.world_size)}  # share the cores
    job, entries = open_job(out, manifest, bundle, kw["shard_size"], kw["batch_size"], reset=False)
    _work(job, entries, bundle, kw, ident, wait=False)


def _work(job: js.Job, entries: dict, bundle, kw: dict, ident: Identity, wait: bool) -> js.Summary:
    runtime = None

    def process(k: int, ids: list[str]):
        nonlocal runtime
        if runtime is None:  # loaded once, and only when a shard is left to compute
            runtime = make_runtime(bundle, kw["backend"], kw["triton_url"], kw["threads"], ident.device(kw["device"]))
        records, emb = embed_entries(runtime, [entries[i] for i in ids], kw["batch_size"])
        return records, emb, ident.name

    return js.run_worker(job, process, ident, kw["lease_s"], wait=wait)


def merge(out: str | Path) -> Path:
    """Check that every shard is present and whole (else Incomplete naming them); write complete.json."""
    job, _ = open_job(out)

    def summary(paths: list[Path], f) -> None:
        with np.load(paths[0], allow_pickle=False) as z:
            dim = int(z["embeddings"].shape[1])
        spec = json.loads((job.folder / js.JOB).read_text())["spec"]
        f.write(json.dumps({**spec, "shards": [p.name for p in paths], "dim": dim}, indent=1).encode() + b"\n")

    return js.merge(job, MERGED, summary)


# --- command line -------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="python -m blat_jobs.embed",
        formatter_class=raw,
        description=__doc__,
        epilog="examples:\n"
        "  python -m blat_jobs.embed run --manifest corpus/manifest.jsonl --bundle runs/default/bundle --out emb\n"
        "  python -m blat_jobs.embed run ... --workers 4             (4 local processes, then the merge)\n"
        "  torchrun --nproc-per-node 8 -m blat_jobs.embed run ... --device cuda   (one GPU per rank)\n"
        "  torchrun --nnodes 4 --nproc-per-node 16 --rdzv-endpoint HOST:29400 -m blat_jobs.embed run ... "
        "--backend triton --triton-url triton:8001   (out on a shared filesystem)\n"
        "  python -m blat_jobs.embed merge --out emb\n"
        "\nRerun the same command to resume a killed job; workers may join a running job at any time.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        formatter_class=raw,
        help="compute the shards this worker can claim (rank 0: all, then merge)",
        description="Every worker runs this; rank 0 (or the only worker) waits for "
        "all shards, taking over those of dead workers, and merges.",
    )
    r.add_argument("--manifest", type=Path, required=True, help="JSON Lines: audio|path, id, tags, caption")
    r.add_argument("--bundle", type=Path, required=True, help="model bundle folder (bundle.json)")
    r.add_argument("--out", type=Path, required=True, help="job folder: job.json, shard-*.npz, claims/, workers/")
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (default 1; under torchrun leave it at 1: every rank is a worker)",
    )
    r.add_argument("--shard-size", type=int, default=256, help="items per shard (default 256)")
    r.add_argument("--batch-size", type=int, default=BATCH, help=f"clips per model call (default {BATCH})")
    r.add_argument(
        "--backend",
        choices=("onnxruntime", "triton"),
        default="onnxruntime",
        help="onnxruntime in each worker (default), or a Triton server: workers then only decode audio",
    )
    r.add_argument("--triton-url", default="127.0.0.1:8001", help="Triton gRPC endpoint (--backend triton)")
    r.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="onnxruntime device; cuda: each worker takes GPU <LOCAL_RANK>",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime threads per worker (default: the cores divided among the local workers)",
    )
    r.add_argument(
        "--lease-s",
        type=float,
        default=LEASE_S,
        help="seconds without a heartbeat after which a "
        f"worker's claim is stale and another redoes its shard (default {LEASE_S:g})",
    )
    r.add_argument("--overwrite", action="store_true", help="discard the shards of a job with another spec")
    m = sub.add_parser(
        "merge", help="check every shard is present and whole (exit 2 naming those that are not); write complete.json"
    )
    m.add_argument("--out", type=Path, required=True, help="job folder")
    for s in (r, m):
        s.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "merge":
            done = json.loads(merge(args.out).read_text())
            print(f"{args.out}: complete, {done['items']} items in {len(done['shards'])} shards, dim {done['dim']}")
            return 0
        ident = Identity.from_env()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: ranks on this node share its cores
        threads = args.threads or (max(1, (os.cpu_count() or 1) // local) if local > 1 else 0)
        summary = run(
            args.manifest,
            args.bundle,
            args.out,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            backend=args.backend,
            triton_url=args.triton_url,
            threads=threads,
            device=args.device,
            lease_s=args.lease_s,
            overwrite=args.overwrite,
            workers=args.workers,
            identity=ident,
        )
    except (JobMismatch, Incomplete, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{summary.worker}: computed shards {summary.computed}" + ("; merged" if ident.rank == 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
