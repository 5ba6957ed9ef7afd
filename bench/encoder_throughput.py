"""Audio- and text-encoder throughput, PyTorch eager vs ONNX Runtime, measured in one run (random weights).

    .venv/bin/python bench/encoder_throughput.py --models ci-cnn-minilm blat-cnn14-bertm

Prints one row per (model, tower): items/s for each runtime and the ONNX Runtime / PyTorch ratio.
Both runtimes get the same thread count and the same inputs; each timing is the median of --repeats runs
after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

import blat
from blat_export.graphs import export_graph

SENTENCES = [
    "a dog barks while cars pass by",
    "rain falls on a tin roof",
    "a man speaks and a door slams",
    "birds chirp in the distance",
    "an engine idles then accelerates",
    "footsteps on gravel",
    "a crowd cheers loudly",
    "glass shatters on a hard floor",
]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, batch: int, seconds: float, repeats: int, threads: int, workdir: Path) -> list[dict]:
    torch.manual_seed(0)
    model = blat.create_model(name).eval()
    sr = model.cfg.audio.frontend.sample_rate
    wave = 0.1 * torch.randn(batch, int(seconds * sr))
    lengths = torch.full((batch,), wave.shape[1], dtype=torch.long)
    tok = model.text_encoder.tokenize([SENTENCES[i % len(SENTENCES)] for i in range(batch)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    rows = []
    for tower, graph, inputs, torch_fn in [
        ("audio", "audio_encoder", {"waveform": wave, "lengths": lengths}, lambda: model.encode_audio(wave, lengths)),
        ("text", "text_encoder", tok, lambda: model.encode_text(**tok)),
    ]:
        path = export_graph(graph, model, workdir / f"{name}-{graph}.onnx")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {k: v.numpy() for k, v in inputs.items()}
        with torch.no_grad():
            t_torch = median_seconds(torch_fn, repeats)
        t_ort = median_seconds(lambda: sess.run(None, feed), repeats)
        rows.append(
            {
                "model": name,
                "tower": tower,
                "batch": batch,
                "torch_per_s": batch / t_torch,
                "ort_per_s": batch / t_ort,
                "ratio": t_torch / t_ort,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=["ci-cnn-minilm", "blat-cnn14-bertm"],
        help="registry names (default: the embedded default and the paper size)",
    )
    p.add_argument("--batch", type=int, default=8, help="clips or sentences per call")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# batch {args.batch}, {args.seconds:g} s clips, {args.threads} threads, median of {args.repeats}; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    print(f"{'model':20s} {'tower':6s} {'torch items/s':>14s} {'ORT items/s':>12s} {'ORT/torch':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for r in bench_model(name, args.batch, args.seconds, args.repeats, args.threads, Path(tmp)):
                print(
                    f"{r['model']:20s} {r['tower']:6s} {r['torch_per_s']:14.2f} {r['ort_per_s']:12.2f} "
                    f"{r['ratio']:9.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
