"""What the tests of every generated dataset check first: the generator writes the same bytes twice."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by its path relative to ``root``."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def assert_deterministic(generate: Callable[..., Path], folder: Path, num_train: int, num_val: int,
                         seed: int) -> dict[str, bytes]:
    """Generate into ``folder``/one and ``folder``/two with the same arguments; both must hold the same files, byte
    for byte (an image and a label file per sample, and data.yaml). Returns the first one's files."""
    first = file_bytes(generate(folder / "one", num_train=num_train, num_val=num_val, seed=seed))
    second = file_bytes(generate(folder / "two", num_train=num_train, num_val=num_val, seed=seed))
    assert len(first) == 2 * (num_train + num_val) + 1
    assert first == second
    return first
