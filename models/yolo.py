"""The detection model: layers built from a YAML, a forward that routes skip connections, fuse() and info()."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torch.nn as nn

from models.modules.heads import Detect
from models.parse import build_layers

logger = logging.getLogger(__name__)


class DetectionModel(nn.Module):
    """A YOLO detector described by a model YAML (path, bare name from ``cfg/``, or dict).

    ``forward(images)`` returns the head's output: in train mode the per-level raw maps, in eval mode
    (decoded boxes (B, N, 5 + nc), raw maps). ``cfg`` (the YAML dict actually built), ``names``, ``stride`` and
    ``head`` describe the model; ``records`` has one ``LayerRecord`` per YAML line.
    """

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", in_channels: int = 3, num_classes: int | None = None,
                 names: list[str] | None = None):
        super().__init__()
        self.layers, self.records, self.cfg = build_layers(cfg, in_channels, num_classes)
        self.cfg["nc"] = self.head.num_classes
        self.in_channels = in_channels
        needed = {s for record in self.records for s in record.sources}
        self._keep = [record.index in needed for record in self.records]
        self.names = list(names) if names else [f"class{i}" for i in range(self.head.num_classes)]
        if len(self.names) != self.head.num_classes:
            raise ValueError(f"{len(self.names)} class names for {self.head.num_classes} classes")
        _initialize_weights(self)

    @property
    def head(self) -> Detect:
        return self.layers[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.head.stride

    @property
    def size_multiple(self) -> int:
        """What every input side is rounded up to: the largest stride, at least 32 (YOLOv5's rule)."""
        return max(int(self.stride.max()), 32)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, x: torch.Tensor):
        outputs: list[torch.Tensor | None] = []
        image = x
        for layer, record, keep in zip(self.layers, self.records, self._keep):
            inputs = [image if s == -1 else outputs[s] for s in record.sources]
            x = layer(inputs if record.takes_list else inputs[0])
            outputs.append(x if keep else None)
        return x

    def fuse(self) -> "DetectionModel":
        """Fuse every layer (``fuse_modules``: BatchNorm folded into convs, RepConv re-parameterised, IDetect's implicit
        layers folded) and switch to eval mode; for inference only."""
        fuse_modules(self.layers)
        return self.eval()

    def is_fused(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    def info(self, image_size: int = 640) -> dict:
        """Layer count, parameter count and GFLOPs (2 x multiply-adds) for one image of ``image_size``."""
        return {"layers": len(list(self.modules())), "params": count_parameters(self),
                "gflops": count_gflops(self, image_size)}

    def layer_table(self) -> list[dict]:
        """One row per YAML line: index, from, n, params, module, args."""
        rows = []
        for record, layer in zip(self.records, self.layers):
            rows.append({"index": record.index, "from": record.sources if len(record.sources) > 1 else record.sources[0],
                         "n": record.repeats, "params": count_parameters(layer), "module": record.module_name,
                         "args": _printable(record.args), "out_channels": record.out_channels,
                         "stride": record.stride})
        return rows


@torch.no_grad()
def fuse_modules(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and call ``fuse()`` on every layer inside it that declares one (the contract in
    models/registry.py: Conv folds its BatchNorm, RepConv its branches, IDetect its implicit layers), in place; works
    on a whole model or a single block. Returns ``module``."""
    module.eval()
    for child in module.modules():  # parents first: a layer's fuse() may replace its children
        fuse = getattr(type(child), "fuse", None)  # the class's method: SPP and SPPF have a child layer named fuse
        if fuse is not None:
            fuse(child)
    return module


def _printable(args: list) -> list:
    return [repr(a) if isinstance(a, nn.Module) else a for a in args]


def _initialize_weights(model: nn.Module) -> None:
    """YOLOv5/YOLOv7 BatchNorm settings: eps 1e-3, momentum 0.03."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
            module.momentum = 0.03


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_gflops(model: DetectionModel, image_size: int = 640) -> float:
    """Exact GFLOPs (2 x multiply-adds of convs and matmuls) of a fused copy at ``image_size``, batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).fuse().cpu().float()
    image = torch.zeros(1, model.in_channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        probe(image)
    return counter.get_total_flops() / 1e9


def model_summary(model: DetectionModel, image_size: int = 640) -> str:
    """A printable layer table followed by the totals."""
    lines = [f"{'':>3} {'from':>18} {'n':>3} {'params':>10}  {'module':<12} arguments"]
    for row in model.layer_table():
        lines.append(f"{row['index']:>3} {str(row['from']):>18} {row['n']:>3} {row['params']:>10,}  "
                     f"{row['module']:<12} {row['args']}")
    info = model.info(image_size)
    lines.append(f"{model.cfg.get('yaml_file', 'model')}: {len(model.records)} layers, {info['params']:,} parameters, "
                 f"{info['gflops']:.1f} GFLOPs at {image_size}x{image_size}")
    return "\n".join(lines)
