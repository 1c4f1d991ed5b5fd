"""Small heads on top of encoder features: the SimCLR projection and the ED/ES classifier."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DualPhaseHead", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """SimCLR v1 projection head g(h) = W2 ReLU(BN(W1 h)) (Chen et al., 2020).

    The contrastive loss is applied to its output; downstream tasks use the encoder features h
    before it, which the SimCLR paper found to transfer better.

    Input (B, in_dim) features; output (B, out_dim) projections (not normalised: the loss
    normalises). Batch norm needs B > 1 in training mode.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),  # bias is redundant before batch norm
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        out: Tensor = self.net(h)
        return out


class DualPhaseHead(nn.Module):
    """Disease classifier from end-diastolic (ED) and end-systolic (ES) features.

    The same encoder embeds both phases; their features are concatenated ``[ED, ES]`` (the
    order matters: the linear layer sees which phase is which), optionally dropped out, and
    mapped linearly to class logits.

    Inputs ``ed``, ``es``: (B, feature_dim) each; output (B, n_classes) unnormalised logits.
    """

    def __init__(self, feature_dim: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(2 * feature_dim, n_classes)

    def forward(self, ed: Tensor, es: Tensor) -> Tensor:
        """(B, D), (B, D) -> (B, n_classes)."""
        if ed.shape != es.shape:
            raise ValueError(f"ED and ES features differ in shape: {ed.shape} vs {es.shape}")
        logits: Tensor = self.fc(self.dropout(torch.cat([ed, es], dim=1)))
        return logits
