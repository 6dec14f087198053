"""Dataset YAMLs and their splits: the dataset root, class names, built-in generators, split specs and image lists."""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from engine.data.images import IMAGE_SUFFIXES, read_path_list
from models.errors import UsageError

logger = logging.getLogger(__name__)


# Built-in dataset generators a dataset YAML may name with `generator:`. A fixed table: a YAML can
# only pick one of these, never point at arbitrary code.
BUILTIN_GENERATORS = {"blocks": ("data.blocks", "generate_dataset"),
                      "shapes": ("data.shapes", "generate_dataset"),
                      "photo_objects": ("data.photo_objects", "generate_dataset")}


class DatasetError(UsageError):
    """A dataset YAML, split or file set that cannot be used; the message names the file and the reason."""


def load_data_config(yaml_file: str | Path) -> dict:
    """Read a dataset YAML and resolve its splits to image files.

    Returns a dict with ``path`` (Path, the dataset root), ``train``, ``val`` (list[Path] of image
    files), ``test`` (list[Path] or None), ``names`` (list[str]), ``nc`` (int), ``yaml_file`` (Path) and
    ``category_ids`` (the COCO category id of each class, for datasets converted from COCO; else None).
    A relative ``path`` is relative to the YAML's folder (no ``path``: the YAML's folder); relative
    split entries are relative to ``path``. A YAML with ``generator: <name>`` (one of
    ``BUILTIN_GENERATORS``) has its dataset created when the ``path`` folder is missing; a missing folder is
    otherwise an error, which quotes the YAML's ``prepare:`` text (the command that creates it), if any.
    """
    yaml_file = Path(yaml_file).expanduser()
    if not yaml_file.is_file():
        raise DatasetError(f"dataset YAML {yaml_file} does not exist")
    try:
        content = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DatasetError(f"{yaml_file}: not a readable YAML file: {error}") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{yaml_file}: expected a mapping with path, train, val and names, "
                           f"got {type(content).__name__}")
    names = _parse_names(content, yaml_file)

    root = content.get("path")
    if root is None:
        root = yaml_file.parent
    elif not isinstance(root, str):
        raise DatasetError(f"{yaml_file}: 'path' must be a string, got {root!r}")
    root = Path(os.path.abspath(yaml_file.parent / Path(root).expanduser()))

    for key in ("train", "val"):
        if content.get(key) in (None, "", []):
            raise DatasetError(f"{yaml_file}: the '{key}' split is missing or empty "
                               "(give a folder, a .txt list of images, or a list of those)")

    if content.get("generator") is not None and not root.is_dir():
        _run_generator(content["generator"], root, yaml_file)
    elif not root.is_dir():
        hint = " (downloads are not supported: fetch the data yourself)" if "download" in content else ""
        if isinstance(content.get("prepare"), str):
            hint = f"; create it with: {content['prepare'].strip()}"
        raise DatasetError(f"{yaml_file}: dataset folder {root} does not exist{hint}")

    splits = {}
    for key in ("train", "val", "test"):
        spec = content.get(key)
        if key == "test" and spec in (None, "", []):
            splits[key] = None
            continue
        splits[key] = resolve_image_files(spec, root, what=f"{yaml_file} '{key}'")
    category_ids = content.get("category_ids")
    if category_ids is not None:
        try:
            category_ids = check_category_ids(category_ids, len(names))
        except UsageError as error:
            raise DatasetError(f"{yaml_file}: {error}") from None
    return {"path": root, **splits, "names": names, "nc": len(names), "yaml_file": yaml_file.resolve(),
            "category_ids": category_ids}


def _parse_names(content: dict, yaml_file: Path) -> list[str]:
    names = content.get("names")
    if names is None:
        raise DatasetError(f"{yaml_file}: no 'names' (give the class names as a list or a "
                           "{0: name, 1: name} mapping)")
    if isinstance(names, dict):
        keys = list(names)
        if not all(isinstance(key, int) and not isinstance(key, bool) for key in keys) \
                or sorted(keys) != list(range(len(keys))):
            raise DatasetError(f"{yaml_file}: 'names' mapping keys must be the class ids 0..n-1, "
                               f"got {keys}")
        names = [names[index] for index in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{yaml_file}: 'names' must be a non-empty list or mapping, got {names!r}")
    for index, name in enumerate(names):
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise DatasetError(f"{yaml_file}: class {index} name must be a string, got {name!r}")
    names = [str(name) for name in names]
    declared = content.get("nc")
    if declared is not None and declared != len(names):
        raise DatasetError(f"{yaml_file}: nc is {declared} but 'names' has {len(names)} entries")
    return names


def _run_generator(spec: str | dict, root: Path, yaml_file: Path) -> None:
    """Create a built-in dataset at ``root``: into a temporary folder first, renamed when complete."""
    options = {}
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
    else:
        name = spec
    if name not in BUILTIN_GENERATORS:
        raise DatasetError(f"{yaml_file}: unknown generator {name!r}; built-in generators: "
                           f"{sorted(BUILTIN_GENERATORS)}")
    module_name, function_name = BUILTIN_GENERATORS[name]
    generate = getattr(importlib.import_module(module_name), function_name)
    accepted = [parameter for parameter in inspect.signature(generate).parameters if parameter != "out_dir"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"{yaml_file}: generator {name!r} has no option(s) {unknown}; "
                           f"options: {accepted}")
    logger.info("%s: creating the %r dataset in %s", yaml_file.name, name, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        generate(temporary, **options)
        os.rename(temporary, root)
        logger.info("%s: dataset ready in %s", yaml_file.name, root)
    except OSError:
        # Another process (a DDP rank) may have finished first; its copy is as good as ours.
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def resolve_image_files(spec: str | Path | Sequence[str | Path], root: Path | None = None,
                        what: str = "split") -> list[Path]:
    """Expand a split spec into image files: a folder (searched recursively), a ``.txt`` list of image
    paths (relative lines are relative to the list's folder), an image file, or a list of those.

    Relative entries are relative to ``root`` (default: the working directory). Order is kept,
    duplicates dropped. Raises ``DatasetError`` for an entry that does not exist or an empty result.
    Listed images are not opened here; unreadable ones are reported by the dataset scan.
    """
    entries = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    files: list[Path] = []
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)) or str(entry) == "":
            raise DatasetError(f"{what}: entry {entry!r} is not a path")
        path = Path(entry).expanduser()
        if root is not None and not path.is_absolute():
            path = root / path
        path = Path(os.path.abspath(path))
        if path.suffix.lower() in IMAGE_SUFFIXES:  # checked first: no filesystem call per listed image
            files.append(path)
        elif path.is_dir():
            files += sorted(item for item in path.rglob("*")
                            if item.suffix.lower() in IMAGE_SUFFIXES and item.is_file())
        elif path.suffix.lower() == ".txt" and path.is_file():
            files += _read_image_list(path)
        elif path.exists():
            raise DatasetError(f"{what}: {path} is neither a folder, a .txt list of images nor an image "
                               f"({', '.join(IMAGE_SUFFIXES)})")
        else:
            raise DatasetError(f"{what}: {path} does not exist")
    files = list(dict.fromkeys(files))
    if not files:
        raise DatasetError(f"{what}: no images found in {[str(entry) for entry in entries]}")
    return files


def _read_image_list(list_file: Path) -> list[Path]:
    files = []
    for line_number, entry, path in read_path_list(list_file, DatasetError):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{list_file}: line {line_number}: {entry!r} is not an image file "
                               f"({', '.join(IMAGE_SUFFIXES)})")
        files.append(path)
    return files


def check_category_ids(category_ids: Sequence[int] | None, num_classes: int) -> list[int]:
    """The COCO category id of each class: ``category_ids`` checked (one distinct integer per class), or 0..nc-1."""
    if category_ids is None:
        return list(range(num_classes))
    ids = list(category_ids)
    if len(ids) != num_classes or len(set(ids)) != len(ids) or not all(
            isinstance(value, int) and not isinstance(value, bool) for value in ids):
        raise UsageError(f"category_ids must be {num_classes} distinct integers (one per class), got {ids}")
    return ids
