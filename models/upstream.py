"""Importing official YOLOv5 / YOLOv7 checkpoints without running their code.

Official checkpoints pickle whole modules (``models.yolo.Model``, ``models.common.C3`` ...), so ``torch.load``
would have to run code from the file to read them. ``read_upstream_checkpoint`` reads them with the restricted
unpickler of models/unpickle.py instead, where those classes come back as inert ``UpstreamRecord``s. The recovered
tensors are renamed to our layout by walking the rebuilt model with each module's ``upstream_names``
(see ``models/registry.py``), so no per-architecture table exists here.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from models.modules.activation import is_activation, parse_activation
from models.registry import ConfigError, lookup
from models.unpickle import MAX_LISTED, CheckpointError, UpstreamRecord, restricted_load
from models.yolo import DetectionModel

logger = logging.getLogger(__name__)

# Head buffers that the upstream code derives from the anchors (not learned); ours has no counterpart.
DERIVED_UPSTREAM_BUFFERS = ("anchor_grid",)
YOLOV7_MODULES = frozenset({"IDetect", "IAuxDetect", "IKeypoint", "IBin", "MP", "SP", "SPPCSPC", "RepConv", "ReOrg",
                            "DownC", "Shortcut"})


# ---------------------------------------------------------------------------------------------------- upstream import


@dataclass
class UpstreamCheckpoint:
    """What an official YOLOv5/YOLOv7 checkpoint holds, recovered without running its code."""

    path: Path
    state_dict: dict[str, torch.Tensor]     # upstream key names (model.<i>....), float32
    yaml: dict | None                       # the model YAML the upstream code built from (model.yaml)
    names: list[str] | None
    stride: list[float] | None
    epoch: int
    best_fitness: float | None
    used_ema: bool
    family: str                             # "yolov5" or "yolov7"
    root: UpstreamRecord = field(repr=False)

    @property
    def anchors(self) -> torch.Tensor | None:
        """The head's ``anchors`` buffer (levels, anchors, 2) in grid units, if present."""
        matches = [v for k, v in self.state_dict.items() if k.endswith(".anchors")]
        return matches[-1] if matches else None


def read_upstream_checkpoint(path: str | Path, use_ema: bool = True) -> UpstreamCheckpoint:
    """Recover tensors, YAML, class names and strides from an official checkpoint (restricted unpickling)."""
    path = Path(path)
    payload = restricted_load(path)
    model_record = _pick_model_record(path, payload, use_ema)
    used_ema = isinstance(payload, dict) and model_record is payload.get("ema")
    state = _record_state_dict(model_record, "", set())
    if not state:
        raise CheckpointError(f"{path}: the pickled model holds no tensors")
    yaml_dict = model_record.get("yaml")
    names = _plain_names(model_record.get("names"), path)
    stride = model_record.get("stride")
    epoch = payload.get("epoch", -1) if isinstance(payload, dict) else -1
    fitness = payload.get("best_fitness") if isinstance(payload, dict) else None
    return UpstreamCheckpoint(
        path=path,
        state_dict={k: v.float() if v.is_floating_point() else v for k, v in state.items()},
        yaml=copy.deepcopy(yaml_dict) if isinstance(yaml_dict, dict) else None,
        names=names,
        stride=[float(s) for s in stride.flatten().tolist()] if isinstance(stride, torch.Tensor) else None,
        epoch=_plain_int(epoch, -1),
        best_fitness=_plain_float(fitness),
        used_ema=used_ema,
        family=_family(yaml_dict),
        root=model_record,
    )


def _pick_model_record(path: Path, payload: Any, use_ema: bool) -> UpstreamRecord:
    if isinstance(payload, UpstreamRecord):
        return payload
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict with a pickled 'model', got {type(payload).__name__}")
    candidates = (["ema"] if use_ema else []) + ["model"]
    for key in candidates:
        record = payload.get(key)
        if isinstance(record, UpstreamRecord) and isinstance(record.get("ema"), UpstreamRecord):
            record = record.get("ema")  # a ModelEMA object rather than its averaged model
        if isinstance(record, UpstreamRecord) and record.children():
            return record
    raise CheckpointError(f"{path}: no pickled model under {' / '.join(repr(k) for k in candidates)} "
                          f"(keys: {sorted(map(str, payload))[:MAX_LISTED]})")


def _record_state_dict(record: UpstreamRecord, prefix: str, visiting: set[int]) -> dict[str, torch.Tensor]:
    if id(record) in visiting:
        raise CheckpointError(f"the module tree loops back on itself at {prefix or '<root>'}")
    visiting = visiting | {id(record)}
    state: dict[str, torch.Tensor] = {}
    skipped = record.get("_non_persistent_buffers_set")
    skipped = set(skipped) if isinstance(skipped, (set, frozenset, list, tuple)) else set()
    for group in ("_parameters", "_buffers"):
        tensors = record.get(group) or {}
        if not isinstance(tensors, Mapping):
            raise CheckpointError(f"{prefix or '<root>'}: {group} is a {type(tensors).__name__}, not a dict")
        for name, tensor in tensors.items():
            if tensor is None or (group == "_buffers" and name in skipped):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            state[f"{prefix}{name}"] = tensor
    for name, child in record.children().items():
        if isinstance(child, UpstreamRecord):
            state.update(_record_state_dict(child, f"{prefix}{name}.", visiting))
        elif child is not None:
            raise CheckpointError(f"{prefix}{name} is a {type(child).__name__}, not a module")
    return state


def _plain_names(names: Any, path: Path) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, Mapping):
        try:
            names = [names[key] for key in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: class names dict has non-integer keys") from None
    if not isinstance(names, (list, tuple)):
        raise CheckpointError(f"{path}: class names are a {type(names).__name__}, expected a list or dict")
    return [str(name) for name in names]


def _plain_int(value: Any, default: int) -> int:
    try:
        return int(np.asarray(value).reshape(-1)[0]) if value is not None else default
    except (TypeError, ValueError, IndexError):
        return default


def _plain_float(value: Any) -> float | None:
    try:
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) if value is not None else None
    except (TypeError, ValueError, IndexError):
        return None


def _family(yaml_dict: Any) -> str:
    if not isinstance(yaml_dict, dict):
        return "yolov5"
    layers = list(yaml_dict.get("backbone") or []) + list(yaml_dict.get("head") or [])
    modules = {line[2] for line in layers if isinstance(line, list) and len(line) == 4 and isinstance(line[2], str)}
    return "yolov7" if modules & YOLOV7_MODULES else "yolov5"


def upstream_model_config(yaml_dict: dict, origin: str = "<checkpoint>") -> dict:
    """An upstream model YAML dict, rewritten where its arguments differ from our parser's.

    * YOLOv7 (and YOLOv5 <= v6.2) Conv takes ``act`` as its 6th YAML argument, where our Conv has ``dilation``: an
      activation there becomes the model-wide ``activation:`` key (all Convs must agree), a bool moves to ``act``.
    """
    data = copy.deepcopy(yaml_dict)
    data.setdefault("yaml_file", origin)
    activations: dict[int, str] = {}
    plain_convs: list[int] = []
    layers = [line for section in ("backbone", "head") for line in data.get(section) or []]
    for index, line in enumerate(layers):
        if not (isinstance(line, list) and len(line) == 4 and line[2] == "Conv"):
            continue
        args = line[3]
        if not isinstance(args, list) or len(args) < 6:
            plain_convs.append(index)
            continue
        sixth = args[5]
        if isinstance(sixth, str):
            try:
                parse_activation(sixth)
            except ValueError as error:
                raise ConfigError(f"{origin}: layer {index} (Conv): {error}") from None
            activations[index] = sixth.strip()
            line[3] = args[:5] + args[6:]
        elif isinstance(sixth, bool):
            line[3] = args[:5] + [1, sixth] + args[6:]
            if sixth:  # act=True is the upstream default activation; act=False (Identity) fits any model-wide one
                plain_convs.append(index)
        else:
            plain_convs.append(index)
    if not activations:
        return data
    kinds = {_activation_key(text) for text in activations.values()}
    if data.get("activation"):
        kinds.add(_activation_key(str(data["activation"])))
    if len(kinds) > 1 or plain_convs:
        detail = ", ".join(f"layer {i}: {text}" for i, text in list(activations.items())[:MAX_LISTED])
        raise ConfigError(f"{origin}: Convs pass different activations ({detail}"
                          f"{'; default activation at layers ' + str(plain_convs[:MAX_LISTED]) if plain_convs else ''}"
                          f"{'; YAML activation: ' + str(data['activation']) if data.get('activation') else ''}); "
                          "our parser sets one model-wide activation, so this model cannot be rebuilt")
    data["activation"] = next(iter(activations.values()))
    return data


def _activation_key(text: str) -> tuple:
    module = parse_activation(text)
    return type(module).__name__, getattr(module, "negative_slope", None)


# --------------------------------------------------------------------------------------------------------- key mapping


def _child_names(module: nn.Module) -> dict[str, str]:
    """``upstream name -> our name`` for the direct children and tensors of ``module``."""
    return dict(getattr(type(module), "upstream_names", {}) or {})


def upstream_path(model: DetectionModel, path: str) -> str:
    """Our dotted path (``layers.13.blocks.0.reduce.conv.weight``) -> upstream's (``model.13.m.0.cv1.conv.weight``).

    Each segment is renamed by the module that owns it: the layer's registry entry at the top, then each child's
    ``upstream_names``; names without an entry are the same in both codebases.
    """
    parts = path.split(".")
    if len(parts) < 2 or parts[0] != "layers" or not parts[1].isdigit():
        raise KeyError(f"{path!r} is not a path under layers.<index>")
    index = int(parts[1])
    module: nn.Module | None = model.layers[index]
    entry = lookup(model.records[index].module_name)
    names = entry.upstream_names if isinstance(entry.builder, type) and isinstance(module, entry.builder) else {}
    renamed = ["model", parts[1]]
    for part in parts[2:]:
        ours_to_upstream = {ours: upstream for upstream, ours in names.items()}
        renamed.append(ours_to_upstream.get(part, part))
        module = module._modules.get(part) if module is not None and part in module._modules else None
        names = _child_names(module) if module is not None else {}
    return ".".join(renamed)


def upstream_key_map(model: DetectionModel) -> dict[str, str]:
    """``our state_dict key -> upstream key`` for every tensor of ``model``."""
    mapping = {key: upstream_path(model, key) for key in model.state_dict()}
    seen: dict[str, str] = {}
    for key, upstream in mapping.items():
        if upstream in seen:
            raise KeyError(f"upstream_names map both {seen[upstream]} and {key} to {upstream}")
        seen[upstream] = key
    return mapping


def rename_upstream_state(model: DetectionModel, upstream_state: Mapping[str, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
    """Upstream tensors renamed to ``model``'s keys (those with a counterpart; shapes are not checked here)."""
    return {key: upstream_state[upstream] for key, upstream in upstream_key_map(model).items()
            if upstream in upstream_state}


def head_stride_key(model: DetectionModel) -> str:
    return f"layers.{len(model.layers) - 1}.stride"


def match_upstream_state(model: DetectionModel, upstream: UpstreamCheckpoint) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` from the upstream checkpoint, or a ``CheckpointError`` listing what differs."""
    expected = model.state_dict()
    head = len(model.layers) - 1
    ignored = {f"model.{head}.{name}" for name in DERIVED_UPSTREAM_BUFFERS}
    stride_key = head_stride_key(model)
    if upstream.stride is not None and [float(s) for s in expected[stride_key].tolist()] != upstream.stride:
        raise CheckpointError(f"{upstream.path}: checkpoint strides {upstream.stride} differ from the rebuilt model's "
                              f"{expected[stride_key].tolist()}")
    mapping = upstream_key_map(model)
    state, missing, wrong_shape = {}, [], []
    for key, upstream_key in mapping.items():
        if key == stride_key:
            state[key] = expected[key]  # upstream keeps strides as a plain attribute, checked above
        elif upstream_key not in upstream.state_dict:
            missing.append(f"{upstream_key} (our {key})")
        elif upstream.state_dict[upstream_key].shape != expected[key].shape:
            wrong_shape.append(f"{upstream_key} {tuple(upstream.state_dict[upstream_key].shape)} vs our {key} "
                               f"{tuple(expected[key].shape)}")
        else:
            state[key] = upstream.state_dict[upstream_key].to(expected[key].dtype)
    unexpected = sorted(set(upstream.state_dict) - set(mapping.values()) - ignored)
    if missing or wrong_shape or unexpected:
        raise CheckpointError(mismatch_message(str(upstream.path), missing, wrong_shape, unexpected))
    return state


def mismatch_message(origin: str, missing: list, wrong_shape: list, unexpected: list) -> str:
    parts = [f"{origin}: the checkpoint does not match the model it describes"]
    for title, items in (("missing", missing), ("shape differs", wrong_shape), ("unexpected", unexpected)):
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            parts.append(f"{title}: {', '.join(items[:MAX_LISTED])}{more}")
    return "; ".join(parts)


def activation_differences(model: DetectionModel, root: UpstreamRecord) -> list[str]:
    """Where ``model``'s activations differ from the upstream module tree's (they hold no tensors, so a wrong one
    would otherwise load silently)."""
    sequential = root.find("model")
    problems = []
    for name, module in model.named_modules():
        if not name.startswith("layers.") or not is_activation(module):
            continue
        record = sequential.find(upstream_path(model, name).partition(".")[2]) if sequential else None
        if record is None:
            continue
        theirs = (record.source_name, _plain_float(record.get("negative_slope")))
        ours = (type(module).__name__, _plain_float(getattr(module, "negative_slope", None)))
        if theirs != ours:
            problems.append(f"{name}: checkpoint {theirs[0]}{'' if theirs[1] is None else f'({theirs[1]:g})'}, "
                            f"rebuilt {ours[0]}{'' if ours[1] is None else f'({ours[1]:g})'}")
    return problems


def activation_message(origin: str, problems: list[str]) -> str:
    more = f" (+{len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return (f"{origin}: the rebuilt model's activations differ from the checkpoint's: "
            f"{'; '.join(problems[:MAX_LISTED])}{more}. Its model YAML does not say which activation the upstream "
            "code used; pass a cfg with the matching model-wide 'activation:' to transfer the weights into it")
