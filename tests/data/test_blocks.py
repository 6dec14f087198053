"""The main job's blocks dataset: determinism, exact and separate boxes, contrast, the YAML."""
from __future__ import annotations


import numpy as np
import yaml

from data.blocks import (CLASS_NAMES, MAX_EXTENT, MAX_OBJECTS, MIN_CONTRAST, generate_dataset, render,
                         render_with_map)
from engine.data.dataset import YoloDataset
from generated_data import assert_deterministic
from helpers import REPO


def test_generator_is_deterministic_and_loadable(tmp_path):
    assert_deterministic(generate_dataset, tmp_path, num_train=4, num_val=2, seed=5)
    dataset = YoloDataset(tmp_path / "one" / "images" / "train", imgsz=128, num_classes=len(CLASS_NAMES))
    assert len(dataset) == 4 and dataset.summary["bad_labels"] == 0 and dataset.summary["clipped"] == 0


def test_boxes_are_tight_separate_and_stand_out():
    counts, sizes, classes_seen = [], [], set()
    for index in range(40):
        image, classes, boxes, instance_map = render_with_map(np.random.default_rng([0, 0, index]), 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        counts.append(len(classes))
        classes_seen.update(classes.tolist())
        for object_id, box in enumerate(boxes, 1):
            ys, xs = np.nonzero(instance_map == object_id)
            assert (box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).all()
            # Objects never touch: inside its box, only the object itself or the background.
            x1, y1, x2, y2 = box.astype(int)
            assert set(np.unique(instance_map[y1:y2, x1:x2]).tolist()) <= {0, object_id}
            sizes.append(max(x2 - x1, y2 - y1) / 128)
            inside = image[ys, xs].astype(np.float32)
            ring = (instance_map[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] == 0)
            around = image[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2][ring].astype(np.float32)
            assert np.linalg.norm(np.median(inside, 0) - np.median(around, 0)) > MIN_CONTRAST / 3
        # render() is render_with_map() without the map, drawn from the same generator.
        same = render(np.random.default_rng([0, 0, index]), 128)
        assert (same[0] == image).all() and (same[2] == boxes).all()
    assert 1 <= min(counts) and max(counts) <= MAX_OBJECTS and np.mean(counts) > 3
    assert classes_seen == set(range(len(CLASS_NAMES)))
    assert 0.05 < min(sizes) and max(sizes) <= MAX_EXTENT * 1.5


def test_yaml_names_the_generator_and_the_classes():
    content = yaml.safe_load((REPO / "data" / "blocks.yaml").read_text())
    assert content["generator"] == "blocks" and content["names"] == list(CLASS_NAMES)
