"""The media detect.py reads: --source resolution (file, folder, glob, .txt list) and image / video frames."""
from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.data.images import IMAGE_SUFFIXES, read_image, read_path_list
from models.errors import UsageError

VIDEO_SUFFIXES = (".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".webm", ".wmv")
NETWORK_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "tcp://", "udp://")

SOURCE_HELP = ("give an image, a video, a folder of images/videos, a glob pattern such as 'images/*.jpg', "
               "or a .txt file listing one path per line")


class SourceError(UsageError):
    """A --source that cannot be used; the message says what is wrong and what to give instead."""


def media_kind(path: str | Path) -> str | None:
    """'image', 'video' or None, by file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _supported() -> str:
    return f"images ({' '.join(IMAGE_SUFFIXES)}) or videos ({' '.join(VIDEO_SUFFIXES)})"


def resolve_source(source: str | Path) -> tuple[list[Path], list[str]]:
    """Expand --source into media files: (files in order, problems with listed entries).

    A folder gives its images and videos (not recursive, sorted); a pattern with ``*``, ``?`` or ``[``
    is a glob (``**`` recurses); a ``.txt`` file lists one path per line (relative to the list's folder;
    blank lines and lines starting with ``#`` ignored). Listed entries that are missing or not media are
    reported in the problems list and skipped. URLs, streams and webcams raise :class:`SourceError`, as
    does a source that yields no file at all.
    """
    text = str(source).strip()
    if not text:
        raise SourceError(f"--source is empty; {SOURCE_HELP}")
    if text.lower().startswith(NETWORK_PREFIXES) or text.lower().endswith(".streams"):
        raise SourceError(f"--source {text}: URLs and streams are not supported (this tool works offline); "
                          f"download the file and {SOURCE_HELP}")
    if text.isdigit():
        raise SourceError(f"--source {text}: webcams are not supported; record a video file and pass its path")
    path = Path(text).expanduser()
    problems: list[str] = []
    if path.is_dir():
        files = sorted(item for item in path.iterdir() if item.is_file() and media_kind(item))
        if not files:
            raise SourceError(f"--source {path}: the folder holds no {_supported()}")
        return files, problems
    if path.is_file():
        if path.suffix.lower() == ".txt":
            return _read_source_list(path)
        if media_kind(path) is None:
            raise SourceError(f"--source {path}: unsupported file type '{path.suffix}'; expected {_supported()}, "
                              "or a .txt list of paths")
        return [path], problems
    if glob.has_magic(text):
        matches = sorted(Path(item) for item in glob.glob(os.path.expanduser(text), recursive=True))
        files = [item for item in matches if item.is_file() and media_kind(item)]
        if not files:
            raise SourceError(f"--source {text}: the pattern matches no {_supported()}")
        return files, problems
    raise SourceError(f"--source {text}: no such file or folder; {SOURCE_HELP}")


def _read_source_list(list_file: Path) -> tuple[list[Path], list[str]]:
    files, problems = [], []
    for line_number, entry, path in read_path_list(list_file, SourceError):
        if entry.lower().startswith(NETWORK_PREFIXES):
            problems.append(f"{list_file}: line {line_number}: {entry} skipped, URLs are not supported")
        elif media_kind(path) is None:
            problems.append(f"{list_file}: line {line_number}: {entry} skipped, not one of the {_supported()}")
        elif not path.is_file():
            problems.append(f"{list_file}: line {line_number}: {path} skipped, file not found")
        else:
            files.append(path)
    if not files:
        detail = f" ({len(problems)} unusable entries, first: {problems[0]})" if problems else ""
        raise SourceError(f"--source {list_file}: the list names no readable image or video{detail}")
    return files, problems


@dataclass
class Frame:
    """One image, or one frame of a video, read from a source (``image`` is BGR uint8 (H, W, 3))."""

    path: Path
    image: np.ndarray = field(repr=False)
    index: int                  # position of the file among the source's files, 0-based
    kind: str                   # 'image' or 'video'
    frame: int = 0              # 1-based frame number within a video
    frame_count: int = 0        # frames the video container announces (0 when unknown)
    fps: float = 0.0


def iterate_frames(files: Sequence[Path], on_error: Callable[[Path, str], None]) -> Iterator[Frame]:
    """Yield every image and every video frame of ``files`` in order.

    A file that cannot be decoded is passed to ``on_error(path, reason)`` and skipped; the rest go on.
    """
    for index, path in enumerate(files):
        if media_kind(path) == "image":
            image = read_image(path)
            if image is None:
                on_error(path, "file not found" if not path.exists() else "cannot be decoded as an image")
                continue
            yield Frame(path, image, index, "image")
            continue
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                on_error(path, "cannot be opened as a video")
                continue
            frame_count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            number = 0
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                number += 1
                yield Frame(path, image, index, "video", number, frame_count, fps)
            if number == 0:
                on_error(path, "no frame could be decoded")
        finally:
            capture.release()
