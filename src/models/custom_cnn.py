"""A plain CNN, the kind a CIFAR-100 study sets beside the ResNets: blocks of 3x3 conv-BatchNorm-ReLU
layers, each block closed by a 2x2 max-pool and dropout, then global average pooling, dropout and
the classifier. No residual connections, so `zero_init_residual` has nothing to act on.

    model.custom_cnn: {module: custom_cnn, options: {blocks: 3, convs_per_block: 2, block_dropout: 0.25}}

Block k has width * 2**k channels (width 64, 3 blocks: 64, 128, 256; 32x32 -> 4x4 before the
pool). The example of an architecture in code (docs/models.md, "An architecture in code").
"""
from __future__ import annotations

from torch import nn


def conv_bn_relu(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True)]


class CustomCNN(nn.Module):
    def __init__(self, num_classes: int = 100, width: int = 64, dropout: float = 0.0, blocks: int = 3,
                 convs_per_block: int = 2, block_dropout: float = 0.25):
        super().__init__()
        if not 1 <= blocks <= 5:  # each block halves the side: 32 -> 1 after five
            raise ValueError(f"blocks = {blocks}: a 32x32 image takes 1 to 5 blocks (each halves its side)")
        if convs_per_block < 1 or not 0 <= block_dropout < 1:
            raise ValueError("convs_per_block must be at least 1 and block_dropout in [0, 1)")
        layers, channels = [], 3
        for k in range(blocks):
            out = width * 2 ** k
            for _ in range(convs_per_block):
                layers += conv_bn_relu(channels, out)
                channels = out
            layers += [nn.MaxPool2d(2), nn.Dropout(block_dropout)]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():  # the ResNets' initialisation, so that the comparison is of shapes
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.dropout(self.features(x).mean((2, 3))))


def build_model(num_classes: int = 100, width: int = 64, zero_init_residual: bool = False, dropout: float = 0.0,
                **options) -> nn.Module:
    """src/models/build.py's interface; `options`: blocks, convs_per_block, block_dropout."""
    return CustomCNN(num_classes, width, dropout, **options)
