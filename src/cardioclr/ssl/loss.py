"""NT-Xent, the SimCLR contrastive loss, with gradient-carrying negatives across processes.

Reference: T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020 (SimCLR), eq. (1).

For a global batch of N images seen in two augmented views, the 2N projections are
L2-normalised; anchor k's positive is the other view of the same image and its negatives
are the remaining 2N - 2 projections. With cosine similarity s and temperature t::

    l(k) = -log( exp(s(k, pos(k)) / t) / sum_{j != k} exp(s(k, j) / t) )
    L    = 1/(2N) * sum_k l(k)

which is a cross-entropy over the 2N - 1 other projections with the positive as the class.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["all_gather_with_grad", "gather_rows", "multi_positive_nt_xent", "nt_xent"]

# Logit given to each anchor's similarity with itself so it drops out of the softmax. Finite
# (not -inf) so that no inf - inf can arise; cosine logits are bounded by 1/temperature, so
# exp(-1e9 - max) underflows to exactly 0 in float32 for any sensible temperature.
_SELF_LOGIT = -1e9


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward returns each rank's slice of the summed grads.

    Forward: every rank contributes x (B, ...) and receives the concatenation (W*B, ...) in rank
    order. Backward: rank r's loss L_r depends on every rank's x through the gathered tensor,
    so the gradient of x_s must collect dL_r/dx_s from all r: all-reduce (sum) the incoming
    gradient (W*B, ...) and keep rows [s*B, (s+1)*B). Rank s thus receives d(sum_r L_r)/dx_s.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()  # type: ignore[attr-defined]
        ctx.local = x.shape[0]  # type: ignore[attr-defined]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        # Clone: all_reduce works in place and autograd may still own ``grad``.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local  # type: ignore[attr-defined]
        return grad[start : start + ctx.local]  # type: ignore[attr-defined]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Gather (B, ...) from every process into (W*B, ...) keeping gradients to every rank's x.

    Needs an initialised default process group and the same B on every rank (a
    ``DistributedSampler`` guarantees it; unequal sizes make the collective fail or hang).
    Gradient convention: rank s receives the gradient of the *sum* of all ranks' losses w.r.t.
    its own x — see :func:`nt_xent` for why that is right under DDP.
    """
    gathered: Tensor = _AllGatherWithGrad.apply(x)  # type: ignore[no-untyped-call]  # torch's apply is untyped
    return gathered


def _distributed_world() -> tuple[int, int]:
    """(world size, rank) of the default process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _block_ce(anchors: Tensor, candidates: Tensor, self_start: int, pos_start: int) -> Tensor:
    """Summed cross-entropy of one (B_local, 2N) block of logits.

    Args:
        anchors: (B, D) unit vectors already divided by the temperature.
        candidates: (2N, D) unit vectors, all projections of the global batch.
        self_start: column of row 0's own projection; row i's is ``self_start + i``.
        pos_start: column of row 0's positive; row i's is ``pos_start + i``.

    Returns:
        Scalar: sum over the B rows of -log softmax(logits)[positive].
    """
    logits = anchors @ candidates.T  # (B, 2N); the matmul's backward needs only its inputs
    # Row i's self-similarity lies at (i, self_start + i): one diagonal, filled in place
    # instead of building a (B, 2N) mask. The fill is hidden from autograd, which saves the
    # (B, 2N) gradient copy an in-place op on a view costs: it is still exact, because the
    # softmax weight of a filled entry is exp(-1e9 - lse) = 0, so log-softmax passes zero
    # gradient there — the same as through a constant — and the matmul saved no output that
    # the in-place write could corrupt.
    with torch.no_grad():
        logits.diagonal(offset=self_start).fill_(_SELF_LOGIT)
    targets = torch.arange(pos_start, pos_start + anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, targets, reduction="sum")


def nt_xent(z0: Tensor, z1: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """NT-Xent loss of SimCLR (Chen et al., ICML 2020) for two views of the same images.

    Args:
        z0: (B, D) projections of view 0 of B images (any float dtype; bf16/fp16 are cast
            up to float32 before normalising, float64 stays float64).
        z1: (B, D) projections of view 1 of the same images, in the same order.
        temperature: t > 0 dividing the cosine similarities (SimCLR uses 0.1-0.5).
        gather: under ``torch.distributed`` with world size W > 1, use the projections of all
            processes (global batch N = W*B) as negatives; each rank then computes the loss of
            its own 2B anchors against all 2N candidates.

    Returns:
        Scalar float32 (float64 for float64 inputs) loss: the mean over this process's 2B
        anchors. Since every rank has the same B, the mean of the ranks' losses is the
        global-batch loss.

    Computation: autocast is disabled and vectors are L2-normalised in (at least) float32; the
    logits are computed as two (B, 2N) blocks (view-0 anchors, view-1 anchors) — never a
    (2N, 2N) matrix on one rank — with self-similarities overwritten by a large negative
    constant, and reduced with ``F.cross_entropy`` (log-sum-exp; no raw ``exp``).

    Gradient convention under DDP: the gathered negatives carry gradients
    (:func:`all_gather_with_grad`), so rank s's backward yields, for its own inputs,
    d(sum_r L_r)/dz_s = W * dL_global/dz_s. DDP then *averages* parameter gradients over the W
    ranks, which divides that factor W out: parameters receive exactly the gradient of
    single-process training on the global batch of N images. (Without DDP's averaging, e.g.
    when summing gradients by hand, divide by W.)
    """
    if z0.ndim != 2 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must both be (B, D); got {tuple(z0.shape)}, {tuple(z1.shape)}")
    if z0.shape[0] < 1:
        raise ValueError("nt_xent needs at least one image (B >= 1)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    world, rank = _distributed_world() if gather else (1, 0)
    dtype = torch.promote_types(torch.promote_types(z0.dtype, z1.dtype), torch.float32)

    # Autocast would run the matmul in bf16/fp16 again; the loss is cheap, keep it precise.
    with torch.autocast(device_type=z0.device.type, enabled=False):
        h0 = F.normalize(z0.to(dtype), dim=1)
        h1 = F.normalize(z1.to(dtype), dim=1)
        b, d = h0.shape
        if world > 1:
            # One collective for both views: (B, 2D) -> (N, 2D).
            gathered = all_gather_with_grad(torch.cat([h0, h1], dim=1))
            g0, g1 = gathered[:, :d], gathered[:, d:]
        else:
            g0, g1 = h0, h1
        n = g0.shape[0]
        offset = rank * b  # this rank's images occupy rows [offset, offset + b) of g0 and g1
        candidates = torch.cat([g0, g1], dim=0)  # (2N, D): view 0 of all images, then view 1
        inv_t = 1.0 / temperature
        # View-0 anchors: self at column offset + i, positive (view 1) at n + offset + i.
        loss = _block_ce(h0 * inv_t, candidates, self_start=offset, pos_start=n + offset)
        # View-1 anchors: self at n + offset + i, positive (view 0) at offset + i.
        loss = loss + _block_ce(h1 * inv_t, candidates, self_start=n + offset, pos_start=offset)
    return loss / (2 * b)


def gather_rows(x: Tensor) -> Tensor:
    """(B, ...) of every process -> (W*B, ...) in rank order, without gradients (labels, metadata).

    Identity without an initialised process group (or with one process).
    """
    world, _ = _distributed_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def multi_positive_nt_xent(z: Tensor, positive: Tensor, excluded: Tensor | None = None,
                           temperature: float = 0.1, gather: bool = True) -> Tensor:
    """NT-Xent with any number of positives per anchor (SupCon's "L_out", Khosla et al. 2020).

    Args:
        z: (M, D) projections of this process's M views (e.g. two views of B images, M = 2B).
        positive: (M, W*M) bool, ``positive[i, j]``: view j of the gathered batch (rank-major
            order: rank 0's M views, then rank 1's, ...; W = 1 without ``torch.distributed``)
            is a positive of local view i. The anchor's own column (``rank * M + i``) is
            ignored; every anchor needs at least one other positive.
        excluded: (M, W*M) bool or None: columns left out of anchor i's denominator (neither
            positive nor negative, e.g. other slices of the same patient); a column marked
            both positive and excluded counts as positive.
        temperature: t > 0 dividing the cosine similarities.
        gather: under ``torch.distributed`` use every process's views as candidates (build
            ``positive``/``excluded`` against :func:`gather_rows` of the views' metadata).

    Returns:
        Scalar (float32, float64 for float64 inputs): the mean over the M local anchors of
        ``-1/|P(i)| * sum_{p in P(i)} log( exp(s_ip/t) / sum_{a in A(i)} exp(s_ia/t) )`` with
        P(i) the positives and A(i) every column but the anchor itself and its excluded ones.
        With two views per image and ``positive`` = "the other view" this is exactly
        :func:`nt_xent` (tested); the DDP gradient convention is the same as there.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be (M, D) with M >= 2; got {tuple(z.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    world, rank = _distributed_world() if gather else (1, 0)
    m = z.shape[0]
    if positive.shape != (m, world * m) or (excluded is not None and excluded.shape != positive.shape):
        raise ValueError(f"positive/excluded must be ({m}, {world * m}) for {world} process(es); got "
                         f"{tuple(positive.shape)}"
                         f"{'' if excluded is None else ', ' + str(tuple(excluded.shape))}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        h = F.normalize(z.to(dtype), dim=1)
        candidates = all_gather_with_grad(h) if world > 1 else h
        logits = (h / temperature) @ candidates.T  # (M, W*M)
        own = torch.zeros_like(positive)
        own[torch.arange(m, device=z.device), rank * m + torch.arange(m, device=z.device)] = True
        pos = positive & ~own
        dropped = own if excluded is None else own | (excluded & ~pos)
        n_pos = pos.sum(dim=1)
        if bool((n_pos == 0).any()):
            raise ValueError("every anchor needs at least one positive besides itself")
        logits = logits.masked_fill(dropped, _SELF_LOGIT)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        per_anchor = -(log_prob * pos).sum(dim=1) / n_pos
    return per_anchor.mean()
