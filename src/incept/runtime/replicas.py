"""The replicas a run is spread over, and the collectives between them.

torchrun starts one process per replica and gives each RANK, WORLD_SIZE and LOCAL_RANK in its
environment; `start_replicas` joins the process group (gloo on CPU, nccl on GPU), or stands
for the single process when torchrun did not start it. Training (`incept.train`) and
evaluation (`incept.evaluate`) both run on these, so they live below both.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from incept.errors import UserError

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
