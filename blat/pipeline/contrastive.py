"""The contrastive objective and what it needs across processes: symmetric InfoNCE, an all-gather whose
gradient reaches each process's own shard, BatchNorm over the global batch, and gradient averaging.

Together they make N processes at per-process batch B/N compute the same loss and the same gradients as one
process at batch B (tests/blat/pipeline/test_torchrun.py checks both under `torchrun` with gloo).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def resolve_device(spec: str) -> torch.device:
    """A device from a spec: "auto" (cuda if available, else cpu) or any torch device string."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun job (the defaults: a lone process)."""

    rank: int = 0  # global process index; rank 0 validates and writes files
    world: int = 1  # processes in the job
    local_rank: int = 0  # index on this node (picks the GPU)
    local_world: int = 1  # processes on this node (shares the CPU threads)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        int(os.environ.get("RANK", "0")),
        world,
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )
    if device_spec == "auto":
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = resolve_device(device_spec)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every process's gradient for each slice and returns this
    process's slice, so each shard receives d(sum of all processes' losses)/d(shard)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients the same way (each input feeds every process)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each of N processes -> (N b, ...), rank order, differentiable w.r.t. the local part."""
    return _GatherWithGrad.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch across processes (two-pass mean and
    variance through differentiable all-reduces). torch's SyncBatchNorm refuses CPU tensors; this one runs
    on gloo and nccl alike. Outside distributed training it is plain BatchNorm2d; parameters, buffers and
    state-dict keys are BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = _AllReduceSum.apply(x.sum(dims)) / count  # (C,)
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count  # biased, as used for normalising
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * count / (count - 1))  # unbiased, like BatchNorm2d
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def use_global_batchnorm(module: nn.Module) -> int:
    """Switch every BatchNorm2d in `module` to GlobalBatchNorm2d in place (same tensors). -> how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
            n += 1
    return n


def contrastive_loss(
    audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, distributed: bool = False
) -> torch.Tensor:
    """Symmetric InfoNCE. audio, text: (b, E) unit vectors, row i of each a positive pair; logit_scale: the log
    of the inverse temperature. Distributed: both sides are gathered from every process (negatives from the
    global batch), and this process's loss is the mean over its own b rows, so the mean over processes equals
    the loss of the whole batch in one process."""
    scale = logit_scale.exp()
    if distributed:
        all_audio, all_text = gather_with_grad(audio), gather_with_grad(text)
        offset = dist.get_rank() * audio.shape[0]
    else:
        all_audio, all_text, offset = audio, text, 0
    target = torch.arange(audio.shape[0], device=audio.device) + offset
    audio_to_text = F.cross_entropy(scale * audio @ all_text.T, target)  # (b, B) logits
    text_to_audio = F.cross_entropy(scale * text @ all_audio.T, target)
    return (audio_to_text + text_to_audio) / 2


def average_gradients(params: Sequence[nn.Parameter], world: int) -> None:
    """Sum gradients over processes with one flat all-reduce and divide by the process count.

    Each process's loss is the mean over its own rows, and the gather and BatchNorm backwards already add the
    other processes' terms to the local shard, so the average is exactly the one-process gradient of the global
    batch. Used instead of a DistributedDataParallel wrapper, which would reduce buckets asynchronously during the
    same backward that runs the gather's and BatchNorm's collectives, and would prefix the state-dict keys."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
