"""Training on several processes with torch.distributed, as launched by torchrun.

torchrun starts one process per device and tells each its place in the environment (WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR/PORT). `process_group` joins them (gloo on CPU, NCCL on CUDA, each
process on cuda:LOCAL_RANK); outside torchrun everything here acts as for one process, so the same
code trains on 1 or N. Rank 0 alone writes files: `on_main` runs a step there and hands its result,
or its error, to every rank, so that all ranks go on, or stop, together.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: from the process group, or torchrun's RANK once the group is gone (0 alone)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0)."""
    return rank() == 0


@contextmanager
def process_group(device: torch.device):
    """Inside the block the processes of a torchrun launch form the default process group (nothing
    happens for one process); yields this process's device: cuda:LOCAL_RANK for CUDA."""
    if launched_world_size() == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
        dist.barrier()  # no rank takes the group down while another still talks through it
    finally:
        dist.destroy_process_group()


def on_main(step, *args):
    """`step(*args)` on rank 0; every rank returns its result or raises its error (alone: just the call)."""
    if world_size() == 1:
        return step(*args)
    outcome = [None, None]
    if is_main():
        try:
            outcome[0] = step(*args)
        except Exception as e:  # noqa: BLE001 (handed to every rank, which all raise it)
            outcome[1] = e
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def main_value(value):
    """Rank 0's `value` on every rank (pickled; alone: `value`)."""
    return on_main(lambda: value)


def gather(value) -> list:
    """Every rank's `value`, in rank order, on every rank (alone: [value])."""
    if world_size() == 1:
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean over ranks of each scalar (detached), in one all-reduce; a NaN on one rank is a NaN on all."""
    if world_size() == 1:
        return values
    stacked = torch.stack([v.detach().float().reshape(()).to(collective_device()) for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world_size()).unbind()))


def agreed_signal(signum: int | None) -> int | None:
    """A stop signal caught by any rank, the same on every rank (the largest number when several)."""
    if world_size() == 1:
        return signum
    flag = torch.tensor([signum or 0], device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag) or None


def collective_device() -> torch.device:
    """Where the tensors of a collective must be: this process's GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
