"""Local MAS (l-MAS; Aljundi et al., ECCV 2018, Sec. 4): importance layer by layer.

Instead of the network's output, each layer's own output y = layer(x) is measured: the importance
of a parameter theta of that layer is, per sample, |d (1/2)||y||^2 / d theta|, averaged over the
samples, with the layer's input x held fixed (MAS paper Eq. 9-10):

- nn.Linear on one vector per sample: d/dW_ij = y_i x_j, so Omega_ij = mean_n |x_j y_i| — the
  Hebbian rule ("cells that fire together wire together"); for the bias, mean_n |y_i|.
- Every other layer with parameters (Conv2d, BatchNorm, Embedding, LayerNorm, ...): the same local
  gradient, taken through the layer's own forward. For a convolution this is, per sample,
  |sum over positions of y(p) * input patch(p)| (the absolute value of the summed co-activation,
  not the sum of absolute values); the same holds for a Linear layer applied at several positions.

The factor 1/2 makes the Linear case exactly the Hebbian product (the paper drops the 2 likewise).
The layer inputs are recorded with forward hooks during one eval-mode pass over the samples; the
per-sample gradients are exact (torch.func vmap over each layer).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .base import TaskData, trainable
from .unlabeled import TOWERS, DataImportance

logger = logging.getLogger(__name__)


def _layer_importance(module: nn.Module, params: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """Sum over the batch of per-sample |d (1/2)||module(x_n)||^2 / d theta| for the module's own params."""
    batch = next(a for a in args if isinstance(a, torch.Tensor)).shape[0]
    dims = tuple(0 if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else None for a in args)

    def half_sq_norm(p: dict[str, torch.Tensor], *sample) -> torch.Tensor:
        inputs = tuple(a.unsqueeze(0) if d == 0 else a for a, d in zip(sample, dims))
        return 0.5 * functional_call(module, p, inputs, kwargs).pow(2).sum()

    per_sample = vmap(grad(half_sq_norm), in_dims=(None, *dims))(params, *args)  # name -> (B, *shape)
    return {n: g.abs().sum(0) for n, g in per_sample.items()}


def lmas_importance(
    model: nn.Module, task: TaskData, batch_size: int = 64, towers: tuple[str, ...] = TOWERS
) -> dict[str, torch.Tensor]:
    """l-MAS importance of the trainable parameters of ``towers`` of a FactModel over ``task``.

    Args:
        model: a :class:`factlearn.model.FactModel`.
        task: the samples; only the images are used for the image tower, only the facts for the
            language tower.
        batch_size: samples per forward pass.
        towers: which towers (``"image_tower"``, ``"language_tower"``).
    Returns:
        name -> importance shaped like the parameter (every trainable parameter of ``towers``).
    """
    params = trainable(model)
    wanted = {n: p for n, p in params.items() if n.split(".", 1)[0] in towers}
    total = {n: torch.zeros_like(p) for n, p in wanted.items()}
    busy = False  # the hooks' own forward passes must not trigger hooks again

    def make_hook(prefix: str, own: dict[str, nn.Parameter]):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            nonlocal busy
            if busy:
                return
            busy = True
            try:
                with torch.enable_grad():
                    grads = _layer_importance(module, {n: p.detach() for n, p in own.items()}, args, kwargs)
            finally:
                busy = False
            for n, g in grads.items():
                total[prefix + n] += g

        return hook

    handles = []
    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        own = {n: p for n, p in module.named_parameters(recurse=False) if prefix + n in wanted}
        if own:
            handles.append(module.register_forward_hook(make_hook(prefix, own), with_kwargs=True))
    was_training = model.training
    model.eval()  # deterministic function: batch-norm running statistics
    n_samples = 0
    try:
        with torch.no_grad():
            for pixels, tokens, mask in task.batches(batch_size):
                n_samples += pixels.shape[0]
                if "image_tower" in towers:
                    model.embed_images(pixels)
                if "language_tower" in towers:
                    model.embed_facts(tokens, mask)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return task.mean(total, n_samples)  # over every rank's shard under torch.distributed


class LMAS(DataImportance):
    """Local (Hebbian) MAS: the quadratic penalty with l-MAS importance, summed across tasks."""

    name = "lmas"

    def tower_importance(self, model: nn.Module, data: TaskData, towers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        omega = lmas_importance(model, data, self.cfg.importance_batch_size, towers)
        logger.info("l-MAS importance (%s) on %s: mean %.3g, max %.3g", ", ".join(towers), data.name,
                    torch.stack([o.mean() for o in omega.values()]).mean(), max(o.max() for o in omega.values()))
        return omega
