"""Training across processes with ``torch.distributed``: one process per device, launched by ``torchrun``.

``SpikeDictionary.fit`` (and :func:`spikedict.training.train`) train in parallel whenever a process group is
initialised with more than one process: every process reads the same data and builds the same initial model
(everything is seeded), every global batch of examples is split between the processes, the gradients are
averaged by :class:`torch.nn.parallel.DistributedDataParallel`, and rank 0 alone writes checkpoints. The
result matches one process with the same global batch (``batch_size``) up to floating-point summation order.

On one machine with two CPU processes (gloo)::

    torchrun --nproc-per-node 2 -m spikedict fit recording.nix --out results --distributed

On a machine with 4 GPUs, one process each (NCCL)::

    torchrun --nproc-per-node 4 -m spikedict fit recording.nix --out results --distributed --device cuda

On two hosts with 8 GPUs each (run on both; ``HOST0`` is reachable from the other, port open)::

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
        -m spikedict fit recording.nix --out results --distributed    # on HOST0; --node-rank 1 on the other

From Python, call :func:`init_from_environment` at the start of a script run by ``torchrun``, then fit as
usual.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_tensor", "init_from_environment", "is_active", "rank", "world_size"]


def is_active() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_active() else 1


def local_rank() -> int:
    """Rank on this host (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_environment(backend: str = "auto", timeout_seconds: float = 1800.0) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment.

    Parameters
    ----------
    backend : {"auto", "gloo", "nccl"}
        ``"auto"``: NCCL when CUDA is available, else gloo (CPU).
    timeout_seconds : float
        How long a collective waits for the other processes before failing.

    Returns
    -------
    (rank, world_size)

    Raises
    ------
    RuntimeError
        If the environment does not come from ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` unset).
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed training needs the environment that torchrun sets ({', '.join(missing)} missing). Launch "
            "with e.g. `torchrun --nproc-per-node 2 -m spikedict fit RECORDING --out DIR --distributed`."
        )
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds))
        # leave the group at exit: a gloo group still up when the interpreter ends can abort the process
        # ("terminate called without an active exception") after its work is done
        atexit.register(_leave)
    return dist.get_rank(), dist.get_world_size()


def _leave() -> None:
    """Destroy this process's process group, if it still has one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: Tensor) -> Tensor:
    """This process's share of ``rows``: every ``world_size``-th entry from ``rank``."""
    return rows[rank() :: world_size()]


def _communication_device() -> torch.device:
    """Where collectives run: this process's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (the values themselves without a process group)."""
    if not is_active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_communication_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_tensor(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce ``tensor`` element-wise over all processes, in place, and return it.

    The reduction runs in float64 on the communication device (this process's GPU for NCCL, the CPU for
    gloo); the result is written back into ``tensor`` (in its own dtype and device). Every process gets the
    same values. Without a process group, ``tensor`` is returned untouched.

    Parameters
    ----------
    tensor : Tensor
        This process's values; all processes must call with the same shape.
    op : {"sum", "max", "min"}
        The reduction.

    Returns
    -------
    Tensor
        ``tensor`` itself, holding the reduced values.
    """
    operations = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in operations:
        raise ValueError(f"op must be 'sum', 'max' or 'min', got {op!r}.")
    if not is_active():
        return tensor
    with torch.no_grad():
        work = tensor.detach().to(device=_communication_device(), dtype=torch.float64).contiguous()
        dist.all_reduce(work, op=operations[op])
        if work.data_ptr() != tensor.data_ptr():  # reduced in a copy: write it back
            tensor.copy_(work)
    return tensor


def all_finite(value: Tensor) -> bool:
    """True when ``value`` is finite in every process (so that all processes stop together)."""
    finite = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if is_active():
        finite = finite.to(_communication_device())
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


def gather_shards(local: Tensor, n_rows: int) -> Tensor:
    """Reassemble a tensor whose rows were split with :func:`shard` (all processes get all ``n_rows`` rows)."""
    if not is_active():
        return local
    world = world_size()
    size = -(-n_rows // world)
    padded = torch.zeros((size,) + tuple(local.shape[1:]), dtype=local.dtype, device=_communication_device())
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = local.new_empty((n_rows,) + tuple(local.shape[1:]))
    for r, part in enumerate(parts):
        count = len(range(r, n_rows, world))
        full[r::world] = part[:count].to(local.device)
    return full


def barrier() -> None:
    """Wait for all processes (nothing without a process group)."""
    if is_active():
        dist.barrier()
