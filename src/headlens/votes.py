"""The HRV maths as plain functions on tensors (no pipelines, no hooks)."""

from __future__ import annotations

import torch


def concept_scores(
    query: torch.Tensor, keys: torch.Tensor, token_weights: torch.Tensor, scale: float,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-head concept scores for one layer call.

    query: ``[B, heads, pixels, d]`` image queries; keys: ``[B, heads, M, d]`` (or ``[heads, M, d]``)
    keys of the chosen concept-word tokens; token_weights: ``[B, M, C]`` (or ``[M, C]``) averaging
    weights (``1/n_tokens`` of a concept's tokens, 0 elsewhere — a start token gets a zero row);
    token_mask: ``[B, M]`` True for real tokens (padding excluded from the softmax).
    Returns ``[B, heads, C]``: softmax over the M tokens, mean over pixels, mean per concept.
    """
    logits = torch.matmul(query, keys.transpose(-1, -2)).float() * scale  # [B, h, P, M]
    if token_mask is not None:
        logits = logits.masked_fill(~token_mask[:, None, None, :], float("-inf"))
    probs = logits.softmax(dim=-1).mean(dim=2)  # [B, h, M]
    weights = token_weights.to(probs.dtype)
    if weights.ndim == 2:
        return probs @ weights
    return torch.einsum("bhm,bmc->bhc", probs, weights)


def votes_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """One vote per (image, head) for its highest-scoring concept: ``[B, h, C]`` → counts ``[h, C]``."""
    winners = scores.argmax(dim=-1)  # [B, h]
    counts = torch.zeros(scores.shape[1], scores.shape[2], dtype=torch.int64, device=scores.device)
    counts.scatter_add_(1, winners.T, torch.ones_like(winners.T, dtype=torch.int64))
    return counts


def hrv_from_votes(votes: torch.Tensor) -> torch.Tensor:
    """Head Relevance Vectors ``[C, H]`` from summed votes ``[H, C]`` (spec §4, each row mean 1).

    Per head, votes become a distribution over concepts; per concept, that column is
    L1-normalised over heads and scaled by H. A concept that never won a vote gets all ones
    (no information), so steering with it is a no-op.
    """
    v = votes.to(torch.float64)
    num_heads = v.shape[0]
    per_head = v.sum(dim=1, keepdim=True)
    p = torch.where(per_head > 0, v / per_head.clamp_min(1e-30), torch.zeros_like(v))  # [H, C]
    per_concept = p.sum(dim=0, keepdim=True)  # [1, C]
    hrv = torch.where(per_concept > 0, num_heads * p / per_concept.clamp_min(1e-30), torch.ones_like(p))
    return hrv.T.to(torch.float32).contiguous()


def hrv_per_timestep(votes: torch.Tensor) -> torch.Tensor:
    """Per-timestep HRVs ``[T, C, H]`` from votes ``[T, H, C]``."""
    return torch.stack([hrv_from_votes(v) for v in votes]) if len(votes) else votes.new_zeros((0,)).float()


def adjust_factors(desired: torch.Tensor, undesired: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Concept-adjusting factors per head: ``2·min(HRV_d, b) − min(HRV_u, b)`` (spec §5)."""
    if clamp is not None:
        desired, undesired = desired.clamp(max=clamp), undesired.clamp(max=clamp)
    return 2 * desired - undesired


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    ra, rb = _rank(a.double()), _rank(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


def _rank(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    # average ties
    uniq, inv = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inv, torch.ones_like(x))
    return (sums / counts)[inv]
