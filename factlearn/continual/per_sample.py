"""Exact per-sample absolute gradients at batch speed: the engine behind MAS importance.

For a module F (e.g. one tower of a FactModel, in eval mode) and a batch x_1..x_B,
:func:`per_sample_abs_grad_sum` returns for every trainable parameter theta

    sum_n | d s_n(F(x_n)) / d theta |

with the absolute value taken per sample before the sum. By default s_n = ||.||_2^2, which is
what MAS Eq. 2 with the squared L2 norm of Eq. 4 needs (|gradient of the batch sum| is only a
lower bound); an ``objective`` gives another per-sample scalar (MAS with
``method.importance_output: normalized`` uses v_n . F_hat(x_n)). The engine knows nothing of
tasks or methods: :mod:`factlearn.continual.mas` averages it over a task's samples.

How the exact value is computed at batch speed: in eval mode the samples of a batch do not
interact, so one backward pass of ``sum_n s_n(F(x_n))`` gives, at the output of every layer,
each sample's own gradient ``g_n``. A layer's per-sample parameter gradient follows from its
input ``x_n`` and ``g_n`` alone (Linear: ``g_n x_n^T``; Conv2d: the same on unfolded patches;
BatchNorm/LayerNorm: ``g_n * x_hat_n``; Embedding: ``g_n`` added to the rows of the sample's
tokens), so |.| can be taken per sample without a per-sample backward pass. Parameters of any
other kind of layer (e.g. ViT's position embeddings) fall back to ``torch.func.vmap(grad)``.
The tests check every rule against a batch-size-1 autograd loop.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, grad, vmap
from torch.profiler import record_function

logger = logging.getLogger(__name__)

# A layer call as the fast rules see it: (its input, the gradient of sum_n s_n(F(x_n)) with
# respect to its output). Dimension 0 of both is the sample.
Call = tuple[torch.Tensor, torch.Tensor]
# objective(output (B, ...), *aux (B, ...)) -> sum over the batch of per-sample scalars s_n, where
# s_n reads only row n of the output and of each aux tensor (the samples must not interact).
Objective = Callable[..., torch.Tensor]
# Per-sample gradients are materialised at most this many elements at a time. On a CPU 4 MB of
# float32, so that a chunk stays in cache between the matmul that writes it and the |.| and sum
# that read it; on a GPU 256 MB, so that kernels are few and large.
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS_GPU = 1 << 26
# Profiler labels (torch.profiler.record_function; a few microseconds each when no profiler runs):
# scripts/bench.py reads them to split the fast path's time into the shared pass and each kind of
# rule, so that where the time goes is measured by a command rather than told.
PASS_LABEL = "per_sample:forward_backward"
RULE_LABEL = "per_sample:rule:"  # + the layer's class name
VMAP_LABEL = "per_sample:vmap"


def _abs_sum(
    per_sample: Callable[[slice], dict[str, torch.Tensor]], batch: int, elements: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """sum_n |per-sample gradient|, materialising ``per_sample(samples)`` (name -> fresh (b, *shape)
    tensors, overwritten here) in chunks of about ``_CHUNK_ELEMENTS`` (``elements`` per sample)."""
    budget = _CHUNK_ELEMENTS if device.type == "cpu" else _CHUNK_ELEMENTS_GPU
    step = max(1, budget // max(1, elements))
    total: dict[str, torch.Tensor] = {}
    for start in range(0, batch, step):
        for name, g in per_sample(slice(start, start + step)).items():
            a = g.abs_().sum(0)  # (in place: linalg.vector_norm(g, 1, dim=0) measured ~4x slower on CPU)
            total[name] = total[name].add_(a) if name in total else a
    return total


def _linear(m: nn.Linear, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    if len(calls) == 1 and calls[0][0].dim() == 2:
        # One call with one row per sample: sum_n |g_ni x_nj| = (|G|^T |X|)_ij, a single matmul.
        x, g = calls[0]  # (B, in), (B, out)
        g = g.abs()
        return {"weight": g.T @ x.abs(), "bias": g.sum(0)}

    def per_sample(s: slice) -> dict[str, torch.Tensor]:
        w = b = None
        for x, g in calls:  # (B, ..., in), (B, ..., out): a sample's gradient sums over its rows
            g = g[s].reshape(g[s].shape[0], -1, m.out_features)  # (b, T, out)
            wc = g.transpose(1, 2) @ x[s].reshape(g.shape[0], -1, m.in_features)  # (b, out, in)
            w, b = (wc, g.sum(1)) if w is None else (w + wc, b + g.sum(1))
        return {"weight": w, "bias": b}

    return _abs_sum(per_sample, batch, m.weight.numel(), m.weight.device)


def _conv2d(m: nn.Conv2d, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    # Per sample, the weight gradient is G_n (C_out, L) @ P_n (L, kh*kw*C_in) over the L output
    # positions, P_n the input patches (im2col). Patches are cut from a channels-last copy of the
    # input, so every copied run is kw*C_in contiguous values (F.unfold gathers single pixels and is
    # several times slower on CPU), and samples go through in chunks that stay in cache.
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    c_out, c_in, groups = m.out_channels, m.in_channels, m.groups
    og, cg = c_out // groups, c_in // groups
    h, w = calls[0][1].shape[2:]
    # Channels-last views cost nothing when the module runs channels-last (as _covered_abs_grad_sum
    # makes it); otherwise one copy per tensor.
    # Padded in channels-last order: one copy (none without padding) instead of F.pad's NCHW copy
    # and a second one to channels-last.
    inputs = [_pad_hw(x.permute(0, 2, 3, 1), ph, pw) for x, _ in calls]  # (B, Hp, Wp, C_in)
    grads = [g.permute(0, 2, 3, 1).reshape(batch, h * w, c_out) for _, g in calls]  # (B, L, C_out)

    def per_sample(s: slice) -> dict[str, torch.Tensor]:
        out = []
        for k in range(groups):
            wk = None
            for xp, g in zip(inputs, grads):
                xp = xp[s, :, :, k * cg : (k + 1) * cg]
                b, sb, sy, sx, sc = xp.shape[0], *xp.stride()
                patches = xp.as_strided((b, h, w, kh, kw, cg), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc))
                gk = g[s, :, k * og : (k + 1) * og].transpose(1, 2)  # (b, C_out/G, L)
                wk_call = gk @ patches.reshape(b, h * w, kh * kw * cg)  # (b, C_out/G, kh*kw*C_in/G)
                wk = wk_call if wk is None else wk + wk_call
            out.append(wk)
        return {"weight": torch.cat(out, 1) if groups > 1 else out[0], "bias": sum(g[s].sum(1) for g in grads)}

    total = _abs_sum(per_sample, batch, c_out * kh * kw * cg + h * w * kh * kw * c_in, m.weight.device)
    total["weight"] = total["weight"].view(c_out, kh, kw, cg).permute(0, 3, 1, 2)  # back to (C_out, C_in/G, kh, kw)
    return total


def _pad_hw(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, H, W, C) zero-padded to (B, H + 2ph, W + 2pw, C), contiguous."""
    if ph == 0 and pw == 0:
        return x.contiguous()
    out = x.new_zeros(x.shape[0], x.shape[1] + 2 * ph, x.shape[2] + 2 * pw, x.shape[3])
    out[:, ph : ph + x.shape[1], pw : pw + x.shape[2]] = x
    return out


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    # Eval mode: y = x_hat * weight + bias, x_hat = (x - mean) * r with the running statistics, so a
    # sample's weight gradient sum_pos g * x_hat = r * (sum_pos g * x - mean * sum_pos g).
    r = torch.rsqrt(m.running_var + m.eps)  # (C,)
    w = b = None
    for x, g in calls:  # (B, C, *spatial)
        # Summed over the spatial dimensions in place: flatten(2) would copy a channels-last tensor.
        spatial = tuple(range(2, x.dim()))
        gx = (g * x).sum(spatial) if spatial else g * x  # (B, C)
        gs = g.sum(spatial) if spatial else g
        wn = r * (gx - m.running_mean * gs)
        w, b = (wn, gs) if w is None else (w + wn, b + gs)
    return {"weight": w.abs().sum(0), "bias": b.abs().sum(0)}


def _layer_norm(m: nn.LayerNorm, calls: list[Call], batch: int) -> dict[str, torch.Tensor]:
    shape = tuple(m.normalized_shape)
    w = b = None
    for x, g in calls:  # (B, ..., *shape)
        x_hat = F.layer_norm(x, shape, eps=m.eps)
        wc, bc = (g * x_hat).reshape(batch, -1, *shape).sum(1), g.reshape(batch, -1, *shape).sum(1)  # (B, *shape)
        w, b = (wc, bc) if w is None else (w + wc, b + bc)
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
    (train mode, or no running statistics) couples the samples of a batch; then everything falls back.
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None) for m in tower.modules()):
        return {}, sorted(names)
    uses: dict[int, int] = {}
    for _, p in tower.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    covered: dict[str, nn.Module] = {}
    for path, m in tower.named_modules():
        own = _own_parameters(path, m)
        if _rule(m) is not None and any(n in names for n in own) and all(uses[id(p)] == 1 for p in own.values()):
            covered[path] = m
    done = {n for path, m in covered.items() for n in _own_parameters(path, m)}
    return covered, sorted(names - done)


def _own_parameters(path: str, layer: nn.Module) -> dict[str, nn.Parameter]:
    """A layer's own parameters, named from the top of the module it sits in."""
    return {f"{path}.{n}" if path else n: p for n, p in layer.named_parameters(recurse=False)}


def squared_norm(output: torch.Tensor) -> torch.Tensor:
    """sum_n ||output_n||_2^2: the default objective, the squared L2 norm of MAS Eq. 4 summed over
    the batch (output (B, ...) -> scalar)."""
    return output.pow(2).sum()


def per_sample_abs_grad_sum(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], names: Iterable[str] | None = None,
    objective: Objective = squared_norm, aux: tuple[torch.Tensor, ...] = (),
) -> dict[str, torch.Tensor]:
    """sum_n |d s_n(module(x_n)) / d theta| over a batch, for the trainable parameters ``names``
    (by default s_n = ||.||^2: the per-sample sums of MAS Eq. 2 with Eq. 4).

    One batched forward and backward pass gives every covered layer's per-sample gradients (see the
    module docstring); the parameters :func:`fast_plan` leaves out go through ``vmap(grad)``.
    ``module`` must be in eval mode, with samples along dimension 0 of every input and of every
    covered layer's input and output.

    Args:
        module: e.g. a tower of a FactModel.
        inputs: the batch, passed as ``module(*inputs)``.
        names: parameter names relative to ``module``; default every trainable parameter.
        objective: ``objective(module(*inputs), *aux)`` is sum_n s_n, each s_n reading only row n
            of the output and of every ``aux`` tensor (also called on one sample, with a batch of 1).
        aux: per-sample tensors of the objective (dimension 0 = the sample), e.g. directions.
    Returns:
        name -> sum over the batch of the per-sample absolute gradient, shaped like the parameter.
    """
    params = dict(module.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad] if names is None else list(names)
    covered, rest = fast_plan(module, set(names))
    out: dict[str, torch.Tensor] = {}
    if covered:
        fast, misfits = _covered_abs_grad_sum(module, inputs, covered, objective, aux)
        out.update(fast)
        rest += sorted(n for path in misfits for n in _own_parameters(path, covered[path]) if n in names)
    if rest:
        logger.debug("per-sample gradients by vmap for %s", ", ".join(rest))
        out.update(_vmap_abs_grad_sum(module, inputs, rest, objective, aux))
    return {n: out[n] if n in out else torch.zeros_like(params[n]) for n in names}


def _covered_abs_grad_sum(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], covered: dict[str, nn.Module], objective: Objective,
    aux: tuple[torch.Tensor, ...],
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The covered layers' sums, and the layers that turned out not to see one row per sample."""
    batch = inputs[0].shape[0]
    # Images channels-last: oneDNN/cuDNN convolutions run faster on it (for the whole pass; see
    # docs/performance.md) and the convolution rule then reads inputs and gradients without copies.
    inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
    calls: list[tuple[str, torch.Tensor, GradientEdge]] = []  # (layer path, its input, edge into its backward)
    misfits: set[str] = set()  # layers called on something else than the batch (e.g. samples x tokens folded)

    def record(path: str) -> Callable:
        def hook(layer: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            if x.shape[0] != batch or output.shape[0] != batch:
                misfits.add(path)
            elif output.requires_grad:
                # The edge into the layer's own backward node, taken now: an in-place op further on
                # (``x += residual``, ReLU(inplace=True)) gives the output tensor a new node, but the
                # gradient wanted is the one with respect to the layer's output.
                calls.append((path, x.detach(), get_gradient_edge(output)))  # noqa: F821 (defined above; the del further down confuses ruff)

        return hook

    handles = [m.register_forward_hook(record(path), with_kwargs=True) for path, m in covered.items()]
    with record_function(PASS_LABEL):
        try:
            with torch.enable_grad():
                loss = objective(module(*inputs), *aux)
        finally:
            for h in handles:
                h.remove()
        calls = [c for c in calls if c[0] not in misfits]
        if not calls:
            return {}, misfits
        # Gradients with respect to the layer outputs only: autograd skips the batch-summed parameter
        # gradients, which the rules replace with per-sample ones.
        grads = torch.autograd.grad(loss, [edge for _, _, edge in calls], allow_unused=True)
    per_layer: dict[str, list[Call]] = {}
    for (path, x, _), g in zip(calls, grads):
        if g is not None:  # None: this call's output does not reach the module's output
            per_layer.setdefault(path, []).append((x, g))
    del calls, grads, loss
    out = {}
    for path, layer_calls in per_layer.items():
        layer = covered[path]
        with record_function(RULE_LABEL + type(layer).__name__):
            sums = _rule(layer)(layer, layer_calls, batch)
        for attr, imp in sums.items():
            if getattr(layer, attr) is not None:
                out[f"{path}.{attr}" if path else attr] = imp
    return out, misfits


def _vmap_abs_grad_sum(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], objective: Objective,
                       aux: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The fallback: every sample's gradient of ``names`` at once by ``vmap(grad)``, then |.| and the sum."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    local = {n: params.pop(n) for n in names}
    buffers = dict(module.named_buffers())

    def one_sample(p: dict[str, torch.Tensor], *sample: torch.Tensor) -> torch.Tensor:
        x, a = sample[: len(inputs)], sample[len(inputs) :]
        output = functional_call(module, (p, params, buffers), tuple(s.unsqueeze(0) for s in x))
        return objective(output, *(s.unsqueeze(0) for s in a))

    in_dims = (None,) + (0,) * (len(inputs) + len(aux))
    with record_function(VMAP_LABEL):
        per_sample = vmap(grad(one_sample), in_dims=in_dims)(local, *inputs, *aux)  # name -> (B, *shape)
        return {n: g.abs().sum(0) for n, g in per_sample.items()}
