"""Memory Aware Synapses (Aljundi et al., ECCV 2018, arXiv 1711.09601).

Importance of parameter k after a task (MAS Eq. 2, with the squared L2 norm of Eq. 4):

    Omega_k = 1/N * sum_n | d ||F(x_n)||_2^2 / d theta_k |

F is the raw embedding output: the image tower on image x_n and the language tower on its fact.
No labels are used. The absolute value is taken per sample, then averaged over the N samples
(also when the last batch is short). The model is in eval mode and sees no augmentation.

How the exact value is computed at batch speed: in eval mode the samples of a batch do not
interact, so one backward pass of ``sum_n ||F(x_n)||^2`` gives, at the output of every layer,
each sample's own gradient ``g_n``. A layer's per-sample parameter gradient follows from its
input ``x_n`` and ``g_n`` alone (Linear: ``g_n x_n^T``; Conv2d: the same on unfolded patches;
BatchNorm/LayerNorm: ``g_n * x_hat_n``; Embedding: ``g_n`` added to the rows of the sample's
tokens), so |.| can be taken per sample without a per-sample backward pass. Parameters of any
other kind of layer (e.g. ViT's position embeddings) fall back to ``torch.func.vmap(grad)``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, grad, vmap

from .base import TaskData, trainable
from .unlabeled import DataImportance

logger = logging.getLogger(__name__)

# A layer call as the fast rules see it: (its input, the gradient of sum_n ||F(x_n)||^2 with
# respect to its output). Dimension 0 of both is the sample.
Call = tuple[torch.Tensor, torch.Tensor]
# Per-sample gradients are materialised at most this many elements at a time (4 MB in float32: a
# chunk stays in cache between the matmul that writes it and the |.| and sum that read it).
_CHUNK_ELEMENTS = 1 << 20


def _abs_sum(per_sample: Callable[[slice], dict[str, torch.Tensor]], batch: int, elements: int) -> dict[str, torch.Tensor]:
    """sum_n |per-sample gradient|, materialising ``per_sample(samples)`` (name -> fresh (b, *shape)
    tensors, overwritten here) in chunks of about ``_CHUNK_ELEMENTS`` (``elements`` per sample)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, elements))
    total: dict[str, torch.Tensor] = {}
    for start in range(0, batch, step):
        for name, g in per_sample(slice(start, start + step)).items():
            a = g.abs_().sum(0)
            total[name] = total[name].add_(a) if name in total else a
    return total


def _linear(m: nn.Linear, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    if len(calls) == 1 and calls[0][0].dim() == 2:
        # One call with one row per sample: sum_n |g_ni x_nj| = (|G|^T |X|)_ij, a single matmul.
        x, g = calls[0]  # (B, in), (B, out)
        g = g.abs()
        return {"weight": g.T @ x.abs(), "bias": g.sum(0)}

    def per_sample(s: slice) -> dict[str, torch.Tensor]:
        w = b = 0
        for x, g in calls:  # (B, ..., in), (B, ..., out): a sample's gradient sums over its rows
            g = g[s].reshape(g[s].shape[0], -1, m.out_features)  # (b, T, out)
            w = w + g.transpose(1, 2) @ x[s].reshape(g.shape[0], -1, m.in_features)  # (b, out, in)
            b = b + g.sum(1)
        return {"weight": w, "bias": b}

    return _abs_sum(per_sample, batch, m.weight.numel())


def _conv2d(m: nn.Conv2d, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    # Per sample, the weight gradient is G_n (C_out, L) @ P_n (L, kh*kw*C_in) over the L output
    # positions, P_n the input patches (im2col). Patches are cut from a channels-last copy of the
    # input, so every copied run is kw*C_in contiguous values (F.unfold gathers single pixels and is
    # several times slower on CPU), and samples go through in chunks that stay in cache.
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    c_out, c_in, groups = m.out_channels, m.in_channels, m.groups
    og, cg = c_out // groups, c_in // groups
    h, w = calls[0][1].shape[2:]
    inputs = [F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous() for x, _ in calls]  # (B, Hp, Wp, C_in)
    grads = [g.reshape(batch, c_out, -1) for _, g in calls]  # (B, C_out, L)

    def per_sample(s: slice) -> dict[str, torch.Tensor]:
        out = []
        for k in range(groups):
            wk = 0
            for xp, g in zip(inputs, grads):
                xp = xp[s, :, :, k * cg : (k + 1) * cg]
                b, sb, sy, sx, sc = xp.shape[0], *xp.stride()
                patches = xp.as_strided((b, h, w, kh, kw, cg), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc))
                wk = wk + g[s, k * og : (k + 1) * og] @ patches.reshape(b, h * w, kh * kw * cg)  # (b, C_out/G, kh*kw*C_in/G)
            out.append(wk)
        return {"weight": torch.cat(out, 1) if groups > 1 else out[0], "bias": sum(g[s].sum(2) for g in grads)}

    total = _abs_sum(per_sample, batch, c_out * kh * kw * cg + h * w * kh * kw * c_in)
    total["weight"] = total["weight"].view(c_out, kh, kw, cg).permute(0, 3, 1, 2)  # back to (C_out, C_in/G, kh, kw)
    return total


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    # Eval mode: y = x_hat * weight + bias with x_hat from the running statistics (fixed per channel).
    w = b = 0
    for x, g in calls:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x_hat = (x - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)
        w = w + (g * x_hat).reshape(batch, m.num_features, -1).sum(2)  # (B, C)
        b = b + g.reshape(batch, m.num_features, -1).sum(2)
    return {"weight": w.abs().sum(0), "bias": b.abs().sum(0)}


def _layer_norm(m: nn.LayerNorm, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    shape = tuple(m.normalized_shape)
    w = b = 0
    for x, g in calls:  # (B, ..., *shape)
        x_hat = F.layer_norm(x, shape, eps=m.eps)
        w = w + (g * x_hat).reshape(batch, -1, *shape).sum(1)  # (B, *shape)
        b = b + g.reshape(batch, -1, *shape).sum(1)
    return {"weight": w.abs().sum(0), "bias": b.abs().sum(0)}


def _embedding(m: nn.Embedding, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    # A sample's gradient of row r is the sum of g over the positions where it uses token r; group
    # the (sample, token) pairs instead of materialising a (B, V, D) tensor.
    vocab, dim = m.weight.shape
    keys, rows = [], []
    for idx, g in calls:  # (B, ...) token ids, (B, ..., D)
        sample = torch.arange(batch, device=idx.device).view(-1, *(1,) * (idx.dim() - 1))
        keys.append((sample * vocab + idx.long()).reshape(-1))
        rows.append(g.reshape(-1, dim))
    pairs, where = torch.unique(torch.cat(keys), return_inverse=True)  # (U,), (B*L,)
    per_pair = torch.zeros(len(pairs), dim, dtype=m.weight.dtype, device=m.weight.device)
    per_pair.index_add_(0, where, torch.cat(rows))  # (U, D): one sample's gradient of one row
    token = pairs % vocab
    if m.padding_idx is not None:  # the padding row never gets a gradient
        per_pair[token == m.padding_idx] = 0
    return {"weight": torch.zeros_like(m.weight).index_add_(0, token, per_pair.abs())}


def _rule(m: nn.Module) -> Callable[[nn.Module, list[Call], int], dict[str, torch.Tensor]] | None:
    """The fast per-sample rule for a layer, or None (exact types only: a subclass may compute otherwise)."""
    kind = type(m)
    if kind is nn.Linear:
        return _linear
    if kind is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return _conv2d
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and m.running_mean is not None:
        return _batch_norm
    if kind is nn.LayerNorm:
        return _layer_norm
    if kind is nn.Embedding and m.max_norm is None and not m.scale_grad_by_freq:
        return _embedding
    return None


def fast_plan(tower: nn.Module, names: set[str]) -> tuple[dict[str, nn.Module], list[str]]:
    """Which trainable parameters (``names``, relative to ``tower``) get a fast per-sample rule.

    Returns the covered layers (module path -> module) and the names left for the vmap fallback.
    A parameter shared by several layers is left to the fallback (its per-sample gradients from
    each use must be summed before |.|). A batch-norm layer that normalises with batch statistics
    even in eval mode couples the samples of a batch; then the whole tower falls back.
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in tower.modules()):
        return {}, sorted(names)
    uses: dict[int, int] = {}
    for _, p in tower.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    covered: dict[str, nn.Module] = {}
    for path, m in tower.named_modules():
        own = [(f"{path}.{n}" if path else n, p) for n, p in m.named_parameters(recurse=False)]
        if _rule(m) is not None and any(n in names for n, _ in own) and all(uses[id(p)] == 1 for _, p in own):
            covered[path] = m
    done = {f"{path}.{n}" if path else n for path, m in covered.items() for n, _ in m.named_parameters(recurse=False)}
    return covered, sorted(names - done)


def _tower_importance_exact(
    tower: nn.Module, prefix: str, inputs: tuple[torch.Tensor, ...], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Sum over the batch of per-sample |d ||tower(x_n)||^2 / d theta|: one batched backward pass
    for the layers with a fast rule, vmap over samples for the other parameters."""
    local = {n[len(prefix) :]: p for n, p in params.items() if n.startswith(prefix)}
    covered, rest = fast_plan(tower, set(local))
    batch = inputs[0].shape[0]
    out: dict[str, torch.Tensor] = {}
    if covered:
        calls: dict[str, list[tuple[torch.Tensor, GradientEdge]]] = {path: [] for path in covered}

        def record(path: str) -> Callable:
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                if output.requires_grad:
                    # The edge into the layer's own backward node, taken now: an in-place op further
                    # on (``x += residual``, ReLU(inplace=True)) gives the output tensor a new node,
                    # but the gradient we need is the one with respect to the layer's output.
                    calls[path].append((args[0].detach(), get_gradient_edge(output)))

            return hook

        handles = [m.register_forward_hook(record(path)) for path, m in covered.items()]
        try:
            with torch.enable_grad():
                loss = tower(*inputs).pow(2).sum()
        finally:
            for h in handles:
                h.remove()
        wanted = [(path, i) for path, cs in calls.items() for i in range(len(cs))]
        # Gradients with respect to the layer outputs only: autograd skips the batch-summed
        # parameter gradients, which the rules below replace with per-sample ones.
        grads = torch.autograd.grad(loss, [calls[p][i][1] for p, i in wanted], allow_unused=True) if wanted else ()
        got: dict[str, list[Call]] = {path: [] for path in covered}
        for (path, i), g in zip(wanted, grads):
            if g is not None:  # None: this output does not reach F (zero contribution)
                got[path].append((calls[path][i][0], g))
        del calls, loss
        for path, cs in got.items():
            if cs:
                m = covered[path]
                for attr, imp in _rule(m)(m, cs, batch).items():
                    name = f"{path}.{attr}" if path else attr
                    if name in local:
                        out[prefix + name] = imp
    if rest:
        logger.debug("MAS importance: vmap fallback for %s", ", ".join(prefix + n for n in rest))
        out.update(_tower_importance_vmap(tower, prefix, inputs, {prefix + n: local[n] for n in rest}))
    return {prefix + n: out.get(prefix + n, torch.zeros_like(p)) for n, p in local.items()}


def _tower_importance_vmap(
    tower: nn.Module, prefix: str, inputs: tuple[torch.Tensor, ...], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Sum over the batch of per-sample |d ||tower(x_n)||^2 / d theta| for ``params`` (vmap over samples)."""
    local = {n[len(prefix) :]: p.detach() for n, p in params.items() if n.startswith(prefix)}
    fixed = {n: p.detach() for n, p in tower.named_parameters() if n not in local}
    buffers = {n: b for n, b in tower.named_buffers()}

    def sq_norm(p: dict[str, torch.Tensor], *sample: torch.Tensor) -> torch.Tensor:
        out = functional_call(tower, (p, fixed, buffers), tuple(s.unsqueeze(0) for s in sample))
        return out.pow(2).sum()

    per_sample = vmap(grad(sq_norm), in_dims=(None,) + (0,) * len(inputs))(local, *inputs)  # name -> (B, *shape)
    return {prefix + n: g.abs().sum(0) for n, g in per_sample.items()}


def _tower_importance_batch(
    tower: nn.Module, prefix: str, inputs: tuple[torch.Tensor, ...], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """|d sum_n ||tower(x_n)||^2 / d theta|: a cheaper lower bound of the per-sample sum."""
    local = {n: p for n, p in params.items() if n.startswith(prefix)}
    grads = torch.autograd.grad(tower(*inputs).pow(2).sum(), list(local.values()), allow_unused=True)
    return {n: (g.abs() if g is not None else torch.zeros_like(p)) for (n, p), g in zip(local.items(), grads)}


def mas_importance(model: nn.Module, task: TaskData, batch_size: int = 64, exact: bool = True) -> dict[str, torch.Tensor]:
    """MAS importance of every trainable parameter of a FactModel over ``task``'s samples.

    Args:
        model: a :class:`factlearn.model.FactModel`.
        task: the samples (images and their facts), iterated once in fixed order.
        batch_size: samples per vmap call (memory grows as batch_size x parameters).
        exact: per-sample absolute gradients (the method); False = |gradient of the batch sum|.
    Returns:
        name -> importance tensor shaped like the parameter, on the parameter's device.
    """
    params = trainable(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    fn = _tower_importance_exact if exact else _tower_importance_batch
    was_training = model.training
    model.eval()  # deterministic function: dropout off, batch-norm running statistics
    n_samples = 0
    try:
        for pixels, tokens, mask in task.batches(batch_size):
            n_samples += pixels.shape[0]
            for part in (
                fn(model.image_tower, "image_tower.", (pixels,), params),
                fn(model.language_tower, "language_tower.", (tokens, mask), params),
            ):
                for n, g in part.items():
                    total[n] += g
    finally:
        model.train(was_training)
    if n_samples == 0:
        raise ValueError(f"task {task.name} has no samples to compute importance from")
    return {n: t / n_samples for n, t in total.items()}


class MAS(DataImportance):
    """Global MAS: importance from the embedding outputs of both towers, summed across tasks."""

    name = "mas"

    def tower_importance(self, model: nn.Module, data: TaskData, towers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        # mas_importance covers both towers; with one tower asked for (importance_data), the other's
        # part is computed and dropped.
        omega = mas_importance(model, data, self.cfg.importance_batch_size, exact=self.cfg.importance == "exact")
        omega = {n: o for n, o in omega.items() if n.split(".", 1)[0] in towers}
        logger.info("MAS importance (%s) on %s: mean %.3g, max %.3g", ", ".join(towers), data.name,
                    torch.stack([o.mean() for o in omega.values()]).mean(), max(o.max() for o in omega.values()))
        return omega
