"""Synchronous replicas on PyTorch's own engine: torchrun starts them, DDP averages gradients.

`incept train --nproc-per-node N ...` re-runs the same command under `torch.distributed.run`
(torchrun); every replica then finds RANK, WORLD_SIZE and LOCAL_RANK in its environment, joins
the process group (gloo on CPU, nccl on GPU) and trains its share of the global batch. Running
`torchrun --nproc-per-node N -m incept train ...` directly is the same thing.

Several machines: the same command on each, with torchrun's rendezvous flags, and a train dir
on storage every machine sees (replica 0 writes the checkpoints; all read them to resume):

    # on machine NODE (0, 1, ...) of 2, each with 4 GPUs; HOST0 is machine 0's address
    torchrun --nnodes 2 --node-rank NODE --nproc-per-node 4 \\
        --master-addr HOST0 --master-port 29500 -m incept train --data D --train-dir T

(or `--rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id JOB` instead of the master
flags, to let machines join in any order). The tests run exactly this with two "machines" on
127.0.0.1, one CPU process each.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional
from torch import nn

from incept.runtime.replicas import Replicas

# The differentiable all_reduce is deprecated in favour of a private module without autograd;
# it remains the public one that carries gradients back across replicas.
warnings.filterwarnings(
    "ignore", message="torch.distributed.nn.functional.all_reduce is deprecated"
)


def relaunch_under_torchrun(argv: list[str], nproc_per_node: int, max_restarts: int) -> int:
    """Runs `incept <argv>` as `nproc_per_node` replicas through torchrun; returns its status.

    `argv` is the command line without --nproc-per-node/--max-restarts. torchrun restarts the
    whole group up to `max_restarts` times when a replica dies; the restarted replicas resume
    from the train dir's last checkpoint.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        f"--max-restarts={max_restarts}",
        "-m",
        "incept",
        *argv,
    ]
    return subprocess.call(command)


class CrossReplicaBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics cover the whole global batch, for CPU replicas.

    torch.nn.SyncBatchNorm only runs on accelerators. Here each replica sums its channels, the
    sums travel through torch.distributed's differentiable all_reduce (so the backward pass
    sees every replica's share too), and mean and variance come out as if one process had held
    the global batch. On a separate process group, so its collectives never interleave with
    DDP's gradient buckets.
    """

    group: dist.ProcessGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Statistics in float64, as PyTorch's own CPU kernel accumulates them: in float32 the
        # channels whose values barely vary lose most of their gradient's precision.
        x64 = x.double()
        local_count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        totals = dist_functional.all_reduce(
            torch.cat([x64.sum(dim=(0, 2, 3)), local_count]), group=self.group
        )
        count = totals[-1]
        mean = totals[:-1] / count
        centred = x64 - mean.view(1, -1, 1, 1)
        variance = dist_functional.all_reduce(centred.pow(2).sum(dim=(0, 2, 3)), group=self.group)
        variance = variance / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = variance * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        normalised = centred * torch.rsqrt(variance + self.eps).view(1, -1, 1, 1)
        out = normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)


def convert_to_sync_batch_norm(model: nn.Module, replicas: Replicas) -> nn.Module:
    """Makes every BatchNorm2d compute its statistics over all replicas."""
    if replicas.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo")
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            # Same parameters, buffers and names: only the forward pass changes.
            module.__class__ = CrossReplicaBatchNorm
            module.group = group
    return model
