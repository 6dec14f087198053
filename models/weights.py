"""Checkpoints: our plain-data format, and ``load_model``, the one loader train/val/detect/export use.

Our checkpoints are dicts of plain types and tensors (``format: slimneck-yolo-checkpoint``), written atomically
and read back with ``torch.load(weights_only=True)``. ``load_model`` accepts them, bare state_dicts, and official
YOLOv5 / YOLOv7 ``.pt`` files, which ``models/upstream.py`` reads without running their code; every file first
passes that module's pickle scan, which refuses anything that could execute code.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path, PurePath
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from models.registry import ConfigError
from models.unpickle import (
    MAX_LISTED,
    CheckpointError,
    UnsafeCheckpointError,
    inspect_checkpoint,
    upstream_globals,
)
from models.upstream import (
    activation_differences,
    activation_message,
    head_stride_key,
    match_upstream_state,
    mismatch_message,
    read_upstream_checkpoint,
    rename_upstream_state,
    upstream_model_config,
)
from models.yolo import DetectionModel

__all__ = ["FORMAT_NAME", "CheckpointError", "UnsafeCheckpointError", "build_checkpoint", "load_checkpoint",
           "load_model", "save_checkpoint", "strip_training_state", "to_plain", "transfer_state_dict"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "slimneck-yolo-checkpoint"
FORMAT_VERSION = 1
REQUIRED_FIELDS = ("format", "version", "model_cfg", "names", "model")
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "ema": None, "ema_updates": 0, "optimizer": None, "scheduler": None, "epoch": -1, "best_fitness": 0.0,
    "hyp": {}, "options": {}, "date": "", "extra": {},
}


# ----------------------------------------------------------------------------------------------------------- our format


def to_plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with paths, numpy values, namespaces and datetimes turned into plain types; tensors kept.

    Raises TypeError naming ``where`` (a key path) for anything else, so a checkpoint never pickles an object.
    """
    if isinstance(value, np.generic):  # before the float check: np.float64 is a float subclass
        return value.item()
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    for plain_type in (bool, int, float, str):  # enum members, str subclasses ... would pickle as their own class
        if isinstance(value, plain_type):
            return plain_type(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; checkpoint keys must be plain")
            plain[key] = to_plain(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, tuple):
        return tuple(to_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, list):
        return [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot go into a checkpoint "
                    "(only dict/list/tuple/str/int/float/bool/None/tensors)")


def _cpu_float_state(state: Mapping[str, torch.Tensor] | nn.Module, where: str) -> dict[str, torch.Tensor]:
    if isinstance(state, nn.Module):
        state = state.state_dict()
    result = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{where}[{key!r}] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu().contiguous()  # a channels_last training model saves in the NCHW layout
        result[key] = tensor.float() if tensor.is_floating_point() else tensor
    return result


def build_checkpoint(model: DetectionModel, ema_state: Mapping[str, torch.Tensor] | nn.Module | None = None,
                     **fields: Any) -> dict:
    """Our checkpoint dict for ``model``: format, version, model_cfg, names and the fp32 CPU state_dict filled in;
    ``ema_state`` (a state_dict or the EMA module) and any of ``CHECKPOINT_DEFAULTS``' keys given as keywords.

    ``model_cfg`` is the YAML dict the model was built from, plus ``ch`` (its input channels).
    """
    unknown = sorted(set(fields) - set(CHECKPOINT_DEFAULTS))
    if unknown:
        raise TypeError(f"build_checkpoint: unknown field(s) {unknown}; known: {sorted(CHECKPOINT_DEFAULTS)} "
                        "(put anything else in extra={...})")
    payload = copy.deepcopy({key: value for key, value in CHECKPOINT_DEFAULTS.items() if key not in fields})
    payload.update(fields)
    if not payload["date"]:
        payload["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    payload.update({
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_cfg": to_plain({**model.cfg, "ch": model.in_channels}, "model_cfg"),
        "names": [str(name) for name in model.names],
        "model": _cpu_float_state(model, "model"),
        "ema": None if ema_state is None else _cpu_float_state(ema_state, "ema"),
    })
    return payload


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (from ``build_checkpoint``) atomically: a temp file in the same folder, fsync, rename.

    A crash or an error mid-write leaves any previous file at ``path`` untouched.
    """
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ValueError(f"save_checkpoint({path}): payload is not a {FORMAT_NAME} dict; make it with build_checkpoint")
    plain = to_plain(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(plain, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def strip_training_state(path: str | Path) -> int:
    """Turn a finished run's checkpoint into a deploy / fine-tuning one, in place (atomically): the EMA weights
    become ``model``; the optimizer, scheduler and second weight copy are dropped (about a third of the size left).
    Returns the new size in bytes. Such a checkpoint cannot be resumed (it has no optimizer state)."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    if checkpoint["ema"] is not None:
        checkpoint["model"] = checkpoint["ema"]
    checkpoint.update(ema=None, optimizer=None, scheduler=None)
    extra = {key: value for key, value in checkpoint["extra"].items() if key not in ("grad_scaler", "last_step")}
    checkpoint["extra"] = {**extra, "stripped": True}
    save_checkpoint(path, checkpoint)
    return path.stat().st_size


def _fsync_directory(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed; not every platform allows this.
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def load_checkpoint(path: str | Path) -> dict:
    """Read one of our checkpoints with ``torch.load(weights_only=True)`` and check its fields.

    Official YOLOv5/YOLOv7 files are refused here with a pointer to ``load_model`` / ``python -m models.convert``.
    """
    path = Path(path)
    kind, references = inspect_checkpoint(path)
    if kind == "upstream":
        raise CheckpointError(f"{path}: this is an official YOLOv5/YOLOv7 checkpoint (it pickles "
                              f"{upstream_globals(references)[0]}), not a {FORMAT_NAME}; load it with "
                              f"models.weights.load_model() or convert it with `python -m models.convert {path}`")
    payload = _torch_load_plain(path)
    return _validate_ours(path, payload)


def _torch_load_plain(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True): {first_line}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: cannot be read, the file is probably truncated or corrupt ({error})") from None


def _validate_ours(path: Path, payload: Any) -> dict:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        keys = sorted(map(str, payload))[:MAX_LISTED] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} (found {keys}); our checkpoints are written by "
                              "train.py or `python -m models.convert`")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this code reads "
                              f"({FORMAT_VERSION}); update slimneck-yolo")
    missing = [key for key in REQUIRED_FIELDS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {missing}")
    if not isinstance(payload["model_cfg"], dict) or not _is_state_dict(payload["model"]):
        raise CheckpointError(f"{path}: 'model_cfg' must be a dict and 'model' a state_dict of tensors")
    for key, default in CHECKPOINT_DEFAULTS.items():
        payload.setdefault(key, copy.deepcopy(default))
    return payload


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def match_state(model: DetectionModel, state_dict: Mapping[str, torch.Tensor], origin: str) -> dict:
    """``state_dict`` checked against ``model``'s keys and shapes (our naming), or a ``CheckpointError``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
                   for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(mismatch_message(origin, missing, wrong_shape, unexpected))
    return dict(state_dict)


# ----------------------------------------------------------------------------------------------------- transfer / load


def transfer_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Copy every tensor of ``state_dict`` (our key names) whose name and shape match one of ``model``'s.

    Returns (transferred, total tensors in ``model``). The head's ``stride`` buffer is derived from the YAML, not
    learned: it is never overwritten, and counts as transferred only when equal.
    """
    target = model.state_dict()
    stride_key = head_stride_key(model) if isinstance(model, DetectionModel) else None
    matched: dict[str, torch.Tensor] = {}
    count = 0
    for key, tensor in target.items():
        source = state_dict.get(key)
        if not isinstance(source, torch.Tensor) or source.shape != tensor.shape:
            continue
        if key == stride_key:
            count += int(torch.equal(source.to(tensor), tensor))
            continue
        matched[key] = source.detach().to(device=tensor.device, dtype=tensor.dtype)
        count += 1
    model.load_state_dict(matched, strict=False)
    skipped = [key for key in target if key not in matched and key != stride_key]
    if skipped:
        logger.debug("not transferred (%d): %s", len(skipped), ", ".join(skipped[:20]))
    return count, len(target)


def _load_exact(model: DetectionModel, make_state: Callable[[DetectionModel], dict]) -> bool:
    """Load ``make_state(model)`` strictly; if the names only fit the fused (deploy) form, fuse first.

    Returns True when the model was fused to fit the checkpoint.
    """
    try:
        state = make_state(model)
        fused = False
    except CheckpointError as unfused_error:
        model.fuse()
        try:
            state = make_state(model)
        except CheckpointError:
            raise unfused_error from None
        fused = True
        logger.info("the checkpoint holds fused (deploy) weights; the model was fused to load them")
    model.load_state_dict(state, strict=True)
    return fused


def load_model(weights: str | Path, cfg: str | Path | dict | None = None, num_classes: int | None = None,
               device: str | torch.device = "cpu", use_ema: bool = True, fuse: bool = False
               ) -> tuple[DetectionModel, dict]:
    """Build a model from a checkpoint: ours or an official YOLOv5/YOLOv7 ``.pt`` (detected automatically).

    Without ``cfg``/``num_classes`` the checkpoint's own architecture is rebuilt and every tensor loaded (strict).
    With them, that model is built and each tensor whose (mapped) name and shape match is transferred. Returns the
    model in eval mode on ``device`` and an info dict: path, source (slimneck/yolov5/yolov7/state_dict), names,
    epoch, best_fitness, used_ema, transferred, total, strict, fused.
    """
    path = Path(weights)
    kind, _ = inspect_checkpoint(path)
    if kind == "upstream":
        model, info = _load_upstream(path, cfg, num_classes, use_ema)
    else:
        model, info = _load_ours(path, cfg, num_classes, use_ema)
    if fuse:
        model.fuse()
        info["fused"] = True
    model.to(device).eval()
    info["names"] = list(model.names)
    return model, info


def _load_ours(path: Path, cfg: Any, num_classes: int | None, use_ema: bool) -> tuple[DetectionModel, dict]:
    payload = _torch_load_plain(path)
    if isinstance(payload, dict) and payload.get("format") != FORMAT_NAME:
        state = payload.get("model", payload)
        if _is_state_dict(state):
            return _load_bare_state_dict(path, state, cfg, num_classes)
    checkpoint = _validate_ours(path, payload)
    used_ema = use_ema and checkpoint.get("ema") is not None
    state = checkpoint["ema"] if used_ema else checkpoint["model"]
    info = {"path": str(path), "source": "slimneck", "epoch": checkpoint["epoch"],
            "best_fitness": checkpoint["best_fitness"], "used_ema": used_ema, "fused": False}
    model_cfg = checkpoint["model_cfg"]
    in_channels = int(model_cfg.get("ch", 3))
    names = checkpoint["names"]
    if cfg is None and (num_classes is None or num_classes == len(names)):
        try:
            model = DetectionModel(model_cfg, in_channels=in_channels, names=names)
        except ValueError as error:  # ConfigError included: the checkpoint's own YAML no longer builds
            raise CheckpointError(f"{path}: cannot rebuild the model it describes: {error}") from None
        info["fused"] = _load_exact(model, lambda m: match_state(m, state, str(path)))
        total = len(model.state_dict())
        info.update(transferred=total, total=total, strict=True)
        return model, info
    model = _target_model(cfg if cfg is not None else model_cfg, num_classes, names, in_channels)
    transferred, total = transfer_state_dict(model, state)
    _log_transfer(transferred, total, path)
    info.update(transferred=transferred, total=total, strict=False)
    return model, info


def _load_bare_state_dict(path: Path, state: Mapping[str, torch.Tensor], cfg: Any, num_classes: int | None
                          ) -> tuple[DetectionModel, dict]:
    if cfg is None:
        raise CheckpointError(f"{path}: a bare state_dict has no model YAML; pass cfg=... (--cfg) to load it")
    model = _target_model(cfg, num_classes, None, 3)
    state = dict(state)
    if all(key.startswith("model.") for key in state):
        state = rename_upstream_state(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    transferred, total = transfer_state_dict(model, state)
    _log_transfer(transferred, total, path)
    return model, {"path": str(path), "source": "state_dict", "epoch": -1, "best_fitness": None, "used_ema": False,
                   "transferred": transferred, "total": total, "strict": False, "fused": False}


def _target_model(cfg: Any, num_classes: int | None, names: list[str] | None, in_channels: int) -> DetectionModel:
    model = DetectionModel(cfg, in_channels=in_channels, num_classes=num_classes)
    if names is not None and len(names) == model.num_classes:
        model.names = list(names)
    return model


def _log_transfer(transferred: int, total: int, path: Path) -> None:
    logger.info("transferred %d/%d tensors from %s", transferred, total, path)


def _load_upstream(path: Path, cfg: Any, num_classes: int | None, use_ema: bool) -> tuple[DetectionModel, dict]:
    upstream = read_upstream_checkpoint(path, use_ema=use_ema)
    info = {"path": str(path), "source": upstream.family, "epoch": upstream.epoch,
            "best_fitness": upstream.best_fitness, "used_ema": upstream.used_ema, "fused": False}
    same_classes = num_classes is None or (upstream.names is not None and num_classes == len(upstream.names))
    strict = cfg is None and same_classes
    source_cfg, source_error = None, None
    if upstream.yaml is None:
        source_error = CheckpointError(f"{path}: the pickled model has no 'yaml' (model YAML) attribute")
    else:
        try:
            source_cfg = upstream_model_config(upstream.yaml, f"{path.name}:model.yaml")
        except ConfigError as error:
            source_error = error
    in_channels = int(source_cfg.get("ch", 3)) if source_cfg else 3
    if strict:
        if source_error is not None:
            raise CheckpointError(f"{path}: cannot rebuild its architecture: {source_error}") from None
        model = _build_source_model(path, source_cfg, in_channels, upstream.names)
        problems = activation_differences(model, upstream.root)
        if problems:
            raise CheckpointError(activation_message(str(path), problems))
        info["fused"] = _load_exact(model, lambda m: match_upstream_state(m, upstream))
        total = len(model.state_dict())
        info.update(transferred=total, total=total, strict=True)
        logger.info("loaded %s (%s%s): %d tensors", path, upstream.family, ", EMA" if upstream.used_ema else "", total)
        return model, info

    source = None
    if source_error is None:
        try:
            source = _build_source_model(path, source_cfg, in_channels, None)
        except CheckpointError as error:
            source_error = error
    if cfg is None and source is None:
        raise CheckpointError(f"{path}: cannot rebuild its architecture ({source_error}); pass a cfg to transfer "
                              "its weights into") from None
    model = _target_model(cfg if cfg is not None else source_cfg, num_classes, upstream.names, in_channels)
    if source is not None:
        problems = activation_differences(source, upstream.root)
        if problems:  # names and shapes still match, so the transfer is sound; the caller chose the activations
            logger.warning(activation_message(str(path), problems))
        renamed = rename_upstream_state(source, upstream.state_dict)
        renamed[head_stride_key(source)] = source.stride  # derived, not stored upstream; counted when equal
    else:
        logger.warning("%s; matching tensor names through the target model instead", source_error)
        renamed = rename_upstream_state(model, upstream.state_dict)
    transferred, total = transfer_state_dict(model, renamed)
    _log_transfer(transferred, total, path)
    info.update(transferred=transferred, total=total, strict=False)
    return model, info


def _build_source_model(path: Path, source_cfg: dict, in_channels: int, names: list[str] | None) -> DetectionModel:
    try:
        model = DetectionModel(source_cfg, in_channels=in_channels)
    except ConfigError as error:
        raise CheckpointError(f"{path}: cannot rebuild the checkpoint's model with slimneck-yolo's modules: "
                              f"{error}") from None
    if names is not None:
        if len(names) == model.num_classes:
            model.names = list(names)
        else:
            logger.warning("%s: %d class names for %d classes; using generic names", path, len(names),
                           model.num_classes)
    return model
