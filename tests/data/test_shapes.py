"""The built-in shapes dataset: determinism, exact boxes, difficulty, the CLI and YAML generation."""
from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest

import data.shapes
from data.shapes import CLASS_NAMES, MIN_VISIBLE_FRACTION, generate_dataset, main, render_sample
from engine.data.config import DatasetError, load_data_config
from engine.data.dataset import YoloDataset
from generated_data import assert_deterministic, file_bytes
from helpers import REPO


def test_generator_is_deterministic(tmp_path):
    first = assert_deterministic(generate_dataset, tmp_path, num_train=4, num_val=2, seed=3)
    other = file_bytes(generate_dataset(tmp_path / "three", num_train=4, num_val=2, seed=4))
    assert other["images/train/train_00000.jpg"] != first["images/train/train_00000.jpg"]
    # A split does not depend on the size of the other split.
    bigger = file_bytes(generate_dataset(tmp_path / "four", num_train=5, num_val=1, seed=3))
    assert bigger["images/train/train_00003.jpg"] == first["images/train/train_00003.jpg"]
    assert bigger["images/val/val_00000.jpg"] == first["images/val/val_00000.jpg"]


def test_boxes_are_the_tight_boxes_of_the_drawn_pixels():
    distances = []
    for index in range(20):
        sample = render_sample(np.random.default_rng([0, 0, index]))
        assert sample.image.shape == (320, 320, 3) and sample.image.dtype == np.uint8
        for object_id, (box, color) in enumerate(zip(sample.boxes, sample.colors), 1):
            ys, xs = np.nonzero(sample.instance_map == object_id)
            assert len(xs) > 0
            assert (box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).all()
            # The pixels the map assigns to the object really carry its colour (shading and noise aside).
            pixels = sample.image[ys, xs].astype(np.float32)
            distances.append(float(np.median(np.linalg.norm(pixels - color, axis=1))))
        assert (sample.visible_fractions >= MIN_VISIBLE_FRACTION - 0.1).all()
    distances = np.array(distances)
    assert len(distances) > 40
    assert np.median(distances) < 25 and (distances < 70).mean() > 0.9


def test_written_labels_match_the_rendered_boxes(tmp_path):
    root = generate_dataset(tmp_path / "shapes", num_train=3, num_val=1, seed=7)
    for index in range(3):
        sample = render_sample(np.random.default_rng([7, 0, index]))
        rows = np.loadtxt(root / "labels" / "train" / f"train_{index:05d}.txt", ndmin=2).reshape(-1, 5)
        assert rows[:, 0].tolist() == sample.classes.tolist()
        boxes = sample.boxes / 320
        expected = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                             boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        np.testing.assert_allclose(rows[:, 1:], expected, atol=1e-6)


def test_dataset_is_varied_and_hard():
    classes, sizes, occluded, overlapping = [], [], 0, 0
    for index in range(40):
        sample = render_sample(np.random.default_rng([0, 0, index]))
        classes += sample.classes.tolist()
        sizes += (sample.boxes[:, 2:] - sample.boxes[:, :2]).max(1).tolist()
        occluded += int((sample.visible_fractions < 0.9).sum())
        boxes = sample.boxes
        for first in range(len(boxes)):
            for second in range(first + 1, len(boxes)):
                overlapping += int(boxes[first, 0] < boxes[second, 2] and boxes[second, 0] < boxes[first, 2]
                                   and boxes[first, 1] < boxes[second, 3] and boxes[second, 1] < boxes[first, 3])
    assert set(classes) == set(range(len(CLASS_NAMES)))
    assert min(sizes) < 16 and max(sizes) > 120
    assert occluded >= 10 and overlapping >= 20


def test_command_line_writes_a_loadable_dataset(tmp_path):
    main(["--out", str(tmp_path / "tiny"), "--train", "3", "--val", "2", "--seed", "1"])
    config = load_data_config(tmp_path / "tiny" / "data.yaml")
    assert len(config["train"]) == 3 and len(config["val"]) == 2 and config["names"] == list(CLASS_NAMES)
    dataset = YoloDataset(config["train"], imgsz=320, num_classes=config["nc"])
    problems = ("corrupt", "bad_labels", "unknown_class", "duplicates", "clipped", "degenerate")
    assert not any(dataset.summary[key] for key in problems)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--train", "0"])


def test_shapes_yaml_generates_its_dataset_relative_to_itself(tmp_path, monkeypatch):
    small = functools.partial(data.shapes.generate_dataset, num_train=4, num_val=2)
    monkeypatch.setattr(data.shapes, "generate_dataset", small)
    config_dir = tmp_path / "repo" / "data"
    config_dir.mkdir(parents=True)
    shutil.copy(REPO / "data" / "shapes.yaml", config_dir / "shapes.yaml")
    monkeypatch.chdir(tmp_path)
    config = load_data_config("repo/data/shapes.yaml")
    assert config["path"] == tmp_path / "repo" / "datasets" / "shapes"
    assert len(config["train"]) == 4 and len(config["val"]) == 2 and config["nc"] == 6
    assert not any(path.name.startswith(".") for path in config["path"].parent.iterdir())  # no temp left

    stamp = config["train"][0].stat().st_mtime_ns
    assert load_data_config(config_dir / "shapes.yaml")["train"] == config["train"]
    assert config["train"][0].stat().st_mtime_ns == stamp  # an existing dataset is not regenerated


def test_generator_options_from_yaml_are_checked(tmp_path):
    (tmp_path / "ok.yaml").write_text("path: gen\ntrain: images/train\nval: images/val\nnames: [a]\n"
                                      "generator: {name: shapes, num_train: 2, num_val: 1, seed: 5}\n")
    assert len(load_data_config(tmp_path / "ok.yaml")["train"]) == 2
    (tmp_path / "bad.yaml").write_text("path: gen2\ntrain: images/train\nval: images/val\nnames: [a]\n"
                                       "generator: {name: shapes, count: 2}\n")
    with pytest.raises(DatasetError, match="no option"):
        load_data_config(tmp_path / "bad.yaml")
