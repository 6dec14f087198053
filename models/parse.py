"""Model YAML -> layers. The loop is: look up, resolve, construct, record (see models/registry.py).

YAML is read with ``yaml.safe_load`` and string arguments resolve only through a fixed symbol table, never
``eval``: a config cannot run code.
"""
from __future__ import annotations

import ast
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

import models.modules  # noqa: F401  (registers every module)
from models.modules.activation import default_activation, parse_activation
from models.registry import MAX_CHANNELS, ConfigError, LayerInputs, lookup

CFG_DIR = Path(__file__).resolve().parent.parent / "cfg"
REQUIRED_KEYS = ("backbone", "head")
STRING_VALUES = {"nearest", "bilinear", "bicubic", "linear"}  # interpolation modes for nn.Upsample
_ACTIVATION_TEXT = re.compile(r"^(?:torch\.)?(?:nn\.)?[A-Z][A-Za-z0-9]*\(.*\)$")

# Bounds checked before anything is allocated: a config is input, and a typo must not take the machine's
# memory (depth_multiple 1e6 once asked for millions of blocks). Each is far above any published model.
MAX_MULTIPLE = 10.0  # depth_multiple and width_multiple lie in (0, 10]; yolov5x uses 1.33 and 1.25
MAX_CLASSES = 100_000
MAX_REPEATS = 100  # a layer's 'number', before and after depth scaling; yolov5x's largest is 12
MAX_ANCHORS_PER_LEVEL = 16
MAX_ANCHOR_PIXELS = 100_000.0
MAX_PARAMETERS = 500_000_000  # the whole model, 2 GB in float32; yolov7-e6e has 151 M


@dataclass
class LayerRecord:
    """What the parser built for one YAML line (used by forward, the layer table and checkpoint import)."""

    index: int
    sources: list[int]              # absolute indices of the inputs; -1 means the network input
    repeats: int
    module_name: str
    args: list                      # the YAML arguments after symbol resolution (before channel insertion)
    out_channels: int | None
    stride: float
    takes_list: bool


def resolve_cfg_path(cfg: str | Path) -> Path:
    """A path, or a bare name found in ``cfg/`` (``yolov5s-slimneck`` or ``yolov5s-slimneck.yaml``)."""
    path = Path(cfg)
    if path.is_file():
        return path
    for candidate in (CFG_DIR / path.name, CFG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.name for p in CFG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"model config {str(cfg)!r} not found (as a path or in {CFG_DIR}); available: {available}")


def load_model_config(cfg: str | Path | dict) -> tuple[dict, str]:
    """Read a model YAML (path, bare name or dict) -> (dict, a name for messages)."""
    if isinstance(cfg, dict):
        return dict(cfg), str(cfg.get("yaml_file", "<dict>"))
    path = resolve_cfg_path(cfg)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        # One line (PyYAML's own message spans several, with the offending text quoted)
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model YAML must be a mapping with 'backbone' and 'head'")
    data["yaml_file"] = path.name
    return data, str(path)


def resolve_symbol(value: Any, symbols: dict[str, Any]) -> Any:
    """Resolve one YAML argument. Strings: a symbol (nc, anchors, None, True, False), an activation such as
    ``nn.LeakyReLU(0.1)``, an interpolation mode, or a Python literal; anything else is refused."""
    if isinstance(value, list):
        return [resolve_symbol(item, symbols) for item in value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in symbols:
        return symbols[text]
    if text in STRING_VALUES:
        return text
    if _ACTIVATION_TEXT.match(text):
        return parse_activation(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        allowed = sorted(set(symbols) | STRING_VALUES) + ["nn.<Activation>(...)", "numbers", "lists"]
        raise ConfigError(f"argument {value!r} is not allowed; arguments may be {', '.join(allowed)}") from None


def _depth(repeats: int, depth_multiple: float) -> int:
    return max(round(repeats * depth_multiple), 1) if repeats > 1 else repeats


def _sources(raw_from: Any, index: int) -> list[int]:
    items = raw_from if isinstance(raw_from, list) else [raw_from]
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ConfigError(f"'from' must be an integer or a list of integers, got {raw_from!r}")
    absolute = []
    for item in items:
        source = item + index if item < 0 else item
        if item < 0 and source < 0 and not (index == 0 and item == -1):
            raise ConfigError(f"'from' {item} points before the first layer")
        if item >= 0 and item >= index:
            raise ConfigError(f"'from' {item} points forward (to layer {item}); a layer can only use earlier layers")
        absolute.append(-1 if index == 0 and item == -1 else source)
    return absolute


def build_layers(cfg: str | Path | dict, in_channels: int = 3, num_classes: int | None = None
                 ) -> tuple[nn.ModuleList, list[LayerRecord], dict]:
    """Build the layers of a model YAML. Returns (layers, records, the config dict actually used)."""
    data, source_name = load_model_config(cfg)
    for key in REQUIRED_KEYS:
        if not isinstance(data.get(key), list):
            raise ConfigError(f"{source_name}: missing or invalid '{key}' list")
    if num_classes is not None:
        data["nc"] = num_classes
    if "nc" not in data:
        raise ConfigError(f"{source_name}: 'nc' (number of classes) is missing")
    if not _is_integer(data["nc"]) or not 1 <= data["nc"] <= MAX_CLASSES:
        raise ConfigError(f"{source_name}: nc: the number of classes must be an integer from 1 to {MAX_CLASSES}, "
                          f"got {_short(data['nc'])}")
    depth_multiple = _multiple(data, "depth_multiple", source_name)
    width_multiple = _multiple(data, "width_multiple", source_name)
    anchors = _checked_anchors(data.get("anchors", 3), source_name)
    anchors_per_level = anchors if isinstance(anchors, int) else len(anchors[0]) // 2
    symbols = {"nc": data["nc"], "anchors": anchors, "None": None, "True": True, "False": False}
    try:
        activation = parse_activation(data["activation"]) if data.get("activation") else None
    except ValueError as error:
        raise ConfigError(f"{source_name}: activation: {error}") from None

    layers, records = nn.ModuleList(), []
    channels: list[int] = []
    strides: list[float] = []
    budget = [MAX_PARAMETERS]  # parameters and buffers the remaining layers may still hold
    with default_activation(activation):
        for index, line in enumerate(data["backbone"] + data["head"]):
            module_name = line[2] if isinstance(line, list) and len(line) == 4 else "?"
            try:
                module, record = _build_layer(index, line, channels, strides, in_channels, symbols, depth_multiple,
                                              width_multiple, anchors_per_level * (data["nc"] + 5), budget)
            except ConfigError as error:
                name = module_name if isinstance(module_name, str) else repr(module_name)
                name = name if len(name) <= 60 else name[:60] + "..."
                raise ConfigError(f"{source_name}: layer {index} ({name}): {error}") from None
            layers.append(module)
            records.append(record)
            channels.append(record.out_channels)
            strides.append(record.stride)
    if records[-1].out_channels is not None:
        raise ConfigError(f"{source_name}: the last layer must be a detection head, got {records[-1].module_name}")
    return layers, records, data


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _multiple(data: dict, key: str, source_name: str) -> float:
    value = data.get(key, 1.0)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_MULTIPLE):
        raise ConfigError(f"{source_name}: {key}: must be a number in (0, {MAX_MULTIPLE:g}], got {_short(value)}")
    return float(value)


def _checked_anchors(anchors: Any, source_name: str) -> int | list:
    """An anchor count per level, or one flat [w0, h0, w1, h1, ...] pixel list per level (same length each)."""
    if _is_integer(anchors) and 1 <= anchors <= MAX_ANCHORS_PER_LEVEL:
        return anchors
    if (isinstance(anchors, list) and anchors and all(isinstance(level, list) for level in anchors)
            and len({len(level) for level in anchors}) == 1 and len(anchors[0]) % 2 == 0
            and 2 <= len(anchors[0]) <= 2 * MAX_ANCHORS_PER_LEVEL
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and 0 < v <= MAX_ANCHOR_PIXELS for level in anchors for v in level)):
        return anchors
    raise ConfigError(f"{source_name}: anchors: expected an anchor count per level (1 to {MAX_ANCHORS_PER_LEVEL}) or "
                      f"one list per level of w, h pixel pairs (the same number on every level, each size in "
                      f"(0, {MAX_ANCHOR_PIXELS:g}]), got {_short(anchors)}")


def _checked_size(entry, args: list, copies: int, budget: list[int]) -> None:
    """Build the layer on the meta device (no memory) and charge its parameters and buffers to ``budget``."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "initializing zero-element tensors": reported below as an error
            probe = entry.builder(*args)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise ConfigError(f"cannot construct with args {_short(args)}: {error}") from None
    empty = [name for name, parameter in probe.named_parameters() if parameter.numel() == 0]
    if empty:
        raise ConfigError(f"args {_short(args)} give the empty weight(s) {', '.join(empty)} (a size of 0)")
    size = copies * sum(tensor.numel() for tensor in (*probe.parameters(), *probe.buffers()))
    if size > budget[0]:
        raise ConfigError(f"would hold {size:,} parameters and buffers; a model may have at most "
                          f"{MAX_PARAMETERS:,} in all")
    budget[0] -= size


def _build_layer(index: int, line: Any, channels: list[int], strides: list[float], in_channels: int,
                 symbols: dict, depth_multiple: float, width_multiple: float, num_outputs: int, budget: list[int]
                 ) -> tuple[nn.Module, LayerRecord]:
    if not isinstance(line, list) or len(line) != 4:
        raise ConfigError(f"a layer is [from, number, module, args], got {_short(line)}")
    raw_from, repeats, module_name, raw_args = line
    entry = lookup(module_name)                                                    # look up
    if not _is_integer(repeats) or not 1 <= repeats <= MAX_REPEATS:
        raise ConfigError(f"'number' must be an integer from 1 to {MAX_REPEATS}, got {_short(repeats)}")
    if not 1 <= _depth(repeats, depth_multiple) <= MAX_REPEATS:
        raise ConfigError(f"'number' {repeats} x depth_multiple {depth_multiple:g} = {_depth(repeats, depth_multiple)} "
                          f"repeats; at most {MAX_REPEATS}")
    if not isinstance(raw_args, list):
        raise ConfigError(f"args must be a list, got {raw_args!r}")
    sources = _sources(raw_from, index)
    input_channels = [in_channels if s == -1 else channels[s] for s in sources]
    input_strides = [1.0 if s == -1 else strides[s] for s in sources]
    if any(c is None for c in input_channels):
        raise ConfigError("takes its input from a detection head")
    args = resolve_symbol(raw_args, symbols)
    inputs = LayerInputs(args, input_channels, input_strides, _depth(repeats, depth_multiple), width_multiple,
                         num_outputs)
    resolved = entry.channel_rule(inputs)                                          # resolve
    try:
        bound = entry.signature().bind(*resolved.args)
    except TypeError as error:
        raise ConfigError(f"wrong arguments {raw_args!r}: {error} (signature {entry.signature()})") from None
    bound.apply_defaults()
    if not entry.is_head and len(set(input_strides)) > 1:
        raise ConfigError(f"inputs have different strides {input_strides} (layers {sources})")
    copies = 1 if resolved.consumes_repeats else inputs.repeats
    if copies > 1 and resolved.out_channels not in (None, *input_channels[:1]):
        raise ConfigError(f"cannot repeat it {copies} times: it maps {input_channels[0]} to "
                          f"{resolved.out_channels} channels")
    if resolved.out_channels is not None and not 1 <= resolved.out_channels <= MAX_CHANNELS:
        raise ConfigError(f"would output {resolved.out_channels} channels; a layer may have 1 to {MAX_CHANNELS}")
    _checked_size(entry, resolved.args, copies, budget)
    try:                                                                           # construct
        built = [entry.builder(*resolved.args) for _ in range(copies)]
        stride = input_strides[0] if entry.is_head else input_strides[0] * float(entry.output_stride(bound.arguments)) ** copies
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot construct with args {raw_args!r}: {error}") from None
    if not (math.isfinite(stride) and stride > 0):
        raise ConfigError(f"args {_short(raw_args)} give an output stride of {stride:g}")
    module = built[0] if copies == 1 else nn.Sequential(*built)
    record = LayerRecord(index, sources, repeats, module_name, args, resolved.out_channels, stride,  # record
                         entry.takes_list)
    return module, record
