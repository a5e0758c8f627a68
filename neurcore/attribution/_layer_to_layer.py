"""NeurFlow's many-neurons-at-once integrated gradients between two layers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import InputError
from ._fused import ig_accumulate
from ._layer_function import layer_function, restrict_output
from ._quadrature import CHUNK_BYTES, quadrature

if TYPE_CHECKING:
    import torch

__all__ = ["LayerToLayerIntegratedGradients"]


def _channel_means(y):
    return y.mean(dim=tuple(range(2, y.dim()))) if y.dim() > 2 else y


def _checked_pairs(x, targets, examples):
    """(targets int64 [T], examples int64 [T, k]) after checking them against ``x`` [N, C, ...]."""
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise InputError("lower_activations must be a float tensor [N, C, ...]")
    targets = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
    examples = torch.as_tensor(examples, dtype=torch.int64)
    if examples.dim() != 2 or examples.shape[0] != len(targets):
        raise InputError(f"examples must be [T, k] with T = {len(targets)} targets, "
                         f"got {tuple(examples.shape)}")
    if examples.numel() and (examples.min() < 0 or examples.max() >= x.shape[0]):
        raise InputError(f"examples index rows 0..{x.shape[0] - 1} of lower_activations, got "
                         f"{int(examples.min())}..{int(examples.max())}")
    return targets, examples


class LayerToLayerIntegratedGradients:
    """NeurFlow's importance of the channels of a lower layer for channels of an upper layer.

    NeurFlow ("NeurFlow: Interpreting Neural Networks through Neuron Groups and Functional
    Interactions", ICLR 2025) ranks the lower neurons feeding an upper neuron by integrated gradients
    (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017). For each target
    (upper channel t, its spatial mean) and each of its examples u (rows of the lower layer's
    activations), the integrated gradients of t with respect to the lower activation x_u from a zero
    (or given) baseline, reduced over space in the kernel:

        score[t, j, c] = mean_p (x_u - b_u)[c, p] * sum_s w_s d t / d x[c, p] (b_u + alpha_s (x_u - b_u))

    for u = examples[t, j]. Returned as float [T, k, C_lower]; NeurFlow takes |.| and averages over
    the k examples. Equal to Captum's ``IntegratedGradients(net).attribute(x[examples[t]], target=t)``
    (with net's output averaged over space) averaged over space (tested). All (target, example) pairs
    are batched together; each chunk of pairs computes only its own targets' channels when the upper
    end of the layer function allows it (a last convolution or linear layer, or a ResNet block), and
    its size is bounded by ``chunk_bytes``. The default (None) bounds a chunk's interpolated rows by
    ``AUTO_CHUNK_FRACTION`` of one target's k x n_steps (what one per-neuron Captum call holds at
    once) and by ``CHUNK_BYTES``, so peak memory stays a small fraction of that call's.

    Args:
        model: the ``torch.nn.Module`` holding both layers (unused when ``net`` is given).
        lower: dotted name of the lower layer, whose output is attributed.
        upper: dotted name of the upper layer, whose channels are the targets; None: the model's
            output.
        net: the function from the lower layer's output to the upper one's, when already cut out
            (:func:`~neurcore.attribution.layer_function`).
        backend: the kernel, see :func:`~neurcore.attribution.ig_accumulate`.
        chunk_bytes: bound on one chunk's interpolated rows, in bytes; None: see above.
        restrict: compute only each chunk's target channels where the net allows it
            (:func:`~neurcore.attribution.restrict_output`); the scores are the same either way.
    """

    #: With ``chunk_bytes=None``: a chunk holds at most this fraction of one target's k x n_steps rows.
    AUTO_CHUNK_FRACTION = 1 / 8

    def __init__(self, model: torch.nn.Module | None, lower: str, upper: str | None = None, *,
                 net: torch.nn.Module | None = None, backend: str | None = None,
                 chunk_bytes: int | None = None, restrict: bool = True):
        self.net = net if net is not None else layer_function(model, lower, upper)
        self.backend = backend
        self.chunk_bytes = None if chunk_bytes is None else int(chunk_bytes)
        self.restrict = restrict

    def attribute(self, lower_activations: torch.Tensor, targets: Sequence[int] | np.ndarray | torch.Tensor,
                  examples: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
                  baselines: float | np.ndarray | torch.Tensor | None = None, n_steps: int = 50,
                  method: str = "gausslegendre") -> torch.Tensor:
        """Integrated gradients of ``targets`` (upper channels) w.r.t. the lower layer, per example.

        Args:
            lower_activations: float [N, C, ...] (or [N, C]), the lower layer's outputs on N inputs
                (e.g. crops).
            targets: T upper channels.
            examples: int [T, k], the rows of ``lower_activations`` each target is explained on.
            baselines: the reference point of the lower activations, broadcastable to [C, ...];
                None: zeros.
            n_steps, method: the quadrature (see :func:`~neurcore.attribution.quadrature`).

        Returns:
            ``score`` [T, k, C] in the activations' dtype and device: for target t and its j-th
            example u, the spatial mean over positions p of channel c's integrated gradients of
            t's spatial mean (signed; NeurFlow takes the absolute value).
        """
        import torch

        x = lower_activations
        targets, examples = _checked_pairs(x, targets, examples)
        alphas, weights = quadrature(method, n_steps)
        n_t, k = examples.shape
        c = x.shape[1]
        spatial = math.prod(x.shape[2:]) if x.dim() > 2 else 1
        out = torch.zeros((n_t * k, c), dtype=x.dtype, device=x.device)
        if out.numel() == 0:
            return out.reshape(n_t, k, c)
        base = None if baselines is None else torch.broadcast_to(
            torch.as_tensor(baselines, dtype=x.dtype, device=x.device), x.shape[1:])
        pair_target = targets.repeat_interleave(k)
        pair_row = examples.reshape(-1)
        pairs_per_chunk, steps_per_chunk = self._chunk_sizes(len(pair_row), k, n_steps,
                                                             c * spatial * x.element_size())
        w_all = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        restricted = {}  # target channels -> the net computing only them, shared by the chunks
        for p0 in range(0, len(pair_row), pairs_per_chunk):
            sel = slice(p0, p0 + pairs_per_chunk)
            net, column = self._net_for(pair_target[sel], restricted)
            pts = x[pair_row[sel].to(x.device)]
            b = torch.zeros_like(pts) if base is None else base.expand_as(pts)
            self._accumulate_chunk(net, pts, b, column.to(x.device), alphas, w_all, steps_per_chunk,
                                   out[p0 : p0 + len(pts)])
        return (out / spatial).reshape(n_t, k, c)

    def _chunk_sizes(self, n_pairs: int, k: int, n_steps: int, row_bytes: int) -> tuple[int, int]:
        """(pairs per chunk, steps per chunk): a chunk's interpolated rows <= chunk_bytes / row_bytes."""
        if self.chunk_bytes is None:
            rows = max(1, min(CHUNK_BYTES // max(1, row_bytes), int(k * n_steps * self.AUTO_CHUNK_FRACTION)))
        else:
            rows = max(1, self.chunk_bytes // max(1, row_bytes))
        pairs_per_chunk = max(1, min(n_pairs, rows // n_steps if rows >= n_steps else 1))
        steps_per_chunk = max(1, min(n_steps, rows // pairs_per_chunk))
        return pairs_per_chunk, steps_per_chunk

    def _net_for(self, pair_targets, restricted: dict) -> tuple[Any, Any]:
        """(net, column): the net for a chunk's targets, restricted to them where it can be (cached in
        ``restricted``), and the output column of each pair's target in that net's output."""
        import torch

        chunk_targets, column = torch.unique(pair_targets, return_inverse=True)
        key = tuple(chunk_targets.tolist())
        if self.restrict and key not in restricted:
            restricted[key] = restrict_output(self.net, list(key))
        net = restricted.get(key)
        if net is None:
            net, column = self.net, pair_targets
        return net, column

    def _accumulate_chunk(self, net, points, baseline, column, alphas, weights, steps_per_chunk: int,
                          out_rows) -> None:
        """Add the spatially summed integrated gradients of one chunk of m pairs to ``out_rows`` [m, C]:
        pair i's target is output column ``column[i]`` of ``net`` on ``points[i]`` [C, ...]."""
        import torch

        delta = (points - baseline).contiguous()
        m, c = points.shape[:2]
        spatial = math.prod(points.shape[2:]) if points.dim() > 2 else 1
        rows = torch.arange(m, device=points.device)
        for s0 in range(0, len(alphas), steps_per_chunk):
            a = alphas[s0 : s0 + steps_per_chunk]
            scaled = torch.cat([baseline + float(al) * delta for al in a]).requires_grad_()
            with torch.enable_grad():
                y = _channel_means(net(scaled))
                y = y.reshape(len(a), m, -1)[:, rows, column]
                (g,) = torch.autograd.grad(y.sum(), scaled)
            ig_accumulate(g.reshape(1, len(a), m, c, spatial), weights[s0 : s0 + len(a)].contiguous(),
                          delta.reshape(m, c, spatial), out_rows.view(1, m, c), reduce_spatial=True,
                          backend=self.backend)
