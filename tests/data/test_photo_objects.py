"""The second generated dataset (pen marks on real photographs): determinism, exact boxes, variety, YAML."""
from __future__ import annotations

import numpy as np
import pytest

import data.photo_objects
from data.photo_objects import (CLASS_NAMES, MAX_OBJECTS, draw_marks, generate_dataset, load_photos,
                                 render)
from engine.data.config import load_data_config
from engine.data.dataset import YoloDataset
from generated_data import assert_deterministic


def test_generator_is_deterministic_and_loadable(tmp_path):
    assert_deterministic(generate_dataset, tmp_path, num_train=3, num_val=2, seed=1)
    config = load_data_config(tmp_path / "one" / "data.yaml")
    assert config["names"] == list(CLASS_NAMES)
    dataset = YoloDataset(config["train"], imgsz=160, augment=False)
    assert len(dataset) == 3 and sum(len(labels) for labels in dataset.labels) > 0


def test_boxes_are_the_tight_boxes_of_the_marks():
    for index in range(6):
        canvas, classes, boxes, pen = draw_marks(np.random.default_rng([5, 0, index]), 320)
        assert canvas.shape == (320, 320, 3) and len(classes) == len(boxes) >= 1
        assert set(classes.tolist()) <= set(range(len(CLASS_NAMES)))
        owner = np.zeros(pen.shape, int)
        for number, (x1, y1, x2, y2) in enumerate(boxes.astype(int), 1):
            inside = pen[y1:y2, x1:x2]
            # the pen touches every edge row and column of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            owner[y1:y2, x1:x2][inside] = number
        # every pen pixel lies in some box, and no two marks share a pixel (they never touch)
        assert (owner[pen] > 0).all()
        drawn = sum(int(pen[y1:y2, x1:x2].sum()) for x1, y1, x2, y2 in boxes.astype(int))
        assert drawn >= pen.sum()
    image, classes, boxes = render(np.random.default_rng([5, 0, 0]), 320)
    assert image.dtype == np.uint8 and image.shape == (320, 320, 3)
    np.testing.assert_array_equal(boxes, draw_marks(np.random.default_rng([5, 0, 0]), 320)[2])


def test_dataset_is_varied_small_and_crowded():
    counts, sizes, seen_classes = [], [], set()
    for index in range(60):
        rng = np.random.default_rng([0, 0, index])
        _, classes, boxes = render(rng, 320)
        counts.append(len(classes))
        sizes += (boxes[:, 2:] - boxes[:, :2]).max(1).tolist()
        seen_classes |= set(classes.tolist())
    assert seen_classes == set(range(len(CLASS_NAMES)))
    assert np.mean(counts) >= 5 and max(counts) <= MAX_OBJECTS
    assert np.median(sizes) < 40  # small objects: most under an eighth of the image
    assert len(load_photos()) >= 15


def test_missing_photographs_are_a_clear_error(monkeypatch, tmp_path):
    load_photos.cache_clear()
    monkeypatch.setattr(data.photo_objects, "_skimage_data_dir", lambda: None)
    try:
        with pytest.raises(FileNotFoundError, match="pip install scikit-image"):
            generate_dataset(tmp_path / "none", num_train=1, num_val=1)
        assert not (tmp_path / "none").exists()
    finally:
        load_photos.cache_clear()


def test_yaml_names_the_generator():
    import yaml

    from engine.data.config import BUILTIN_GENERATORS

    content = yaml.safe_load((data.photo_objects.Path(data.photo_objects.__file__).parent / "photo_objects.yaml")
                             .read_text())
    assert content["generator"] == "photo_objects" and content["generator"] in BUILTIN_GENERATORS
    assert content["names"] == list(CLASS_NAMES)
