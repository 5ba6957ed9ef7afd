"""Distributed pre-training on CPU (gloo) under a real `torchrun`: two processes at half the batch each train
exactly like one process at the whole batch.

Why the losses can be equal, not just close: the data order and every crop come from (seed, epoch, index), each
process takes a contiguous slice of the same global batch, crops are padded to one fixed length, negatives are
gathered from both processes, BatchNorm uses the global batch's statistics (`sync_batchnorm`, our
GlobalBatchNorm2d: torch's SyncBatchNorm refuses CPU tensors), and the test model has no dropout (per-process
random masks cannot equal one process's). With per-process BatchNorm the first loss differs by ~3e-3.

This file is also the script that torchrun runs for the gradient check (`--grad-check OUT.json`).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.mark.bench  # a training/evaluation run: `make test-bench`
def test_two_processes_train_like_one_process(tmp_path):
    from blat.pipeline import pretrain as pt
    from blat.pipeline.stages import PretrainConfig
    from tests.blat.pipeline.synthetic_scenes import make_scene_manifest, write_tiny_config

    manifest, synthetic = make_scene_manifest(
        tmp_path / "scenes", seconds=0.6, counts={"tags_only": 28, "test_scenes": 0, "test_events": 0}
    )
    model = write_tiny_config(tmp_path / "tiny.json")
    settings = {
        "model": str(model),
        "batch_size": 8,
        "clip_seconds": 0.5,
        "val_size": 4,
        "max_steps": 3,
        "epochs": 1,
        "lr": 1e-3,
        "warmup_fraction": 0.0,
        "num_threads": 1,
        "seed": 3,
    }
    torchrun(
        [
            "-m",
            "blat.pipeline.pretrain",
            "--manifest",
            str(manifest),
            "--synthetic",
            str(synthetic),
            "--out",
            str(tmp_path / "two"),
            *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")],
        ]
    )
    one = pt.pretrain(PretrainConfig(**settings), manifest, tmp_path / "one", synthetic)

    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "steps.jsonl").read_text().splitlines()]

    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["steps"] == one["steps"] == 3
    first_one, first_two = losses("one")[0], losses("two")[0]
    assert abs(first_one - first_two) <= 1e-5, (first_one, first_two)  # seen: equal to the last bit
    # later steps also agree, so the averaged gradients were the one-process gradients (seen: 2e-7)
    for a, b in zip(losses("one")[1:], losses("two")[1:]):
        assert abs(a - b) <= 1e-4, (a, b)
    assert two["best"]["metric"] == "t2a_geomean" and (tmp_path / "two" / "dual.safetensors").is_file()


@pytest.mark.bench  # a training/evaluation run: `make test-bench`
def test_gather_and_batchnorm_gradients_equal_one_process(tmp_path):
    out = tmp_path / "grads.json"
    torchrun([str(Path(__file__).resolve()), "--grad-check", str(out)])
    got = json.loads(out.read_text())
    assert got["gather_values_exact"] and got["gather_grad_exact"]
    assert abs(got["loss"] - got["reference_loss"]) <= 1e-6
    assert got["max_grad_error"] <= 1e-4 * got["max_grad"], got  # relative to the largest gradient entry
    assert got["worst_param_relative_error"] <= 1e-3, got
    assert got["max_running_stat_relative_error"] <= 1e-5, got
    assert got["params_checked"] > 20


# --- the script torchrun runs --------------------------------------------------------------------------------------


def grad_check(out: Path) -> None:
    """Each of 2 processes runs half of an 8-clip batch through GlobalBatchNorm2d + gathered InfoNCE + gradient
    averaging; rank 0 also runs the whole batch in one plain model and writes the differences to `out`."""
    import torch
    import torch.distributed as dist

    from blat import build_model
    from blat.config import config_from_dict
    from blat.pipeline.contrastive import average_gradients, contrastive_loss, gather_with_grad, use_global_batchnorm
    from blat.pipeline.pretrain import embed_batch
    from tests.blat.pipeline.synthetic_scenes import TINY_NO_DROPOUT

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    result: dict = {}

    # gather_with_grad on plain tensors: values in rank order; each shard's gradient sums every process's
    x = (torch.arange(6.0).reshape(3, 2) + 10 * rank).requires_grad_()
    y = gather_with_grad(x)
    weights = torch.arange(12.0).reshape(6, 2)
    (y * weights * (rank + 1)).sum().backward()  # process r weights the gathered tensor by (r + 1)
    expected = torch.cat([torch.arange(6.0).reshape(3, 2) + 10 * r for r in range(world)])
    total_weight = sum(r + 1 for r in range(world))
    checks = torch.tensor(
        [torch.equal(y.detach(), expected), torch.equal(x.grad, total_weight * weights[3 * rank : 3 * rank + 3])],
        dtype=torch.int64,
    )
    dist.all_reduce(checks, op=dist.ReduceOp.MIN)  # true only if true on every process
    result["gather_values_exact"], result["gather_grad_exact"] = bool(checks[0]), bool(checks[1])

    torch.manual_seed(0)
    model = build_model(config_from_dict(TINY_NO_DROPOUT)).train()
    reference = copy.deepcopy(model)
    use_global_batchnorm(model)
    g = torch.Generator().manual_seed(1)
    wave = 0.1 * torch.randn(8, 16000, generator=g)
    lengths = torch.tensor([16000, 16000, 9000, 16000, 12000, 16000, 7000, 16000])
    captions = [
        "a dog barks",
        "rain on a roof",
        "a bell rings twice",
        "wind blows",
        "an engine idles",
        "birds chirp",
        "a door slams",
        "water drips slowly",
    ]
    ids = torch.arange(8)
    mine = slice(4 * rank, 4 * rank + 4)
    audio, text = embed_batch(model, wave[mine], lengths[mine], ids[mine], captions)
    loss = contrastive_loss(audio, text, model.logit_scale, distributed=True)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params, world)
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        audio, text = embed_batch(reference, wave, lengths, ids, captions)
        ref_loss = contrastive_loss(audio, text, reference.logit_scale)
        ref_loss.backward()
        ours, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
        errors = {k: (ours[k].grad - theirs[k].grad).abs().max().item() for k in theirs if theirs[k].grad is not None}
        scales = {k: theirs[k].grad.abs().max().item() for k in errors}
        ref_buffers = dict(reference.named_buffers())
        stats = {
            k: ((v - ref_buffers[k]).abs().max() / ref_buffers[k].abs().max().clamp(min=1)).item()
            for k, v in model.named_buffers()
            if "running_" in k
        }  # BN running mean / var, relative
        result.update(
            loss=total.item() / world,
            reference_loss=ref_loss.item(),
            params_checked=len(errors),
            max_grad_error=max(errors.values()),
            max_grad=max(scales.values()),
            worst_param_relative_error=max(errors[k] / scales[k] for k in errors if scales[k] > 1e-8),
            max_running_stat_relative_error=max(stats.values()),
        )
        out.write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--grad-check":
        sys.path.insert(0, str(REPO))
        grad_check(Path(sys.argv[2]))
    else:
        sys.exit(
            "usage: torchrun --nproc_per_node 2 --standalone tests/blat/pipeline/test_torchrun.py --grad-check OUT"
        )
