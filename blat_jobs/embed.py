"""Embed a manifest of audio with the serving model, sharded, on Ray: the index's input, made offline.

    python -m blat_jobs.embed run --manifest M --bundle B --out DIR [--workers N] [--num-gpus 1]
        [--address auto | ray://HOST:10001] [--backend triton --triton-url HOST:8001]
    python -m blat_jobs.embed merge --out DIR

The manifest is JSON Lines as the gateway's rebuild reads it: `audio` (or `path`; relative to the manifest's
folder), optional `id` (default: the file's stem), `tags`, `caption` (or the first of `captions`). Ray tasks decode
each shard's audio with the gateway's decoder; a pool of model actors embeds it in length-sorted batches through
`blat_gateway.runtime.ModelRuntime`, so an item's embedding is the one the gateway's rebuild computes. The model runs
in the actors (ONNX Runtime; on a GPU with --num-gpus) or on a Triton server (--backend triton --triton-url
HOST:8001), where the actors are thin clients. The engine is blat_jobs.ray_run; the job folder, resumption and the
merge check are blat_jobs.shards'; job.json's spec holds the bundle id and the manifest's sha256, so shards of
another model or manifest are never mixed.

Each shard is shard-00000.npz: `ids` (n,), `embeddings` (n, D) float32, `records` (n,) JSON strings {id,
source_uri, duration_s, tags, caption, content_hash} and `worker`, the actor that wrote it last ("<Ray node id>/<pid>").
It counts as finished when it loads and its ids, records and embeddings all agree with the planned ids. The run
ends with the merge: it checks completeness and writes complete.json; `blat_gateway.index.bulk.read_folder` reads
the finished folder (the gateway's rebuild does).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

import numpy as np

from blat_contract.bundle import read_bundle, sha256_file
from blat_gateway.index.bulk import COMPLETE
from blat_jobs import ray_run
from blat_jobs import shards as js
from blat_jobs.ray_run import RayOptions
from blat_jobs.shards import Incomplete, JobMismatch

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
) -> tuple[js.Job, dict[str, dict]]:
    """The job in `out` and its entries by id. Without manifest/bundle (merge) they come from job.json,
    and the manifest must still hash to the recorded sha256."""
    out, readonly = Path(out), False
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
    if device.startswith("cuda"):  # a Ray actor sees only its own GPU: cuda:0
        gpu = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    return ModelRuntime(bundle, OnnxRuntimeBackend(bundle, threads=threads, providers=providers))


def decode_entries(entries: list[dict], sample_rate: int) -> list:
    """Each entry's file decoded as the gateway decodes an upload (its limits), or ValueError naming the file."""
    from blat_gateway.audio import AudioLimits, decode_audio, read_limited
    from blat_gateway.errors import ServiceError
    from blat_gateway.settings import LimitSettings

    lim = LimitSettings()
    limits = AudioLimits(max_bytes=lim.max_upload_bytes, max_seconds=lim.max_audio_seconds)
    out = []
    for e in entries:
        try:
            with open(e["path"], "rb") as f:
                out.append(decode_audio(read_limited(f, lim.max_upload_bytes), sample_rate, limits))
        except ServiceError as err:
            raise ValueError(f"{e['path']}: {err.message}") from None
    return out


def embed_entries(runtime, entries: list[dict], batch_size: int = BATCH, decoded: list | None = None):
    """Records and (n, D) embeddings of `entries`, in their order: decoded (unless `decoded` holds them, in the same
    order) and batched as the gateway's rebuild."""
    from blat_gateway.inference import embed_files
    from blat_gateway.settings import PredictSettings

    decoded = decode_entries(entries, runtime.sample_rate) if decoded is None else decoded
    by_path = {e["path"]: d for e, d in zip(entries, decoded)}
    out = {
        record["id"]: (record, emb)
        for record, emb in embed_files(runtime, entries, by_path.__getitem__, batch_size, PredictSettings())
    }
    records = [out[e["id"]][0] for e in entries]
    return records, np.stack([out[e["id"]][1] for e in entries]).astype(np.float32)


def _decode(entries: list[dict], sample_rate: int) -> tuple[list[dict], list]:
    """A decode task (CPU): the shard's entries and their audio."""
    return entries, decode_entries(entries, sample_rate)


class _Embedder:
    """The model side of one actor: the gateway's runtime, built once per actor."""

    def __init__(self, worker: str, cpus: float, bundle, backend, triton_url, threads: int, gpu: bool, batch: int):
        threads = threads or max(1, int(cpus))  # Ray's CPUs are this actor's share of the node's cores
        self.runtime = make_runtime(bundle, backend, triton_url, threads, "cuda" if gpu else "cpu")
        self.worker, self.batch = worker, batch

    def __call__(self, k: int, decoded: tuple[list[dict], list]) -> tuple[list[dict], np.ndarray, str]:
        entries, audio = decoded
        records, emb = embed_entries(self.runtime, entries, self.batch, audio)
        return records, emb, self.worker


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
    overwrite: bool = False,
    ray: RayOptions | None = None,
) -> ray_run.Summary:
    """Compute the job's unfinished shards on Ray (a local Ray without ray.address), then merge (complete.json).
    threads: ONNX Runtime threads per actor (0: the actor's CPUs)."""
    ray = ray or RayOptions()
    if backend == "triton" and ray.num_gpus:
        raise ValueError("--backend triton: the model runs on Triton, so the actors need no GPU (--num-gpus 0)")
    job, entries = open_job(out, manifest, bundle, shard_size, batch_size, overwrite)
    log.info("embedding", extra={"items": len(entries), "shards": len(job.shards), "out": str(out)})
    rate = read_bundle(Path(bundle), verify=False).audio.sample_rate
    summary = ray_run.run_shards(
        job,
        lambda k: [entries[i] for i in job.shards[k]],
        functools.partial(_decode, sample_rate=rate),
        functools.partial(
            _Embedder,
            bundle=str(Path(bundle).resolve()),
            backend=backend,
            triton_url=triton_url,
            threads=threads,
            gpu=bool(ray.num_gpus),
            batch=batch_size,
        ),
        ray,
        desc="embed",
    )
    merge(out)
    return summary


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
        "  python -m blat_jobs.embed run ... --workers 2             (2 actors on this machine, then the merge)\n"
        "  python -m blat_jobs.embed run ... --address auto --workers 8 --num-gpus 1   (a cluster: one GPU each)\n"
        "  python -m blat_jobs.embed run ... --address auto --workers 32 --backend triton --triton-url triton:8001\n"
        "  python -m blat_jobs.embed merge --out emb\n\n" + ray_run.CLUSTER_HELP,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        formatter_class=raw,
        help="compute the shards not yet written (on Ray), then merge",
        description="Compute the shards not yet written, on a local Ray or a cluster, then merge.\n\n"
        + ray_run.CLUSTER_HELP,
    )
    r.add_argument("--manifest", type=Path, required=True, help="JSON Lines: audio|path, id, tags, caption")
    r.add_argument("--bundle", type=Path, required=True, help="model bundle folder (bundle.json)")
    r.add_argument("--out", type=Path, required=True, help="job folder: job.json, shard-*.npz, complete.json")
    r.add_argument("--shard-size", type=int, default=256, help="items per shard (default 256)")
    r.add_argument("--batch-size", type=int, default=BATCH, help=f"clips per model call (default {BATCH})")
    r.add_argument(
        "--backend",
        choices=("onnxruntime", "triton"),
        default="onnxruntime",
        help="onnxruntime in each actor (default), or a Triton server: the actors are then thin clients",
    )
    r.add_argument("--triton-url", default="127.0.0.1:8001", help="Triton gRPC endpoint (--backend triton)")
    r.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads per actor (default: the actor's --num-cpus)"
    )
    r.add_argument("--overwrite", action="store_true", help="discard the shards of a job with another spec")
    ray_run.add_arguments(r)
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
        summary = run(
            args.manifest,
            args.bundle,
            args.out,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            backend=args.backend,
            triton_url=args.triton_url,
            threads=args.threads,
            overwrite=args.overwrite,
            ray=ray_run.options(args),
        )
    except (JobMismatch, Incomplete, ValueError, FileNotFoundError, ray_run.Unschedulable, ray_run.JobFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: computed shards {sorted(summary.computed)} ({summary.found_done} already done); merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
