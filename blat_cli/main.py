"""blat: one command line for the BLAT server, its models and its clients.

  Talk to a running gateway (needs only the blat-client package):
    search, tag, caption, add, add-folder, get, delete, rebuild, rollback, stats, info
  Run things on this machine:
    serve        the gateway (REST + gRPC) on a model bundle            (= python -m blat_gateway)
    export       checkpoints -> ONNX bundle, Triton repository, release (= python -m blat_export)
    fetch        a published model by name -> its checked checkpoint and bundle (= python -m blat_export fetch)
    train        the BLAT training pipeline on a recipe                 (= python -m blat.pipeline.run)
    import-blat  convert the released BLAT checkpoint to ours
    list-models  architectures in blat/model_configs/
    inspect      a checkpoint's config and metadata
    smoke        build small models and run each verb once

`blat COMMAND --help` explains each. The local commands take their module's own arguments unchanged; the old
`python -m ...` entry points keep working. Exit status: 0 done, 1 refused by the server, 2 usage error,
3 server unreachable, 4 finished with failures (see `python -m blat_client --help`).
"""

from __future__ import annotations

import argparse
import sys

# name -> (help, how to run it with the remaining arguments). Imported only when chosen: `serve` never loads torch,
# and the remote commands need nothing but blat_client.
LOCAL = {
    "serve": ("start the gateway (REST + gRPC); see `blat serve --help`", "blat_gateway.__main__", []),
    "export": ("export ONNX bundles, Triton repositories and releases", "blat_export.__main__", []),
    "train": ("run the training pipeline (corpus, captioner, captions, pre-training)", "blat.pipeline.run", []),
    "fetch": (
        "download a published model by name (blat-cnn14-bertm) and export its bundle",
        "blat_export.__main__",
        ["fetch"],
    ),
    "import-blat": (
        "convert the released BLAT checkpoint (blat_cnn14_bertm.pth) to ours",
        "blat.__main__",
        ["import-blat"],
    ),
    "list-models": ("list the model architectures", "blat.__main__", ["list-models"]),
    "inspect": ("print a checkpoint's config and metadata", "blat.__main__", ["info"]),
    "smoke": ("build small models and run each verb once (no data needed)", "blat.__main__", ["smoke"]),
}


def _versions() -> str:
    """blat-serve's version, and the client's beside it when it is installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("blat-serve", "blat-client"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out) or "blat (not installed as a package)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_versions())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, _) in LOCAL.items():  # listed for --help; main() hands them their arguments itself
        sub.add_parser(name, help=help_text, add_help=False)
    try:
        from blat_client.cli import add_commands, common_options
    except ImportError:  # the client is a separate distribution (pip install ./clients)
        return p
    add_commands(sub, [common_options()])
    return p


def main(argv: list[str] | None = None) -> int:
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LOCAL:  # everything after the name, --help included, goes to the module's own parser
        _, module, prefix = LOCAL[argv[0]]
        return importlib.import_module(module).main([*prefix, *argv[1:]])
    args = build_parser().parse_args(argv)
    from blat_client.cli import execute

    return execute(args)
