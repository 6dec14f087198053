"""Fixtures of the training tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from data.shapes import generate_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny shapes dataset (8 train and 4 val images of 256 px), one per test module."""
    folder = generate_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, image_size=256, seed=1)
    return folder / "data.yaml"
