"""One served bundle per seed of a pipeline run, as its release would be made from that seed: what
bench/eval_families.py needs to report a release's figures over seeds (the committed release holds seed 0 only).

    .venv/bin/python bench/seed_bundles.py --run runs/demo --seeds 0,1,2 --out runs/demo/seed-bundles

For each seed, a run folder is staged under --out (links to the run's corpus, scenes and reports; model/ with that
seed's release-variant dual encoder and captioner), then `python -m blat_export release` and `python -m blat_export
bundle
--release` make <out>/bundle-<seed>. Existing bundles are kept unless --force. Prints the bundle folders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SHARED = ("corpus", "scenes", "report.json", "report.md", "index_seed.jsonl", "tower_cache")


def stage_run(run: Path, seed: int, staged: Path) -> Path:
    """A run folder whose model/ holds `seed`'s weights; everything else links to `run`."""
    variant = json.loads((run / "model" / "metrics.json").read_text())["variant"]
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "model").mkdir(parents=True)
    for name in SHARED:
        if (run / name).exists():
            (staged / name).symlink_to((run / name).resolve())
    for f in (run / "model").iterdir():
        shutil.copy2(f, staged / "model" / f.name)
    shutil.copy2(run / f"seed-{seed}" / f"dual-{variant}" / "dual.safetensors", staged / "model" / "dual.safetensors")
    shutil.copy2(run / f"seed-{seed}" / "captioner.safetensors", staged / "model" / "captioner.safetensors")
    return staged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="pipeline output folder with seed-<n>/ and model/")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="blat-demo")
    p.add_argument("--version", default="2")
    p.add_argument("--force", action="store_true", help="rebuild bundles that exist")
    args = p.parse_args(argv)
    py = sys.executable
    for seed in (int(s) for s in args.seeds.split(",")):
        bundle = args.out / f"bundle-{seed}"
        if (bundle / "bundle.json").exists() and not args.force:
            print(bundle)
            continue
        staged = stage_run(args.run, seed, args.out / f"run-{seed}")
        release = args.out / f"release-{seed}"
        subprocess.run(
            [
                py,
                "-m",
                "blat_export",
                "release",
                "--run",
                str(staged),
                "--out",
                str(release),
                "--name",
                args.name,
                "--version",
                f"{args.version}-seed{seed}",
                "--overwrite",
            ],
            check=True,
        )
        subprocess.run(
            [py, "-m", "blat_export", "bundle", "--release", str(release), "--out", str(bundle), "--overwrite"],
            check=True,
        )
        print(bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
