"""CIFAR ResNets (18, 34, 50, 101, ... : any `block` and `layers`) from torchvision's ResNet,
BasicBlock and Bottleneck.

The change from torchvision's ImageNet model is the stem: a 3x3 stride-1
convolution and no max-pool, so 32x32 images keep their resolution into
layer1 (He et al. 2016, section 4.2; kuangliu/pytorch-cifar). `width` scales
every stage: channels are width, 2*width, 4*width, 8*width (x4 for Bottleneck).
The global pool is a plain mean, for deterministic CUDA training (see GlobalAvgPool).
Options: dropout before the classifier (no weights, so model files keep one layout) and
zero-initialised residual BatchNorms (off by default: see CifarResNet).
With width 64 and 100 classes: 11,220,132 / 21,328,292 / 23,705,252 parameters.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}  # params.yaml's model.<name>.block


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1) mean: what AdaptiveAvgPool2d(1) computes, but its CUDA
    backward is deterministic, so `runtime.deterministic` can train (PyTorch raises for
    AdaptiveAvgPool2d's backward on CUDA under use_deterministic_algorithms)."""

    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


class CifarResNet(ResNet):
    def __init__(self, block: str, layers: list[int], num_classes: int = 100, width: int = 64,
                 zero_init_residual: bool = False, dropout: float = 0.0):
        nn.Module.__init__(self)  # ResNet.__init__ would build the ImageNet stem at width 64
        block = BLOCKS[block]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups = width, 1, 1
        self.base_width = 64  # Bottleneck: inner width = planes, as in the standard ResNet-50
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            self._zero_init_residual()

    def _zero_init_residual(self) -> None:
        """Each block starts as the identity (Goyal et al. 2017). Off by default: none of the
        reference runs uses it, and on the genuine data it learned slower at a short budget
        (docs/recipe.md, Options)."""
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def _forward_impl(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))
