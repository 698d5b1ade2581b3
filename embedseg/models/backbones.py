"""Dilated ResNet family (He et al. 2016; dilation as in DeepLab v3), written in torch alone.

`width` scales every channel count (0.25 gives a network that trains on a laptop CPU);
`output_stride` 8 or 16 replaces the stride of the last stage(s) by dilation, as DeepLab does (32: none).
"""
from __future__ import annotations

import torch
from torch import nn

from embedseg.models.layers import norm
from embedseg.models.registry import BACKBONES


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm(ch)
        self.conv2 = nn.Conv2d(ch, out_ch, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = norm(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = norm(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))


class DilatedResNet(nn.Module):
    """ResNet returning {"fine": stride-2 stem features, "low": stride-4 features, "high":
    stride-`output_stride` features}.

    Attributes `fine_channels`, `low_channels` and `high_channels` give the channel counts for the decoder.
    """

    def __init__(self, block, layers: list[int], width: float = 1.0, output_stride: int = 16, in_channels: int = 3):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        chans = [max(8, round(c * width)) for c in (64, 128, 256, 512)]
        # Stage strides/dilations: stride 32 by default; trade the last strides for dilation.
        strides, dilations = [1, 2, 2, 2], [1, 1, 1, 1]
        if output_stride <= 16:
            strides[3], dilations[3] = 1, 2
        if output_stride == 8:
            strides[2], dilations[2], dilations[3] = 1, 2, 4

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, chans[0], 7, 2, 3, bias=False), norm(chans[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        in_ch = chans[0]
        stages = []
        for ch, n, stride, dilation in zip(chans, layers, strides, dilations):
            blocks = []
            for i in range(n):
                blocks.append(block(in_ch, ch, stride if i == 0 else 1, dilation))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fine_channels = chans[0]
        self.low_channels = chans[0] * block.expansion
        self.high_channels = in_ch
        self.output_stride = output_stride

    def forward(self, x):
        fine = self.stem[:3](x)  # stride 2, before the max pool
        low = self.layer1(self.stem[3](fine))
        high = self.layer4(self.layer3(self.layer2(low)))
        return {"fine": fine, "low": low, "high": high}


@BACKBONES.register("resnet18")
def resnet18(width: float = 1.0, output_stride: int = 16) -> DilatedResNet:
    return DilatedResNet(BasicBlock, [2, 2, 2, 2], width, output_stride)


@BACKBONES.register("resnet34")
def resnet34(width: float = 1.0, output_stride: int = 16) -> DilatedResNet:
    return DilatedResNet(BasicBlock, [3, 4, 6, 3], width, output_stride)


@BACKBONES.register("resnet50")
def resnet50(width: float = 1.0, output_stride: int = 16) -> DilatedResNet:
    return DilatedResNet(Bottleneck, [3, 4, 6, 3], width, output_stride)
