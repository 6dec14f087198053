"""Reading ``.pt`` files without trusting them: list the globals a pickle names without unpickling it, and unpickle
with an allow-list.

Every checkpoint passes ``inspect_checkpoint`` first: the globals its pickle names are listed without unpickling it,
and anything outside the allow-list is refused with ``UnsafeCheckpointError``. ``restricted_load`` then unpickles a
torch zip file: tensor and storage rebuilds, ``OrderedDict``, numpy arrays and a few harmless plain types get real
constructors; every class under ``models.*``, ``utils.*`` (also as ``yolov5.*`` or ``yolov7.*``, as pip packagings of
the upstream code pickle them) and ``torch.nn.modules.*`` becomes an inert ``UpstreamRecord`` that only stores its
pickled attributes; any other global is refused before it can be called. What the records mean for a YOLO model is
models/upstream.py's business.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import contextlib
import datetime
import io
import logging
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from models.errors import UsageError

logger = logging.getLogger(__name__)

# Classes from these modules are read as inert records (their code never runs): the YOLOv5/YOLOv7 model classes,
# their helpers, and torch.nn layers (whose constructors are harmless, but records keep the tree uniform).
UPSTREAM_CODE_PREFIXES = ("models.", "utils.", "yolov5.models.", "yolov5.utils.", "yolov7.models.", "yolov7.utils.")
RECORD_MODULE_PREFIXES = (*UPSTREAM_CODE_PREFIXES, "torch.nn.modules.")
MAX_LISTED = 8


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for a global outside the allow-list (it could run code when loaded)."""


# ------------------------------------------------------------------------------------------------------- torch zip file


@dataclass
class _Archive:
    """The records of a torch zip checkpoint: ``<root>/data.pkl`` and ``<root>/data/<key>`` storages."""

    path: Path
    zip_file: zipfile.ZipFile
    root: str

    def read(self, name: str) -> bytes:
        try:
            return self.zip_file.read(f"{self.root}/{name}")
        except KeyError:
            raise CheckpointError(f"{self.path}: record {self.root}/{name} is missing (truncated file?)") from None
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise CheckpointError(f"{self.path}: record {self.root}/{name} is unreadable ({error})") from None

    def has(self, name: str) -> bool:
        return f"{self.root}/{name}" in self.zip_file.NameToInfo


@contextlib.contextmanager
def _open_archive(path: str | Path) -> Iterator[_Archive]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            head = handle.read(2)
        if head[:1] == b"\x80":
            raise CheckpointError(f"{path}: legacy (pre-1.6, non-zip) torch format; re-save it with a recent torch "
                                  "(torch.save(torch.load(f), f)) in an environment you trust")
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint, or truncated (no zip directory found)")
    try:
        zip_file = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: cannot open the zip archive ({error})") from None
    with zip_file:
        pickles = [name for name in zip_file.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one <archive>/data.pkl record, found {len(pickles)}")
        yield _Archive(path, zip_file, pickles[0].split("/")[0])


def scan_globals(path: str | Path) -> list[str]:
    """The globals (``module.name``) that a torch checkpoint's pickle references, found without unpickling it."""
    with _open_archive(path) as archive:
        return _pickle_globals(archive.read("data.pkl"), archive.path)


def _pickle_globals(data: bytes, origin: Path) -> list[str]:
    found: list[str] = []
    recent: list[Any] = []  # what each pushing opcode put on the stack, as far as strings are concerned
    memo: dict[int, Any] = {}
    try:
        for opcode, argument, _ in pickletools.genops(data):
            name = opcode.name
            if name == "GLOBAL":
                module, _, qualname = str(argument).partition(" ")
                found.append(".".join(_python3_name(module, qualname)))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                module, qualname = recent[-2:] if len(recent) >= 2 else (None, None)
                if isinstance(module, str) and isinstance(qualname, str):
                    found.append(".".join(_python3_name(module, qualname)))
                recent.append(None)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(argument)] = recent[-1] if recent else None
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                recent.append(memo.get(int(argument)))
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                          "SHORT_BINSTRING"):
                recent.append(str(argument))
            else:
                recent.append(None)
            del recent[:-4]
    except (ValueError, EOFError) as error:
        raise CheckpointError(f"{origin}: data.pkl is not a valid pickle ({error})") from None
    return list(dict.fromkeys(found))


def upstream_globals(references: list[str]) -> list[str]:
    return [name for name in references if name.startswith(UPSTREAM_CODE_PREFIXES)]


def _refuse_unsafe(path: Path, references: list[str]) -> None:
    refused = [name for name in references if classify_global(name) == "refused"]
    if refused:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: its pickle references {', '.join(refused[:MAX_LISTED])}, which could run "
            "code. Only tensors, plain types and YOLOv5/YOLOv7/torch.nn classes (read as inert records) are "
            "accepted.")


def inspect_checkpoint(path: str | Path) -> tuple[str, list[str]]:
    """(kind, referenced globals) of a torch checkpoint, found without unpickling it. ``kind`` is ``'upstream'``
    for official YOLOv5/YOLOv7 files (they pickle ``models.*`` classes), else ``'slimneck'``.

    Raises ``UnsafeCheckpointError`` when the pickle names a global outside the allow-list.
    """
    references = scan_globals(path)
    _refuse_unsafe(Path(path), references)
    return ("upstream" if upstream_globals(references) else "slimneck"), references


# --------------------------------------------------------------------------------------------- the restricted unpickler


class UpstreamRecord:
    """An inert stand-in for an object of a class from the checkpoint's own code (``models.common.C3`` ...).

    Creating one runs nothing: constructor arguments go to ``args``/``kwargs`` and the pickled state (the
    module's ``__dict__``, with ``_modules``, ``_parameters`` and ``_buffers``) to ``fields``.
    """

    source_module = ""
    source_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "UpstreamRecord":
        record = super().__new__(cls)
        record.args, record.kwargs, record.fields, record.items = args, kwargs, {}, []
        return record

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                self.fields.update(part or {})
        elif isinstance(state, dict):
            self.fields.update(state)
        else:
            self.fields["__state__"] = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    @property
    def qualified_name(self) -> str:
        return f"{self.source_module}.{self.source_name}"

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def children(self) -> dict[str, Any]:
        modules = self.fields.get("_modules")
        return dict(modules) if isinstance(modules, Mapping) else {}

    def find(self, path: str) -> "UpstreamRecord | None":
        """The descendant record at a dotted ``_modules`` path, or None."""
        node: Any = self
        for part in path.split(".") if path else []:
            node = node.children().get(part) if isinstance(node, UpstreamRecord) else None
        return node if isinstance(node, UpstreamRecord) else None

    def __repr__(self) -> str:
        return f"<UpstreamRecord {self.qualified_name}>"


_RECORD_TYPES: dict[str, type[UpstreamRecord]] = {}


def _record_type(module: str, name: str) -> type[UpstreamRecord]:
    key = f"{module}.{name}"
    if key not in _RECORD_TYPES:
        _RECORD_TYPES[key] = type("UpstreamRecord", (UpstreamRecord,), {"source_module": module, "source_name": name})
    return _RECORD_TYPES[key]


@dataclass(frozen=True)
class _StorageKind:
    """Stands for ``torch.HalfStorage`` etc. inside a persistent id: only its dtype is used."""

    name: str
    dtype: torch.dtype


_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}


class _FlatStorage:
    """A storage read from ``data/<key>``: a 1-D tensor of its dtype (tensors are strided views of it)."""

    def __init__(self, values: torch.Tensor):
        self.values = values


def _rebuild_tensor(storage: Any, storage_offset: int, size: tuple, stride: tuple, *unused: Any) -> torch.Tensor:
    if not isinstance(storage, _FlatStorage):
        raise CheckpointError(f"tensor rebuild got {type(storage).__name__} instead of a storage record")
    try:
        return storage.values.as_strided(tuple(size), tuple(stride), int(storage_offset))
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"a tensor of size {tuple(size)} does not fit its storage ({error})") from None


def _rebuild_parameter(data: Any, *unused: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter rebuild got {type(data).__name__} instead of a tensor")
    return data


def _rebuild_from_type(function: Any, new_type: Any, args: tuple, state: Any) -> torch.Tensor:
    if function not in (_rebuild_tensor, _rebuild_parameter):
        raise CheckpointError(f"tensor subclass rebuild through {function!r} is not supported")
    return function(*args)


def _bytes_from_text(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(text, "latin1"); allow only that use of the codec.
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafeCheckpointError(f"_codecs.encode is only allowed for latin1 text, got encoding {encoding!r}")
    return text.encode("latin1")


def _path_as_text(cls: type[PurePath]) -> Callable[..., str]:
    def rebuild(*parts: str) -> str:
        return str(cls(*parts))
    return rebuild


def _numpy_globals() -> dict[str, Any]:
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[str, Any] = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray._reconstruct"] = reconstruct
        allowed[f"{package}.multiarray.scalar"] = scalar
        allowed[f"{package}.numeric._frombuffer"] = from_buffer
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType",
                 "UInt8DType", "ObjectDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return allowed


def _allowed_globals() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "_codecs.encode": _bytes_from_text,
        "argparse.Namespace": argparse.Namespace,
        "datetime.datetime": datetime.datetime,
        "datetime.date": datetime.date,
        "datetime.time": datetime.time,
        "datetime.timedelta": datetime.timedelta,
        "datetime.timezone": datetime.timezone,
    }
    for name in ("set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str", "bytes",
                 "bytearray", "slice", "range"):
        allowed[f"builtins.{name}"] = getattr(builtins, name)
    for name, dtype in _STORAGE_DTYPES.items():
        for module in ("torch", "torch.storage", "torch.cuda"):
            allowed[f"{module}.{name}"] = _StorageKind(name, dtype)
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[f"torch.{name}"] = getattr(torch, name)
    for name in ("PosixPath", "PurePosixPath", "Path"):
        allowed[f"pathlib.{name}"] = _path_as_text(PurePosixPath)
    for name in ("WindowsPath", "PureWindowsPath"):
        allowed[f"pathlib.{name}"] = _path_as_text(PureWindowsPath)
    allowed.update(_numpy_globals())
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


def _python3_name(module: str, name: str) -> tuple[str, str]:
    # Protocol-2 pickles name builtins the Python 2 way (__builtin__.set); the stock find_class renames them.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify_global(qualified_name: str) -> str:
    """``'allowed'`` (real constructor), ``'record'`` (inert record) or ``'refused'``."""
    if qualified_name in _ALLOWED_GLOBALS:
        return "allowed"
    module = qualified_name.rpartition(".")[0]
    return "record" if f"{module}.".startswith(RECORD_MODULE_PREFIXES) else "refused"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint's ``data.pkl`` without running code from it (see the module docstring)."""

    def __init__(self, archive: _Archive):
        super().__init__(io.BytesIO(archive.read("data.pkl")))
        self.archive = archive
        self.storages: dict[tuple[str, torch.dtype], _FlatStorage] = {}
        if archive.has("byteorder") and archive.read("byteorder").strip() not in (b"little", b""):
            raise CheckpointError(f"{archive.path}: big-endian checkpoints are not supported")

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        qualified = f"{module}.{name}"
        kind = classify_global(qualified)
        if kind == "allowed":
            return _ALLOWED_GLOBALS[qualified]
        if kind == "record":
            return _record_type(module, name)
        raise UnsafeCheckpointError(
            f"{self.archive.path}: refused to load the global {qualified!r}: it is not a tensor, a plain type or a "
            "YOLOv5/YOLOv7/torch.nn class, and calling it could run code. The file is unsafe or not a checkpoint.")

    def persistent_load(self, pid: Any) -> _FlatStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageKind)):
            raise CheckpointError(f"{self.archive.path}: unexpected persistent id {pid!r:.80}")
        _, kind, key, _location, _count = pid
        cache_key = (str(key), kind.dtype)
        if cache_key not in self.storages:
            raw = bytearray(self.archive.read(f"data/{key}"))
            item_size = torch.empty((), dtype=kind.dtype).element_size()
            if len(raw) % item_size:
                raise CheckpointError(f"{self.archive.path}: storage data/{key} has {len(raw)} bytes, not a multiple "
                                      f"of {item_size} ({kind.name})")
            values = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            self.storages[cache_key] = _FlatStorage(values)
        return self.storages[cache_key]


def restricted_load(path: str | Path) -> Any:
    """Unpickle any torch zip checkpoint safely: classes from the checkpoint's code come back as ``UpstreamRecord``s.

    The pickle is scanned first and refused if it names a forbidden global anywhere (``UnsafeCheckpointError``);
    the unpickler refuses it again at the point of use, so nothing from the file is ever called.
    """
    with _open_archive(path) as archive:
        _refuse_unsafe(archive.path, _pickle_globals(archive.read("data.pkl"), archive.path))
        try:
            return RestrictedUnpickler(archive).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
            raise CheckpointError(f"{archive.path}: data.pkl cannot be unpickled ({type(error).__name__}: "
                                  f"{error})") from None
