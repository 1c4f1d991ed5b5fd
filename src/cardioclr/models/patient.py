"""Patient-level classifier: every ED and ES slice of a patient in one forward pass.

A *bag* is one patient: S short-axis positions, each an ED and an ES slice of C channels, with
a relative position p in [0, 1] (0 = the most basal heart-bearing slice, 1 = the most apical;
:func:`cardioclr.data.pairs.slice_positions`). The network (Ilse et al., "Attention-based deep
multiple instance learning", ICML 2018)::

    ED slice ─┐ shared 2D encoder (registry) -> f_ed (D)
    ES slice ─┘                               -> f_es (D)
    p ──────── Fourier encoding               -> e(p) (1 + 2F)
    h = MLP([f_ed, f_es, e(p)])               -> (hidden)      one instance per position
    a = masked softmax over slices of w^T (tanh(V h) * sigmoid(U h))   (gated attention)
    z = sum_s a_s h_s                         -> (hidden)      the patient embedding
    logits = Linear(z)                        -> (K)

ED and ES of one position are *both kept* (concatenated, not averaged or subtracted): the MLP
sees the two phases side by side and can form the change between them (thickening, cavity
shrinkage) itself, which is what separates the ACDC groups.

Padding: patients have different slice counts; a batch is padded to its largest S and carries
a boolean ``mask`` (B, S), True = real slice. Padded slices never reach the encoder (only the
real ones are gathered and encoded, so batch-norm statistics see real slices only) and get
attention weight exactly 0, so they cannot change any output.

MONAI's ``MILModel`` implements the same pooling but for a fixed number of instances per bag,
without padding masks or per-instance positions; hence the few lines here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cardioclr.choices import MIL_POOLINGS
from cardioclr.models.encoders import build_encoder

#: MIL pooling choices: Ilse et al.'s gated attention, plain attention, masked mean.
POOLING_CHOICES: tuple[str, ...] = MIL_POOLINGS


def position_encoding(positions: Tensor, n_frequencies: int) -> Tensor:
    """Fourier features of relative positions: [p, sin(pi k p), cos(pi k p) for k = 1..F].

    ``positions``: (..., ) float in [0, 1]; returns (..., 1 + 2F) float. Frequencies 1..F
    half-periods over the base-apex range resolve basal, mid and apical levels smoothly.
    """
    p = positions.float().unsqueeze(-1)
    k = torch.arange(1, n_frequencies + 1, device=p.device, dtype=p.dtype) * math.pi
    return torch.cat([p, torch.sin(k * p), torch.cos(k * p)], dim=-1)


class MILPooling(nn.Module):
    """Masked attention pooling over instances (Ilse et al. 2018, eqs. 8-9).

    ``h`` (B, S, M) instances, ``mask`` (B, S) bool (True = real) -> ``(z (B, M), a (B, S))``;
    the weights ``a`` sum to 1 over the real instances and are exactly 0 on padding. Every bag
    needs at least one real instance.
    """

    def __init__(self, dim: int, attention_dim: int = 64, mode: str = "gated") -> None:
        super().__init__()
        if mode not in POOLING_CHOICES:
            raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_CHOICES)}")
        self.mode = mode
        self.v = nn.Linear(dim, attention_dim)
        self.u = nn.Linear(dim, attention_dim) if mode == "gated" else None
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "mean":
            a = mask.to(h.dtype)
            a = a / a.sum(dim=1, keepdim=True).clamp_min(1.0)
        else:
            g = torch.tanh(self.v(h))
            if self.u is not None:
                g = g * torch.sigmoid(self.u(h))
            score = self.w(g).squeeze(-1).masked_fill(~mask, -math.inf)
            a = torch.softmax(score.float(), dim=1).to(h.dtype)
            a = a.masked_fill(~mask, 0.0)  # also turns an all-padding row's NaN into 0
        z = torch.einsum("bs,bsm->bm", a, h)
        return z, a


class PatientClassifier(nn.Module):
    """All slices of a patient -> class logits (see the module docstring).

    Inputs of :meth:`forward`: ``ed``, ``es`` (B, S, C, H, W) float (already masked per input
    mode), ``positions`` (B, S) float in [0, 1] (base -> apex), ``mask`` (B, S) bool.
    Output (B, n_classes) logits. ``feature_dim`` = D of the encoder, ``embedding_dim`` = the
    size of the pooled patient embedding.
    """

    def __init__(self, encoder_name: str, n_classes: int, in_channels: int = 1, pooling: str = "gated",
                 hidden_dim: int = 128, attention_dim: int = 64, n_frequencies: int = 4,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.encoder_name = encoder_name
        self.in_channels = in_channels
        self.pooling = pooling
        self.n_frequencies = n_frequencies
        self.encoder, self.feature_dim = build_encoder(encoder_name, in_channels=in_channels)
        self.embedding_dim = hidden_dim
        self.instance = nn.Sequential(
            nn.Linear(2 * self.feature_dim + 1 + 2 * n_frequencies, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.pool = MILPooling(hidden_dim, attention_dim, pooling)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, n_classes)

    def encoders(self) -> list[nn.Module]:
        """The encoder modules (one, shared by ED and ES); for the common initialisation code."""
        return [self.encoder]

    def slice_features(self, ed: Tensor, es: Tensor) -> tuple[Tensor, Tensor]:
        """Real slices only: (N, C, H, W) ED and ES -> (N, D) features each, one encoder pass."""
        f = self.encoder(torch.cat([ed, es], dim=0))
        return f[: ed.shape[0]], f[ed.shape[0]:]

    def instances(self, ed: Tensor, es: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """(B, S, C, H, W) x2, (B, S), (B, S) -> (B, S, hidden) instances; zeros on padding."""
        f_ed, f_es = self.slice_features(ed[mask], es[mask])
        x = torch.cat([f_ed, f_es, position_encoding(positions[mask], self.n_frequencies).to(f_ed.dtype)],
                      dim=1)
        h_real: Tensor = self.instance(x)
        h = h_real.new_zeros(*mask.shape, h_real.shape[1])
        h[mask] = h_real
        return h

    def embed(self, ed: Tensor, es: Tensor, positions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Patient embeddings (B, hidden) and attention weights (B, S) (0 on padding)."""
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every patient needs at least one real slice")
        z, a = self.pool(self.instances(ed, es, positions, mask), mask)
        return z, a

    def forward(self, ed: Tensor, es: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """(B, S, C, H, W) ED and ES, (B, S) positions and mask -> (B, n_classes) logits."""
        z, _ = self.embed(ed, es, positions, mask)
        logits: Tensor = self.fc(self.dropout(z))
        return logits
