"""torch.distributed helpers: who am I, differentiable row gathers for the loss, and object gathers for
evaluation. Everything here is a no-op (or the identity) in a single process."""

import os
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world_size() -> int:
    """Processes in the default group: 1 unless torch.distributed is initialised (DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank: 0 unless torch.distributed is initialised."""
    return dist.get_rank() if world_size() > 1 else 0


def init_from_env() -> bool:
    """Joins the process group a launcher such as torchrun describes (WORLD_SIZE > 1 in the environment):
    nccl when this process has a GPU, gloo otherwise. Returns whether this process is one of several."""
    if world_size() > 1:
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def local_device() -> torch.device:
    """The GPU of this process (cuda:LOCAL_RANK) where there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


# torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns); same signature.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the sum, over all ranks, of the gradients on its rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))  # (W*N, ...)
        _all_gather_single(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # One all_reduce on every backend (gloo has no reduce_scatter); a reduce_scatter would move half the bytes.
        grad = grad.contiguous().clone()  # (W*N, ...)
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]  # (N, ...)


def gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) on each of W ranks -> (W*N, ...), rank 0's rows first, identical on every rank; as is when W = 1.

    Differentiable: the backward sums, over all ranks, the gradient each rank's loss puts on this rank's rows
    (as torch.distributed.nn.functional.all_gather, deprecated, and Lightning's all_gather(sync_grads=True) do).
    Every rank needs the same N (the sampler gives every rank batches of one size).
    """
    if world_size() == 1:
        return x
    return _GatherRows.apply(x)


_cpu_group: tuple | None = None  # (the default group it was made in, the gloo group)


# The other ranks wait in this group while rank 0 searches and scores a corpus (minutes on BEIR's largest):
# far longer than a training collective may take, so it gets its own timeout.
OBJECTS_TIMEOUT = timedelta(hours=4)


def _objects_group():
    """A gloo group over all ranks for pickled objects: they stay in host memory whatever the training backend
    (nccl would copy every message to the GPU first). Created on first use, which every rank reaches together."""
    global _cpu_group
    world = dist.group.WORLD
    if _cpu_group is None or _cpu_group[0] is not world:  # (a new default group makes a new one)
        _cpu_group = (world, dist.new_group(backend="gloo", timeout=OBJECTS_TIMEOUT))
    return _cpu_group[1]


def broadcast_from_first(obj: T) -> T:
    """Rank 0's obj on every rank (every rank calls this); obj itself in a single process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_objects_group())
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's obj, in rank order, on every rank (every rank calls this); [obj] in a single process."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj, group=_objects_group())
    return out


def gather_to_first(pieces: list[T]) -> list[list[T]] | None:
    """Every rank's list of picklable pieces -> on rank 0, the lists of all ranks in rank order; None on the others.

    Every rank calls this. One piece per rank moves per round, so no message is larger than a piece: callers
    bound a piece's size (encoded corpora are gigabytes on BEIR's large datasets)."""
    if world_size() == 1:
        return [pieces]
    group, first = _objects_group(), rank() == 0
    counts = all_gather_objects(len(pieces))
    out: list[list[T]] | None = [[] for _ in counts] if first else None
    for i in range(max(counts)):
        received = [None] * world_size() if first else None
        dist.gather_object(pieces[i] if i < len(pieces) else None, received, dst=0, group=group)
        if out is not None:
            for r, piece in enumerate(received):
                if i < counts[r]:
                    out[r].append(piece)
    return out


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over all ranks (every rank calls this); x itself in a single process. No gradient flows back."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def global_range(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise min of `low` and max of `high`, both (T,), over all ranks (every rank calls this, with its
    entries in one order); as they are in a single process. For statistics such as teacher scores' ranges:
    no gradient flows back."""
    if world_size() == 1:
        return low, high
    both = torch.cat([-low, high]).detach()  # (2T,): one MAX all_reduce gives max(-low) = -min(low) and max(high)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    negated_low, high = both.chunk(2)
    return -negated_low, high
