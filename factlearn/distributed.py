"""Training on several processes with torch.distributed: DistributedDataParallel over both towers.

Start with ``torchrun --nproc_per_node N -m factlearn train ...`` or ``factlearn train --nproc N``
(which runs torchrun's launcher itself). Every process (rank) holds the whole data set and an
identical model; NCCL connects GPU ranks (one GPU each, ``cuda:LOCAL_RANK``), gloo CPU ranks.

What each rank does, and why one process and N processes take the same steps (up to float
rounding):

- Training. ``train.batch_size`` is the GLOBAL batch. Each epoch's seeded permutation is cut into
  global batches exactly as in one process, and rank r takes ``batch[r::world]`` — the interleaving
  of ``DistributedSampler``, without its padding, so one rank is today's order. A rank's loss is
  weighted by its share, ``n_rank * world / n_batch`` (:meth:`Context.share`): DDP averages the
  gradients over ranks, so the step is the gradient of the global batch's mean loss even when a
  short last batch does not split evenly (a rank left with no image still joins in, weight 0).
- Batch norm. In train mode a batch-norm layer normalises with its batch's statistics, which
  would differ per rank; while DDP wraps the model its batch-norm layers are swapped for
  :class:`GlobalBatchNorm`, whose statistics cover the global batch. (torch's SyncBatchNorm does
  the same on GPUs only.) The swap shares the parameters and buffers and is undone after each task.
  It costs an all-reduce per layer in the forward and one in the backward: where collectives are
  slow (CPU processes over gloo; docs/scaling.md has the figures) ``train.sync_batch_norm:
  false`` keeps each rank's own statistics instead (faster, no longer one process's steps).
- Method state. Importance (MAS, l-MAS, EWC's Fisher) is a mean over samples: every rank sums over
  its shard of the task's samples (:meth:`Context.take`) and ``TaskData.mean`` all-reduces the sums
  and the count (:meth:`Context.reduce`). SI's path integral needs nothing: parameters and the
  DDP-averaged gradients are the same on every rank, so every rank integrates the same path.
  Penalties are computed on every rank from its own (identical) parameters.
- The run directory. Rank 0 alone writes checkpoints, metrics.json and logs, shows progress bars
  and evaluates; the others wait at a barrier. On ``--resume`` every rank reads the same
  checkpoint (a shared file system across machines). Errors a user can cause are agreed on
  (:meth:`Context.agree`): every rank stops, and rank 0 alone prints the message.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PeerError(UserError):
    """A user error that another rank met (rank 0 prints it); this rank stops quietly."""

    quiet = True


@dataclass(frozen=True)
class Context:
    """This process's place in the group: rank, world size, and the device collectives run on."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, logs and shows progress."""
        return self.rank == 0

    def take(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's shard of ``items``: ``items[rank::world]`` (all of them in one process)."""
        return items[self.rank :: self.world]

    def share(self, n_local: int, n_global: int) -> float:
        """The weight of this rank's mean loss over ``n_local`` of a global batch of ``n_global``
        samples: averaged over ranks (as DDP averages gradients), the weighted means make the
        global batch's mean."""
        return n_local * self.world / n_global

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        self._settle(t)
        return t.tolist()

    def _settle(self, *tensors: torch.Tensor) -> None:
        """:func:`settle` for CPU (gloo) collectives; NCCL's work is released by its own watchdog."""
        if self.device.type == "cpu":
            settle(*tensors)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a Ctrl-C one rank saw, a loss one rank found
        non-finite): every rank then takes the same branch."""
        return flag if self.world == 1 else self.all_sum([float(flag)])[0] > 0

    def reduce(self, sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
        """Per-sample sums over this rank's shard and its sample count -> the same over every shard.

        One all-reduce of the flattened sums (float32, on their device) and one of the count.
        """
        if self.world == 1:
            return sums, count
        names = list(sums)
        flat = torch.cat([sums[n].reshape(-1) for n in names]) if names else torch.zeros(0, device=self.device)
        dist.all_reduce(flat)
        n = torch.tensor([count], dtype=torch.int64, device=flat.device)
        dist.all_reduce(n)
        self._settle(flat, n)
        parts = flat.split([sums[name].numel() for name in names])
        return {name: p.view_as(sums[name]) for name, p in zip(names, parts)}, int(n.item())

    def error(self, message: str) -> UserError:
        """An error every rank meets at the same point (agreed): rank 0 reports it, the others stop
        quietly."""
        return UserError(message) if self.is_main else PeerError(message)

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; when it raises a UserError on any rank, raise on all of them.

        Rank 0 raises the error (its own, or the first other rank's, prefixed ``rank r:``), so the
        message is printed once; the other ranks raise a quiet :class:`PeerError`.
        """
        try:
            result, error = fn(), None
        except UserError as exc:
            result, error = None, exc
        if self.world == 1:
            if error is not None:
                raise error
            return result
        messages: list[str | None] = [None] * self.world
        dist.all_gather_object(messages, None if error is None else str(error))
        failed = next(((r, m) for r, m in enumerate(messages) if m is not None), None)
        if failed is None:
            return result
        rank, message = failed
        # Every rank stops here and exits: a settled collective (Context.all_sum), so that none
        # exits while gloo still holds the gather's tensors (see settle).
        self.all_sum([0.0])
        if not self.is_main:
            raise PeerError(message)
        raise error if rank == 0 else UserError(f"rank {rank}: {message}")


SINGLE = Context()  # one process: no collectives, every sample


def settle(*tensors: torch.Tensor, poll_s: float = 5e-4, limit_s: float = 2.0) -> bool:
    """Wait, with the GIL released, until no one but the caller holds ``tensors`` (their C++ use
    count is 1). False if ``limit_s`` passed first.

    Why: a gloo collective returns as soon as its work is complete, but gloo's worker thread drops
    its reference to the work (and so to the tensors) a moment later. When the Python tensor is
    already gone by then, that last release needs the GIL, and if the interpreter is exiting, the
    worker thread cannot take it: the process aborts ("terminate called without an active
    exception"; pytorch/pytorch PR 179291 describes it). It happened to about 1 in 15 runs
    of two CPU ranks, after the run was written. Call it after a collective on CPU tensors that
    Python is about to drop.
    """
    deadline = time.monotonic() + limit_s
    while any(t._use_count() > 1 for t in tensors):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def join_group(device: torch.device) -> tuple[Context, torch.device, bool]:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the
    rendezvous variables), or use the one the caller initialised.

    Returns the context, this rank's device (``cuda:LOCAL_RANK`` when ``device`` is CUDA) and
    whether this call initialised the group (then :func:`leave_group` ends it).
    """
    owned = False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return SINGLE, device, False
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise UserError(f"local rank {local} has no GPU of its own ({torch.cuda.device_count()} on this "
                                "machine): start at most one process per GPU, or use --device cpu")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owned = True
    elif device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    ctx = Context(dist.get_rank(), dist.get_world_size(), device if dist.get_backend() == "nccl" else torch.device("cpu"))
    if ctx.world > 1:
        logger.info("rank %d of %d on %s (%s)", ctx.rank, ctx.world, device, dist.get_backend())
    return ctx, device, owned


def leave_group(owned: bool) -> None:
    """Tear down the process group if :func:`join_group` created it."""
    if owned and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m factlearn ARGS`` as ``nproc`` ranks on this machine with torchrun's launcher
    (``torch.distributed.run --standalone``: a local rendezvous on a free port).

    Ctrl-C or SIGTERM reaches the launcher, which passes it on to the ranks (they stop together
    after the current step, with a checkpoint). Returns the exit code: 0 when every rank succeeded,
    else the first failed rank's (2: an error it printed; 130: stopped), 1 if it died of a signal.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(["--standalone", "--nproc_per_node", str(nproc), "-m", "factlearn", *args]))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException:
        return 130
    return 0


class Towers(nn.Module):
    """Both towers behind one forward, so that DDP sees one forward per training step covering
    every parameter: ``(pixels (B, 3, H, W), tokens (F, 3, L), mask (F, 3)) -> (B, 3, d), (F, 3, d)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers' raw slot embeddings in one call."""
        return self.model.embed_images(pixels), self.model.embed_facts(tokens, mask)


class _Forward:
    """The step's forward; :func:`data_parallel` drops the DDP wrapper from it on exit."""

    def __init__(self, module: nn.Module):
        self.module: nn.Module | None = module

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module(*inputs)


@contextmanager
def data_parallel(model: nn.Module, ctx: Context, sync_batch_norm: bool = True
                  ) -> Iterator[Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
    """The forward of one training step: :class:`Towers` of ``model``, under DDP when ``ctx`` has
    several ranks.

    ``sync_batch_norm``: :class:`GlobalBatchNorm` is swapped in, and the steps are one process's.
    Otherwise each rank normalises with its own share's statistics (the usual DDP default), DDP
    copies rank 0's buffers (running statistics) to every rank before each forward, and once more
    on exit, so that every rank leaves with rank 0's model.

    On exit the DDP wrapper is dropped, which removes its gradient hooks from the parameters:
    what runs afterwards (importance, evaluation) is local to each rank.
    """
    if ctx.world == 1:
        yield Towers(model)
        return
    with global_batch_norm(model) if sync_batch_norm else nullcontext():
        device = next(model.parameters()).device
        # With GlobalBatchNorm the running statistics are the same on every rank already: no buffer
        # broadcast before each forward (one collective fewer per step).
        forward = _Forward(nn.parallel.DistributedDataParallel(
            Towers(model), device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=not sync_batch_norm))
        try:
            yield forward
        finally:
            forward.module = None
            gc.collect()  # the reducer (and its hooks on the parameters) goes with the wrapper
            if not sync_batch_norm:
                for buffer in model.buffers():  # the last step's update differs per rank
                    dist.broadcast(buffer, 0)


class _AllSum(torch.autograd.Function):
    """y = sum over ranks of x, with gradients: every rank's loss depends on y, so the gradient of
    the sum of the losses with respect to this rank's x is the sum over ranks of dL_r/dy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose train-mode statistics are those of the global batch (all ranks).

    Train mode: mean and (biased) variance over every rank's samples (one all-reduce, through
    which gradients flow, as in torch's SyncBatchNorm); the running statistics get the global values
    (unbiased variance), identically on every rank. A rank with no sample contributes nothing.
    Eval mode, or one process: plain batch norm. Any input (N, C, *) with C = num_features.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input of shape (N, {self.num_features}, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch norm over the global batch in training, the running statistics in eval mode."""
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c, dims = self.num_features, [0, *range(2, x.dim())]
        shape = (1, -1, *(1,) * (x.dim() - 2))
        # One all-reduce of the first two moments: a collective costs far more than the arithmetic
        # on CPU processes. They are taken about a shift (the running mean, the same on every rank),
        # which keeps var = E[(x-s)^2] - E[x-s]^2 from cancelling when |mean| >> std.
        shift = (self.running_mean.detach().clone() if self.running_mean is not None else x.new_zeros(c)).view(shape)
        xs = x - shift
        local = x.new_tensor([x.numel() / max(1, c)])
        stats = _AllSum.apply(torch.cat([xs.sum(dims), xs.pow(2).sum(dims), local]))  # (2C + 1,)
        n = stats[-1]
        m1, m2 = stats[:c] / n, stats[c : 2 * c] / n  # (C,) E[x - s], E[(x - s)^2]
        var = (m2 - m1 * m1).clamp(min=0)  # (C,) biased, as batch norm normalises
        mean = shift.view(-1) + m1
        centred = xs - m1.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> GlobalBatchNorm:
        """A GlobalBatchNorm sharing ``bn``'s parameters and buffers (updates land in ``bn``)."""
        g = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                device=torch.device("meta"))
        for name in ("weight", "bias"):
            setattr(g, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(g, name, getattr(bn, name))
        return g.train(bn.training)


@contextmanager
def global_batch_norm(model: nn.Module) -> Iterator[None]:
    """Swap every BatchNorm1d/2d/3d of ``model`` for a :class:`GlobalBatchNorm` sharing its tensors,
    and back on exit (checkpoints and the importance rules see the usual layers)."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) in kinds]
    for parent, name, child in found:
        setattr(parent, name, GlobalBatchNorm.like(child))
    try:
        yield
    finally:
        for parent, name, child in found:
            setattr(parent, name, child)
