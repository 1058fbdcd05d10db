"""Memory Aware Synapses (Aljundi et al., ECCV 2018, arXiv 1711.09601).

Importance of parameter k after a task (MAS Eq. 2, with the squared L2 norm of Eq. 4):

    Omega_k = 1/N * sum_n | d ||F(x_n)||_2^2 / d theta_k |

F is the raw embedding output: the image tower on image x_n and the language tower on its fact.
No labels are used. The absolute value is taken per sample, then averaged over the N samples
(also when the last batch is short). The model is in eval mode and sees no augmentation. The
per-sample sums come from :mod:`factlearn.continual.per_sample`; the penalty after each task is
``lambda * sum_k Omega_k (theta_k - theta*_k)^2`` (MAS Eq. 3).

factlearn's extension (``method.importance_output: normalized``): retrieval ranks by the
slot-normalised embedding F_hat (each slot scaled to unit length, :func:`factlearn.model.normalize_slots`),
whose squared norm is the same for every input, so Eq. 4 has nothing to measure on it. Instead

    Omega_k = 1/N * sum_n 1/K * sum_{v in V_n} | d (v . F_hat(x_n)) / d theta_k |

with V_n K random unit directions per sample (``method.importance_directions``), uniform on the
sphere and seeded by the sample's position in the task, so they do not depend on the batch size or
the number of ranks. It costs K forward and backward passes where the raw output costs one.

Controls (``method.importance_control``; issue 17): at the same lambda, does MAS keep more than
uniform anchoring because Omega says WHERE to anchor? ``shuffled`` permutes each parameter tensor's
importance values at random (:func:`shuffle_within_tensors`: same values per layer, other places);
``noise`` computes Omega from uniform random pixels instead of the images
(:func:`~factlearn.continual.unlabeled.noise_images`).
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..model import normalize_slots
from .base import TaskData, log_importance, mean_over_samples
from .per_sample import Objective, per_sample_abs_grad_sum, squared_norm
from .unlabeled import IMAGE_TOWER, TOWERS, DataImportance, noise_images

CONTROL_SEED = 17  # the seed of the controls' random draws (with the task's position and a tensor's name)


def batch_abs_grad(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], names: Iterable[str] | None = None,
    objective: Objective = squared_norm, aux: tuple[torch.Tensor, ...] = (),
) -> dict[str, torch.Tensor]:
    """|d sum_n s_n(module(x_n)) / d theta| (``method.importance: batch``; s_n = ||.||^2 unless
    ``objective`` and ``aux`` say otherwise, as in
    :func:`~factlearn.continual.per_sample.per_sample_abs_grad_sum`): one backward pass per batch, a
    lower bound of the per-sample sum (the triangle inequality), kept as a cheaper approximation of
    MAS Eq. 2."""
    params = dict(module.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad] if names is None else list(names)
    grads = torch.autograd.grad(objective(module(*inputs), *aux), [params[n] for n in names], allow_unused=True)
    return {n: (g.abs() if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, grads)}


def random_directions(positions: Sequence[int], count: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(len(positions), count, dim) float32 unit vectors, uniform on the sphere: sample ``i``'s from
    numpy's generator seeded ``[seed, i]``, the same whatever batch the sample is in."""
    v = np.stack([np.random.default_rng([seed, i]).standard_normal((count, dim)) for i in positions])
    return torch.from_numpy(v / np.linalg.norm(v, axis=-1, keepdims=True)).float()


def direction_objective(output: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """sum_n v_n . F_hat(x_n): raw slots ``output`` (B, 3, d), unit ``directions`` (B, 3*d); F_hat is the
    slot-normalised embedding retrieval ranks by (factlearn's extension of MAS Eq. 4, see the module
    docstring). A wildcard slot, zeroed by the language tower's mask, contributes nothing."""
    return (normalize_slots(output) * directions).sum()


def shuffle_within_tensors(omega: dict[str, torch.Tensor], seed: int | Sequence[int] = 0) -> dict[str, torch.Tensor]:
    """Each tensor's values in a random order (``method.importance_control: shuffled``): the same
    multiset of values per parameter tensor (so per layer), at other positions.

    Args:
        omega: name -> importance tensor.
        seed: with the CRC-32 of each name, seeds numpy's generator of that tensor's permutation,
            so the result does not depend on the order of ``omega`` (nor on the rank).
    Returns:
        name -> a tensor of the same shape, dtype and device.
    """
    seed = [seed] if isinstance(seed, int) else list(seed)
    out = {}
    for name, t in omega.items():
        perm = np.random.default_rng([*seed, zlib.crc32(name.encode())]).permutation(t.numel())
        out[name] = t.reshape(-1)[torch.from_numpy(perm).to(t.device)].reshape(t.shape)
    return out


def mas_importance(
    model: nn.Module, task: TaskData, batch_size: int = 64, exact: bool = True, towers: tuple[str, ...] = TOWERS,
    output: str = "raw", directions: int = 4,
) -> dict[str, torch.Tensor]:
    """MAS importance of the trainable parameters of ``towers`` of a FactModel over ``task``'s samples.

    Args:
        model: a :class:`factlearn.model.FactModel`.
        task: the samples (images and their facts), iterated once in fixed order.
        batch_size: samples per batched pass (memory grows with it: activations, and per-sample
            gradients of vmap-fallback parameters).
        exact: per-sample absolute gradients (the method); False = |gradient of the batch sum|.
        towers: which towers (``"image_tower"``, ``"language_tower"``).
        output: ``raw``, the squared norm of the raw embedding (MAS Eq. 2 with Eq. 4), or
            ``normalized``, random directions of the slot-normalised one (factlearn's extension, see
            the module docstring; ``directions`` passes per batch).
        directions: K, the random unit directions per sample with ``normalized``.
    Returns:
        name -> importance tensor shaped like the parameter, on the parameter's device.
    """
    fn = per_sample_abs_grad_sum if exact else batch_abs_grad
    own = {t: {n: p for n, p in getattr(model, t).named_parameters() if p.requires_grad} for t in towers}
    seen = 0  # samples of this shard so far: a sample's position in the task is rank + seen * world

    def sums(tower: str, inputs: tuple[torch.Tensor, ...], v: torch.Tensor | None) -> dict[str, torch.Tensor]:
        args = (getattr(model, tower), inputs, list(own[tower]))
        if v is None:
            return fn(*args)  # MAS Eq. 2 with Eq. 4
        total: dict[str, torch.Tensor] = {}
        for k in range(directions):  # one forward and backward pass per direction
            for n, g in fn(*args, direction_objective, (v[:, k],)).items():
                total[n] = total[n] + g if n in total else g
        return {n: g / directions for n, g in total.items()}  # the mean over the K directions

    def per_batch(pixels: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        nonlocal seen
        v = None
        if output == "normalized":
            shard, b = task.shard, pixels.shape[0]
            positions = [shard.rank + (seen + i) * shard.world for i in range(b)]
            v = random_directions(positions, directions, 3 * model.cfg.slot_dim).to(pixels.device)  # (b, K, 3*d)
            seen += b
        for tower in towers:
            inputs = (pixels,) if tower == IMAGE_TOWER else (tokens, mask)
            for n, g in sums(tower, inputs, v).items():
                yield f"{tower}.{n}", g  # sum over the batch of |per-sample gradient|

    like = {f"{t}.{n}": p for t in towers for n, p in own[t].items()}
    return mean_over_samples(model, task, per_batch, like, batch_size)


class MAS(DataImportance):
    """Global MAS: importance from the embedding outputs of both towers, accumulated across tasks.

    Options (``method.*``):
        lam: penalty strength lambda (MAS Eq. 3).
        accumulate, alpha: importance across tasks, ``sum`` (the MAS authors' code) or
            ``blend`` (``alpha * old + (1 - alpha) * new``).
        penalty: ``loss`` (a loss term, MAS Eq. 3) or ``decoupled`` (a pull after the optimizer's step).
        importance_norm: ``none`` (MAS Eq. 2) or ``mean`` (each task's Omega divided by its mean per
            tower, so that one lambda means the same across models and worlds).
        importance_power: each task's Omega raised to it before ``importance_norm`` (a diagnostic:
            p > 1 concentrates the pull, keeping Omega's order).
        importance: ``exact`` per-sample |gradient| (MAS Eq. 2) or ``batch`` (|gradient of the
            batch sum|: faster, a lower bound).
        importance_output: ``raw``, the squared norm of the raw embedding (MAS Eq. 4), or
            ``normalized``, random unit directions of the slot-normalised embedding retrieval ranks
            by (factlearn's extension; costs ``importance_directions`` passes instead of one).
        importance_directions: K, the random directions per sample with ``normalized``.
        importance_batch_size: samples per batched pass.
        max_importance_samples: a seeded subset of the task's samples (None = all).
        importance_data: unlabeled images for the image tower's importance (MAS Sec. 5).
        importance_images, importance_facts: held-out images, and a subset of the facts learned so
            far, to take the importance from (MAS Sec. 5, Table 4; chosen by the training session).
        importance_control: ``none`` (the method), or a control at the same lambda: ``shuffled``
            (each parameter tensor's Omega values permuted at random, seeded by the task's position
            and the tensor's name) or ``noise`` (the image tower's Omega from uniform random pixels
            of the same shape and count as the images it would come from).
    """

    name = "mas"
    options = DataImportance.options + ("importance", "importance_output", "importance_directions",
                                        "importance_control")

    def importance(self, model: nn.Module, task: TaskData) -> dict[str, torch.Tensor]:
        """The task's Omega (:class:`DataImportance`), shuffled within each tensor with
        ``method.importance_control: shuffled``."""
        omega = super().importance(model, task)
        if self.cfg.importance_control == "shuffled":
            omega = shuffle_within_tensors(omega, [CONTROL_SEED, self.tasks_seen])
        return omega

    def tower_importance(self, model: nn.Module, data: TaskData, towers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """:func:`mas_importance` of ``towers`` over ``data`` (exact or batch, as ``method.importance``;
        raw or normalized output, as ``method.importance_output``; noise instead of the images with
        ``method.importance_control: noise``)."""
        if self.cfg.importance_control == "noise" and IMAGE_TOWER in towers:
            data = noise_images(data, [CONTROL_SEED, self.tasks_seen])
        omega = mas_importance(model, data, self.cfg.importance_batch_size, self.cfg.importance == "exact", towers,
                               self.cfg.importance_output, self.cfg.importance_directions)
        log_importance(f"MAS importance ({', '.join(towers)})", data.name, omega)
        return omega
