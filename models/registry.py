"""The module registry and the contract between a registered module and the YAML parser.

A YAML layer is ``[from, number, module, args]``. The parser looks the module name up here, and the entry
says how the YAML arguments become constructor arguments and what the layer outputs:

* ``channel_rule`` - how input channels are inserted and output channels derived (one of the ``*_rule``
  functions below; each module class names its own with the ``channel_rule`` class attribute);
* ``output_stride(bound_args)`` - a classmethod returning how much the layer divides the spatial size
  (2 for a stride-2 conv, 0.5 for a 2x upsample), so strides are known without running the network;
* ``upstream_names`` - how the official YOLOv5/YOLOv7 code named this module's children, used only when
  importing their checkpoints;
* ``input_convs()`` (optional method) - the Conv/RepConv layers that read the module's input directly, when
  nothing else does. Deploy rewrites (models/deploy.py) use it to fold a channel permutation of the input
  into those convs' weights; a module without it is assumed to need its input in the original order;
* ``channel_transparent`` (class attribute, default False) - True when the layer treats every channel alike and
  on its own (pooling, upsampling, identity, concatenation), so a permutation of its input channels comes out
  as the same permutation of its output channels. The shuffle folding in models/deploy.py lets such layers
  pass a permuted tensor on to its consumers;
* ``fuse()`` (optional method) - fold training-time structure into an equivalent inference form in place
  (BatchNorm into the conv, RepConv's branches into one conv, IDetect's implicit layers into its convs); eval
  output unchanged, calling it twice is a no-op. ``models.yolo.fuse_modules`` calls it on every layer that
  defines it, so ``DetectionModel.is_fused()`` (no BatchNorm left) holds for any model built from registered
  modules. It is looked up on the class: C3, SPP, SPPF and VoV-GSCSP name a child layer ``fuse`` (their
  output conv), which is not the method (a class that defines ``fuse()`` cannot also have such a child).

The parser therefore has no module-specific branches: a new module only needs a class and a decorator.
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from models.errors import UsageError


class ConfigError(UsageError):
    """A model YAML that cannot be built. The message names the file, the layer and what is wrong."""


MAX_CHANNELS = 16_384  # output channels of one layer after width scaling (yolov5x's widest: 1280)


@dataclass
class LayerInputs:
    """What the parser knows about a layer before constructing it."""

    args: list                      # YAML arguments with symbols resolved
    channels: list[int]             # output channels of each `from` input
    strides: list[float]            # output stride of each `from` input
    repeats: int                    # depth-scaled `number`
    width_multiple: float = 1.0
    num_outputs: int = 0            # per-anchor outputs x anchors of the model's head (never width-scaled)

    def scale_channels(self, channels: int) -> int:
        """Width-scale a channel count and round up to a multiple of 8, as YOLOv5 does."""
        if channels == self.num_outputs:
            return channels
        scaled = make_divisible(channels * self.width_multiple, 8)
        if not (1 <= channels and scaled <= MAX_CHANNELS):
            raise ConfigError(f"output channels {channels} (x width_multiple {self.width_multiple:g} = {scaled}) must "
                              f"be 1 to {MAX_CHANNELS}")
        return scaled


@dataclass
class ResolvedLayer:
    """The outcome of a channel rule: constructor arguments and the layer's output channels."""

    args: list
    out_channels: int | None        # None for a head (it produces predictions, not a feature map)
    consumes_repeats: bool = False  # True when `repeats` went into the arguments (C3-like blocks)


def make_divisible(value: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``value``."""
    return int(math.ceil(value / divisor) * divisor)


def _single_input(inputs: LayerInputs, what: str) -> int:
    if len(inputs.channels) != 1:
        raise ConfigError(f"{what} takes one input, got {len(inputs.channels)} (from a list)")
    return inputs.channels[0]


def conv_rule(inputs: LayerInputs) -> ResolvedLayer:
    """Default rule: insert the input channels; the first YAML argument is the (width-scaled) output channels."""
    in_channels = _single_input(inputs, "this module")
    if not inputs.args:
        raise ConfigError("missing the output-channels argument")
    out_channels = inputs.scale_channels(_as_int(inputs.args[0], "output channels"))
    return ResolvedLayer([in_channels, out_channels, *inputs.args[1:]], out_channels)


def repeated_block_rule(inputs: LayerInputs) -> ResolvedLayer:
    """Like ``conv_rule``, and the depth-scaled repeat count goes in as the third argument (C3, VoVGSCSP)."""
    resolved = conv_rule(inputs)
    in_channels, out_channels, *rest = resolved.args
    return ResolvedLayer([in_channels, out_channels, inputs.repeats, *rest], out_channels, consumes_repeats=True)


def concat_rule(inputs: LayerInputs) -> ResolvedLayer:
    """Concatenation along channels: the output channels are the sum of the inputs'."""
    return ResolvedLayer(list(inputs.args), sum(inputs.channels))


def passthrough_rule(inputs: LayerInputs) -> ResolvedLayer:
    """Channel-preserving layers (pooling, upsampling): arguments unchanged, channels unchanged."""
    return ResolvedLayer(list(inputs.args), _single_input(inputs, "this module"))


def head_rule(inputs: LayerInputs) -> ResolvedLayer:
    """Detection heads receive the list of input channels and input strides after their YAML arguments."""
    return ResolvedLayer([*inputs.args, list(inputs.channels), list(inputs.strides)], None)


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return int(value)


@dataclass
class RegistryEntry:
    """One module usable from YAML."""

    name: str
    builder: Callable[..., nn.Module]
    channel_rule: Callable[[LayerInputs], ResolvedLayer]
    output_stride: Callable[[dict], float]
    upstream_names: dict[str, str] = field(default_factory=dict)
    is_head: bool = False
    channel_transparent: bool = False

    @property
    def takes_list(self) -> bool:
        """True when the module's forward takes the list of its inputs (Concat, heads)."""
        return self.channel_rule in (concat_rule, head_rule)

    def signature(self) -> inspect.Signature:
        return inspect.signature(self.builder)


_REGISTRY: dict[str, RegistryEntry] = {}


def register(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` usable from YAML under its class name. Duplicate names raise."""
    _add(RegistryEntry(
        name=cls.__name__,
        builder=cls,
        channel_rule=getattr(cls, "channel_rule", conv_rule),
        output_stride=getattr(cls, "output_stride", lambda bound: 1),
        upstream_names=dict(getattr(cls, "upstream_names", {})),
        is_head=getattr(cls, "channel_rule", None) is head_rule,
        channel_transparent=bool(getattr(cls, "channel_transparent", False)),
    ))
    return cls


def register_torch_layer(name: str, builder: Callable[..., nn.Module], output_stride: Callable[[dict], float],
                         channel_transparent: bool) -> None:
    """Allow one torch.nn layer in YAML (written ``nn.Name``); it keeps its input channels."""
    _add(RegistryEntry(name=name, builder=builder, channel_rule=passthrough_rule, output_stride=output_stride,
                       channel_transparent=channel_transparent))


def _add(entry: RegistryEntry) -> None:
    if entry.name in _REGISTRY:
        raise KeyError(f"module name {entry.name!r} is already registered (by {_REGISTRY[entry.name].builder})")
    _REGISTRY[entry.name] = entry


def lookup(name: str) -> RegistryEntry:
    """Find a module by its YAML name (``Conv``, ``nn.Upsample``, ``torch.nn.Upsample``)."""
    if not isinstance(name, str):
        raise ConfigError(f"module name must be a string, got {name!r}")
    key = "nn." + name[len("torch.nn."):] if name.startswith("torch.nn.") else name
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown module {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))})")


def registered_names() -> list[str]:
    """All names usable in YAML, sorted."""
    return sorted(_REGISTRY)


def entries() -> list[RegistryEntry]:
    """All registry entries, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def _upsample_stride(bound: dict) -> float:
    scale = bound.get("scale_factor")
    if scale is None:
        raise ConfigError("nn.Upsample needs a scale_factor (a fixed size would make the strides unknown)")
    return 1.0 / float(scale)


def _pool_stride(bound: dict) -> float:
    stride = bound.get("stride")
    return bound["kernel_size"] if stride is None else stride


register_torch_layer("nn.Upsample", nn.Upsample, _upsample_stride, channel_transparent=True)
register_torch_layer("nn.MaxPool2d", nn.MaxPool2d, _pool_stride, channel_transparent=True)
register_torch_layer("nn.Identity", nn.Identity, lambda bound: 1, channel_transparent=True)
