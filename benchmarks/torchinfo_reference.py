"""Compare cnndsl's parameter and MAC counts with torchinfo's on hand-written PyTorch
ResNet-18 and VGG-16 (the torchvision architectures, rebuilt here because torchvision
does not import beside the CPU torch wheel). Prints a table; needs torch and torchinfo.

    python benchmarks/torchinfo_reference.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchinfo import summary

import cnndsl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def conv_bn(cin, cout, k, s):
    return [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout)]


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                  *conv_bn(cout, cout, 3, 1))
        self.short = (nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1
                      else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def resnet18():
    layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def vgg16():
    layers, cin = [], 3
    for cout, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


def main():
    print(f"{'network':10} {'torchinfo params':>17} {'cnndsl params':>14} "
          f"{'torchinfo MACs':>15} {'cnndsl MACs':>15} {'ratio':>7}")
    for name, build, example in (("ResNet-18", resnet18, "resnet18.cnn"),
                                 ("VGG-16", vgg16, "vgg16.cnn")):
        info = summary(build(), input_size=(1, 3, 224, 224), verbose=0)
        graph = cnndsl.check_file(str(EXAMPLES / example))
        params, macs = cnndsl.shapes.totals(graph)
        print(f"{name:10} {info.total_params:17,} {params:14,} {info.total_mult_adds:15,} "
              f"{macs:15,} {macs / info.total_mult_adds:7.4f}")


if __name__ == "__main__":
    main()
