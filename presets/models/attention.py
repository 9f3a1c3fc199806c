"""A small attention model for 28 x 28 images, the shipped example of ``model.build``.

Each image's 28 rows are 28 tokens of 28 pixels: a linear embedding (width 8) plus a learned
position embedding, one pre-norm self-attention block (2 heads) with a residual connection,
the mean over the tokens, and a linear layer to the classes. No BatchNorm and no dropout, so
a session's training (the generic torch.func path) takes it as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class RowAttention(nn.Module):
    def __init__(self, rows: int, width: int, n_classes: int, dim: int = 8, heads: int = 2):
        super().__init__()
        self.rows, self.width = rows, width
        self.embed = nn.Linear(width, dim)
        self.position = nn.Parameter(torch.zeros(rows, dim))
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, n_classes)
        nn.init.normal_(self.position, std=0.1)

    def forward(self, x):
        tokens = self.embed(x.reshape(-1, self.rows, self.width)) + self.position
        h = self.norm(tokens)
        tokens = tokens + self.attention(h, h, h, need_weights=False)[0]
        return self.head(tokens.mean(dim=1))


def build(in_features: int, n_classes: int) -> nn.Module:
    side = round(in_features ** 0.5)
    if side * side != in_features:
        raise ValueError(f"expects square images flattened (28 x 28 = 784 features), got "
                         f"{in_features} features")
    return RowAttention(side, side, n_classes)
