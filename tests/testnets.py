"""Small networks used by the saliency and loss tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """conv-BN-ReLU blocks, max and average pooling, a linear head (module ReLUs, optionally in-place)."""

    def __init__(self, in_channels=1, num_classes=3, width=4, inplace=True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=inplace),
            nn.AvgPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class FunctionalCNN(nn.Module):
    """A user-written CNN that calls ReLU, pooling and global pooling as functions inside forward."""

    def __init__(self, in_channels=1, num_classes=3, width=4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class DenseCNN(nn.Module):
    """Dense connections (``torch.cat``), a grouped strided convolution, a 1x1 convolution, a 1-D
    convolution over flattened rows and in-place functional ReLUs: the layer kinds the relevance
    rules treat specially, in a network small enough for float64 gradchecks."""

    def __init__(self, in_channels=1, num_classes=3, width=4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.grow = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.group = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, groups=2)
        self.point = nn.Conv2d(2 * width, width, 1, bias=False)
        self.row = nn.Conv1d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.grow(x), inplace=True)], 1)
        x = torch.relu(self.point(torch.relu(self.group(x))))
        x = F.relu(self.row(x.flatten(2)))
        return self.fc(x.mean(-1))


def install_torchvision_stub():
    """zennit 0.5.1 imports torchvision's ResNet blocks; torchvision cannot be installed beside torch 2.13.0."""
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock(nn.Module):
        pass

    class Bottleneck(nn.Module):
        pass

    resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
    tv.models, models.resnet = models, resnet
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


def no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def kill_child_at(script: str | Path, out: Path, step: int, checkpoint_every: int) -> None:
    """Run ``script out --pause-at STEP --checkpoint-every N`` (a test module run as a training
    child), wait for its "PAUSED" line, then SIGKILL it: a training process killed mid-run."""
    proc = subprocess.Popen([sys.executable, str(script), str(out), "--pause-at", str(step), "--checkpoint-every",
                             str(checkpoint_every)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        assert line.strip() == "PAUSED", (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
