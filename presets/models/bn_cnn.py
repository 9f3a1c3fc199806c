"""A small convolutional net with BatchNorm and dropout for 28 x 28 images, the shipped
example of a ``model.build`` with layers that behave differently in training and evaluation.

Two strided 3 x 3 convolutions (4 and 8 channels), each followed by BatchNorm and tanh, an
average pool to 2 x 2, dropout (p = 0.1) and a linear layer to the classes. In training mode
BatchNorm normalizes each batch by its own statistics and the running statistics are carried
through training beside the parameters (saved as ``buffersT.npz``); dropout draws one mask
per step from the run's seed; evaluation runs the module in eval mode.
"""

from __future__ import annotations

from torch import nn


class BatchNormCNN(nn.Module):
    def __init__(self, side: int, n_classes: int, channels=(4, 8), dropout: float = 0.1):
        super().__init__()
        self.side = side
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.BatchNorm2d(c1, momentum=None), nn.Tanh(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2, momentum=None), nn.Tanh(),
            nn.AdaptiveAvgPool2d(2))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * c2, n_classes)

    def forward(self, x):
        h = self.features(x.reshape(-1, 1, self.side, self.side))
        return self.head(self.dropout(h.flatten(1)))


def build(in_features: int, n_classes: int) -> nn.Module:
    side = round(in_features ** 0.5)
    if side * side != in_features:
        raise ValueError(f"expects square images flattened (28 x 28 = 784 features), got "
                         f"{in_features} features")
    return BatchNormCNN(side, n_classes)
