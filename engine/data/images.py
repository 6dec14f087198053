"""Image files: the suffixes that count as images, decoding one to BGR uint8, and the ``.npy`` disk cache."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def read_path_list(list_file: Path, error: type[Exception]) -> Iterator[tuple[int, str, Path]]:
    """The entries of a ``.txt`` list of paths: ``(line number, entry, path)``, one per line, with blank lines and
    lines starting with ``#`` ignored and relative paths taken relative to the list's folder. A file that cannot
    be read raises ``error`` with the file and the reason."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{list_file}: cannot read the list of paths ({problem})") from problem
    for line_number, line in enumerate(lines, 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry).expanduser()
            yield line_number, entry, Path(os.path.abspath(path if path.is_absolute() else list_file.parent / path))


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode an image file to BGR uint8 (H, W, 3), applying EXIF orientation; None when unreadable."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def read_disk_cached(path: Path) -> np.ndarray | None:
    cached_path = path.with_name(path.name + ".npy")
    try:
        if cached_path.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            return np.load(cached_path, allow_pickle=False)
    except (OSError, ValueError):
        pass
    image = read_image(path)
    if image is not None:
        temporary = cached_path.with_name(f"{cached_path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                np.save(file, image, allow_pickle=False)
            os.replace(temporary, cached_path)
        except OSError as error:
            logger.warning("cannot write the image cache %s (%s)", cached_path, error.strerror or error)
            temporary.unlink(missing_ok=True)
    return image


def available_memory() -> int | None:
    """Bytes of memory the kernel considers available (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
