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

import datetime
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional
from torch import nn

from incept.errors import UserError

# The differentiable all_reduce is deprecated in favour of a private module without autograd;
# it remains the public one that carries gradients back across replicas.
warnings.filterwarnings(
    "ignore", message="torch.distributed.nn.functional.all_reduce is deprecated"
)


_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Replicas:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


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


def start_replicas() -> Replicas:
    """Joins the process group when torchrun started this process; else a single replica."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            store=_attempt_store(rank, world_size),
            rank=rank,
            world_size=world_size,
            timeout=_TIMEOUT,
        )
    return Replicas(rank, world_size, local_rank, device)


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """The rendezvous store, its keys prefixed by torchrun's restart count.

    After torchrun restarts the replicas (--max-restarts), the process-group set-up would
    otherwise read the addresses the dead replicas published, and gloo fails with "connection
    refused" (seen with torch 2.14). Under torchrun the agent hosts the store; started by
    hand (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE set), replica 0 hosts it.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=not agent_hosts_it and rank == 0,
        timeout=_TIMEOUT,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"incept/attempt-{attempt}", store)


def stop_replicas(replicas: Replicas) -> None:
    if replicas.distributed and dist.is_initialized():
        dist.destroy_process_group()


def split_batch(global_batch: int, replicas: Replicas) -> int:
    if global_batch % replicas.world_size:
        raise UserError(
            f"--batch-size {global_batch} does not split evenly across "
            f"{replicas.world_size} replicas: use a multiple of {replicas.world_size}"
        )
    return global_batch // replicas.world_size


def sum_across(values: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    """Element-wise sum of a tensor over all replicas (itself when there is one)."""
    if not replicas.distributed:
        return values
    # NCCL reduces only accelerator tensors; gloo takes CPU ones.
    on_device = values.to(replicas.device, copy=True)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(values.device)


def same_everywhere(value: int, replicas: Replicas) -> bool:
    """Whether every replica holds the same integer."""
    if not replicas.distributed:
        return True
    bounds = torch.tensor([value, -value], dtype=torch.float64, device=replicas.device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    return bounds[0].item() == -bounds[1].item()


def broadcast_flag(flag: bool, replicas: Replicas) -> bool:
    """True on every replica when it is true on any."""
    if not replicas.distributed:
        return flag
    return bool(sum_across(torch.tensor([float(flag)]), replicas).item() > 0)


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
