"""Contrastive building blocks for MCLD: similarity embeddings and a blocked InfoNCE.

A similarity ``sim(u, v)`` is computed as the dot product of two *embeddings* ``e(u) . e(v)``,
so each side is embedded once and a whole similarity matrix is one matrix product.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

SIMILARITIES = ("pearson", "cosine", "dot")
# About 8 MiB of logits per block: cache-friendly, yet each block is a large matrix product.
CATEGORY_BLOCK_BYTES = 8 * 2**20
MIN_CATEGORY_BLOCK_ROWS = 64
# A vector whose (centred) norm is below this many float epsilons of its scale is treated as
# constant: centring a constant vector leaves rounding noise that must not be normalised up.
DEGENERATE_EPS_FACTOR = 64


def similarity_embedding(
    vectors: Tensor,
    dim: int,
    similarity: str,
    dropped: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Embed the vectors laid out along ``dim`` so that ``sim(u, v) = e(u) . e(v)``.

    * ``pearson``: centre each vector (over its kept entries), then L2-normalise it;
    * ``cosine``: L2-normalise;
    * ``dot``: the vector itself.

    ``dropped`` (bool, like ``vectors``) marks entries removed before the similarity: they are
    left out of the centring and set to 0. ``scale`` multiplies the embedding (``1 / tau``
    folded in for free). Returns the embeddings and a boolean ``nondegenerate`` (``vectors``
    with ``dim`` reduced to size 1): ``False`` for a vector with no direction (zero, or
    constant under ``pearson``), whose embedding is the zero vector with zero gradient.
    """
    kept = None if dropped is None else (~dropped).to(vectors.dtype)
    if similarity == "dot":
        embedding = vectors * scale if kept is None else vectors * (kept * scale)
        return embedding, torch.ones_like(vectors.narrow(dim, 0, 1), dtype=torch.bool)
    return _NormalizedEmbedding.apply(vectors, dim, similarity == "pearson", kept, scale)


class _NormalizedEmbedding(torch.autograd.Function):
    """``e(x) = k c / |c|`` with ``c = (x - mean_kept(x)) * kept`` (or ``x * kept`` uncentred).

    Fused forward and analytic backward: with ``u = c / |c|``,
    ``dL/dc = (k / |c|) (g - u (u . g))`` and the centring gives
    ``dL/dx = (dL/dc - mean_kept(dL/dc)) * kept``. That is a handful of passes over the data
    where autograd would record a dozen elementwise operations.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        vectors: Tensor,
        dim: int,
        centre: bool,
        kept: Tensor | None,
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        embedding = vectors if kept is None else vectors * kept
        if centre:
            embedding = vectors - _kept_mean(embedding, dim, kept)
            if kept is not None:
                embedding.mul_(kept)
        norm = torch.linalg.vector_norm(embedding, dim=dim, keepdim=True)
        raw_norm = torch.linalg.vector_norm(vectors, dim=dim, keepdim=True)
        # Centring a constant vector leaves rounding noise: call a vector degenerate when its
        # (centred) norm is within a few float epsilons of its raw norm.
        tolerance = DEGENERATE_EPS_FACTOR * torch.finfo(vectors.dtype).eps
        nondegenerate = norm > tolerance * raw_norm
        inverse_norm = torch.where(nondegenerate, norm, 1.0).reciprocal_().mul_(nondegenerate)
        inverse_norm.mul_(scale)
        if embedding is vectors:
            embedding = vectors * inverse_norm
        else:
            embedding.mul_(inverse_norm)
        ctx.dim, ctx.centre, ctx.scale = dim, centre, scale
        ctx.save_for_backward(embedding, inverse_norm, kept)
        ctx.mark_non_differentiable(nondegenerate)
        return embedding, nondegenerate

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_embedding: Tensor, _grad_nondegenerate: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        embedding, inverse_norm, kept = ctx.saved_tensors
        dim = ctx.dim
        # e = k u, so (k / |c|) u (u . g) = (inverse_norm (e . g) / k^2) e.
        projection = torch.linalg.vecdot(embedding, grad_embedding, dim=dim).unsqueeze(dim)
        grad = grad_embedding * inverse_norm
        grad.addcmul_(embedding, inverse_norm * projection / ctx.scale**2, value=-1)
        if kept is not None:
            grad.mul_(kept)
        if ctx.centre:
            grad -= _kept_mean(grad, dim, kept)
            if kept is not None:
                grad.mul_(kept)
        return grad, None, None, None, None


def _kept_mean(masked_vectors: Tensor, dim: int, kept: Tensor | None) -> Tensor:
    """Mean over the kept entries of vectors whose dropped entries are already 0."""
    if kept is None:
        return masked_vectors.mean(dim=dim, keepdim=True)
    return masked_vectors.sum(dim=dim, keepdim=True) / kept.sum(dim=dim, keepdim=True).clamp_min(1)


def category_block_size(num_classes: int, element_size: int) -> int:
    """Rows of the ``[C, C]`` category matrix per block: about 8 MiB of logits a block."""
    rows = max(MIN_CATEGORY_BLOCK_ROWS, CATEGORY_BLOCK_BYTES // (num_classes * element_size))
    return min(num_classes, rows)


class _BlockedInfoNCE(torch.autograd.Function):
    """``sum_c w_c (log sum_d exp(a_c . b_d + bias_d) - (a_c . b_c + bias_c))``.

    The gradient with respect to the anchors is computed block by block during the forward
    pass and kept (``[N, C]``), so neither pass holds more than one ``[block, C]`` logits
    block and the matrix is multiplied only twice. The candidates are constants.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        anchors: Tensor,
        candidates: Tensor,
        anchor_weights: Tensor,
        candidate_bias: Tensor | None,
        block_size: int,
    ) -> Tensor:
        num_vectors = anchors.shape[1]
        needs_gradient = ctx.needs_input_grad[0]
        per_anchor = torch.empty(num_vectors, dtype=anchors.dtype, device=anchors.device)
        anchor_gradient = torch.empty_like(anchors) if needs_gradient else None
        for start in range(0, num_vectors, block_size):
            stop = min(start + block_size, num_vectors)
            logits = anchors[:, start:stop].T @ candidates
            if candidate_bias is not None:
                logits += candidate_bias
            log_probs = logits.log_softmax(dim=1)
            positive_log_probs = log_probs.diagonal(offset=start)
            # Anchors of weight 0 may have a -inf positive; they are dropped, never multiplied.
            per_anchor[start:stop] = torch.where(
                anchor_weights[start:stop] != 0, -positive_log_probs, 0.0
            )
            if needs_gradient:
                probs = log_probs.exp_()
                block_weights = anchor_weights[start:stop]
                # d/da_c = w_c (sum_d p_cd b_d - b_c)
                anchor_gradient[:, start:stop] = (
                    candidates @ probs.T - candidates[:, start:stop]
                ) * (block_weights)
        ctx.save_for_backward(anchor_gradient)
        return (anchor_weights * per_anchor).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (anchor_gradient,) = ctx.saved_tensors
        return grad_output * anchor_gradient, None, None, None, None


def blocked_info_nce(
    anchors: Tensor,
    candidates: Tensor,
    anchor_weights: Tensor,
    candidate_bias: Tensor | None = None,
    block_size: int | None = None,
) -> Tensor:
    """InfoNCE of column ``c`` of ``anchors`` against every column of ``candidates``.

    ``L = sum_c w_c [ log sum_d exp(a_c . b_d + bias_d) - (a_c . b_c + bias_c) ]`` with
    ``anchors, candidates : [N, V]`` (vectors as columns), the positive of anchor ``c`` being
    candidate ``c``; ``candidate_bias`` (``[V]``, 0 or ``-inf``) removes candidates. The
    ``[V, V]`` logits are built ``block_size`` rows at a time (default: about 8 MiB a block),
    so memory is ``O(block_size * V)``. Gradients reach ``anchors`` only.
    """
    if block_size is None:
        block_size = category_block_size(anchors.shape[1], anchors.element_size())
    return _BlockedInfoNCE.apply(
        anchors, candidates.detach(), anchor_weights.detach(), candidate_bias, block_size
    )
