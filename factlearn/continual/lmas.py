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

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .base import TaskData, log_importance, mean_over_samples, trainable
from .unlabeled import IMAGE_TOWER, LANGUAGE_TOWER, TOWERS, DataImportance


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
    wanted = {n: p for n, p in trainable(model).items() if n.split(".", 1)[0] in towers}
    # The hooks compute each layer call's sum during the forward; they are handed over per batch
    # (one parameter-sized tensor per layer call) and added in call order.
    found: list[tuple[str, torch.Tensor]] = []
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
            found.extend((prefix + n, g) for n, g in grads.items())

        return hook

    def per_batch(pixels: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        with torch.no_grad():
            if IMAGE_TOWER in towers:
                model.embed_images(pixels)
            if LANGUAGE_TOWER in towers:
                model.embed_facts(tokens, mask)
        taken = found.copy()
        found.clear()
        return taken

    handles = []
    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        own = {n: p for n, p in module.named_parameters(recurse=False) if prefix + n in wanted}
        if own:
            handles.append(module.register_forward_hook(make_hook(prefix, own), with_kwargs=True))
    try:
        return mean_over_samples(model, task, per_batch, wanted, batch_size)
    finally:
        for h in handles:
            h.remove()


class LMAS(DataImportance):
    """Local (Hebbian) MAS: the quadratic penalty with l-MAS importance, accumulated across tasks.

    Options (``method.*``):
        lam: penalty strength lambda (MAS Eq. 3).
        accumulate, alpha: importance across tasks, ``sum`` or ``blend``
            (``alpha * old + (1 - alpha) * new``).
        penalty: ``loss`` (a loss term) or ``decoupled`` (a pull after the optimizer's step).
        importance_norm: ``none`` or ``mean`` (each task's Omega divided by its mean per tower).
        importance_power: each task's Omega raised to it first (a diagnostic of concentration).
        importance_batch_size: samples per forward pass.
        max_importance_samples: a seeded subset of the task's samples (None = all).
        importance_data: unlabeled images for the image tower's importance (MAS Sec. 5).
        importance_images, importance_facts: held-out images, and a subset of the facts learned so
            far, to take the importance from (MAS Sec. 5, Table 4; chosen by the training session).

    ``importance_output`` is mas's alone (refused here): l-MAS measures each layer's own output,
    never the embedding that retrieval normalises.
    """

    name = "lmas"
    options = DataImportance.options

    def tower_importance(self, model: nn.Module, data: TaskData, towers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """:func:`lmas_importance` of ``towers`` over ``data``."""
        omega = lmas_importance(model, data, self.cfg.importance_batch_size, towers)
        log_importance(f"l-MAS importance ({', '.join(towers)})", data.name, omega)
        return omega
