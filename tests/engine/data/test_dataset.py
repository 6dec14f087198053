"""Dataset YAMLs, split forms, label checking and caching, rect batches, the data loader and plots."""
from __future__ import annotations

import logging
import os
import time

import cv2
import numpy as np
import pytest
import torch
import yaml

from data.check import main as check_main
from engine.boxes import scale_boxes, xywhn2xyxy
from engine.data.config import DatasetError, load_data_config
from engine.data.dataset import YoloDataset
from engine.data.labels import image_to_label_path
from engine.data.loader import collate_fn, create_dataloader
from engine.visualize import draw_boxes, plot_batch, plot_labels

NAMES = ["a", "b", "c"]


def write_image(path, width=64, height=48, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def write_labels(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row}\n" for row in rows))


def make_split(root, split, count, sizes=((64, 48),)):
    """``count`` images in root/images/split with one valid box each; returns the image paths."""
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image = root / "images" / split / f"{split}{index}.jpg"
        write_image(image, width, height, seed=index)
        write_labels(image_to_label_path(image), [f"{index % 3} 0.5 0.5 0.25 0.5"])
        paths.append(image)
    return paths


def write_yaml(path, content):
    path.write_text(yaml.safe_dump(content))
    return path


def warnings_about(caplog, text):
    return [record for record in caplog.records if record.levelno == logging.WARNING and text in record.getMessage()]


# ------------------------------------------------------------------------------------------------
# Dataset YAML forms
# ------------------------------------------------------------------------------------------------

def test_yaml_with_folders_and_name_list_resolves_relative_to_the_yaml(tmp_path, monkeypatch):
    make_split(tmp_path / "ds", "train", 3)
    make_split(tmp_path / "ds", "val", 2)
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    yaml_file = write_yaml(config_dir / "d.yaml", {"path": "../ds", "train": "images/train",
                                                   "val": "images/val", "names": NAMES})
    monkeypatch.chdir(tmp_path / "ds" / "images")  # any working directory
    config = load_data_config(yaml_file)
    assert config["path"] == tmp_path / "ds"
    assert [path.name for path in config["train"]] == ["train0.jpg", "train1.jpg", "train2.jpg"]
    assert len(config["val"]) == 2 and config["test"] is None
    assert config["names"] == NAMES and config["nc"] == 3 and config["yaml_file"] == yaml_file.resolve()


def test_yaml_with_txt_list_list_of_both_and_names_dict(tmp_path):
    train = make_split(tmp_path, "train", 2)
    extra = make_split(tmp_path, "extra", 2)
    (tmp_path / "train.txt").write_text(f"./images/train/{train[0].name}\n{train[1]}\n\n")
    write_yaml(tmp_path / "d.yaml", {"train": "train.txt", "val": ["train.txt", "images/extra"],
                                     "test": [str(extra[0])], "names": {0: "a", 1: "b", 2: "c"}, "nc": 3})
    config = load_data_config(tmp_path / "d.yaml")
    assert config["path"] == tmp_path  # no `path`: the YAML's folder
    assert config["train"] == train
    assert config["val"] == train + extra
    assert config["test"] == [extra[0]]
    assert config["names"] == NAMES
    dataset = YoloDataset(config["val"], imgsz=64, num_classes=3)
    assert len(dataset) == 4 and dataset.labels[0].shape == (1, 5)


@pytest.mark.parametrize("content, message", [
    ({"train": "images/train", "val": "images/train"}, "no 'names'"),
    ({"train": "images/train", "val": "images/train", "names": NAMES, "nc": 4}, "nc is 4"),
    ({"train": "images/train", "val": "images/train", "names": {0: "a", 2: "b"}}, "0..n-1"),
    ({"train": "images/train", "names": NAMES}, "'val' split is missing"),
    ({"train": "images/train", "val": "images/nowhere", "names": NAMES}, "does not exist"),
    ({"train": "images/train", "val": "images/empty", "names": NAMES}, "no images found"),
    ({"path": "missing", "train": "a", "val": "b", "names": NAMES, "download": "x"}, "downloads are not"),
    ({"train": "images/train", "val": "images/train", "names": NAMES, "generator": "nope"}, "unknown generator"),
])


def test_bad_yaml_is_a_clear_dataset_error(tmp_path, content, message):
    make_split(tmp_path, "train", 1)
    (tmp_path / "images" / "empty").mkdir()
    if content.get("generator"):
        content["path"] = "not-yet"
    yaml_file = write_yaml(tmp_path / "d.yaml", content)
    with pytest.raises(DatasetError, match=message) as error:
        load_data_config(yaml_file)
    assert isinstance(error.value, ValueError)


def test_txt_list_with_a_non_image_line_names_the_line(tmp_path):
    (tmp_path / "list.txt").write_text("a.jpg\nlabels/a.txt\n")
    write_yaml(tmp_path / "d.yaml", {"train": "list.txt", "val": "list.txt", "names": NAMES})
    with pytest.raises(DatasetError, match=r"list.txt: line 2: 'labels/a.txt'"):
        load_data_config(tmp_path / "d.yaml")


# ------------------------------------------------------------------------------------------------
# Label checking and the cache
# ------------------------------------------------------------------------------------------------

def test_label_cache_is_hit_on_the_second_load_and_rebuilt_after_a_label_change(tmp_path, caplog):
    images = make_split(tmp_path, "train", 4)
    caplog.set_level(logging.INFO)
    first = YoloDataset(tmp_path / "images" / "train", imgsz=64, num_classes=3)
    cache_file = tmp_path / "labels" / "train.slimneck.cache"
    assert not first.cache_hit and cache_file.is_file()
    assert not any(path.suffix == ".tmp" for path in cache_file.parent.iterdir())

    caplog.clear()
    second = YoloDataset(tmp_path / "images" / "train", imgsz=64, num_classes=3)
    assert second.cache_hit and "using the label cache" in caplog.text
    for before, after in zip(first.labels, second.labels):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(first.image_sizes, second.image_sizes)

    write_labels(image_to_label_path(images[1]), ["2 0.25 0.25 0.1 0.1", "1 0.75 0.75 0.2 0.2"])
    third = YoloDataset(tmp_path / "images" / "train", imgsz=64, num_classes=3)
    assert not third.cache_hit and len(third.labels[1]) == 2
    assert YoloDataset(tmp_path / "images" / "train", imgsz=64, num_classes=3).cache_hit

    # A different class count checks the labels differently, so it does not reuse the cache.
    assert not YoloDataset(tmp_path / "images" / "train", imgsz=64, num_classes=5).cache_hit
    # A damaged cache file is rebuilt, not trusted.
    cache_file.write_bytes(b"not an npz file")
    assert not YoloDataset(tmp_path / "images" / "train", imgsz=64, num_classes=5).cache_hit


def test_bad_files_are_reported_once_skipped_and_counted(tmp_path, caplog):
    good = make_split(tmp_path, "train", 3)
    folder = tmp_path / "images" / "train"
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    write_labels(tmp_path / "labels" / "train" / "corrupt.txt", ["0 0.5 0.5 0.1 0.1"])
    write_image(folder / "malformed.jpg")
    write_labels(tmp_path / "labels" / "train" / "malformed.txt", ["0 0.5 0.5 0.1 0.1", "1 0.5 0.5 0.2"])
    write_image(folder / "unknown.jpg")
    write_labels(tmp_path / "labels" / "train" / "unknown.txt", ["7 0.5 0.5 0.1 0.1"])
    write_image(folder / "pixels.jpg")
    write_labels(tmp_path / "labels" / "train" / "pixels.txt", ["0 32 24 10 10"])
    write_image(folder / "repairable.jpg")
    write_labels(tmp_path / "labels" / "train" / "repairable.txt",
                 ["1 0.5 0.5 0.2 0.2", "1 0.5 0.5 0.2 0.2", "2 0.995 0.5 0.02 0.2", "0 0.3 0.3 0 0.1"])
    write_image(folder / "background.jpg")

    caplog.set_level(logging.INFO)
    dataset = YoloDataset(folder, imgsz=64, num_classes=3, prefix="train: ")
    names = sorted(path.name for path in dataset.image_files)
    assert names == sorted([path.name for path in good] + ["repairable.jpg", "background.jpg"])
    summary = dataset.summary
    assert (summary["corrupt"], summary["bad_labels"], summary["unknown_class"]) == (1, 2, 1)
    assert (summary["duplicates"], summary["clipped"], summary["degenerate"]) == (1, 1, 1)
    assert summary["backgrounds"] == 1 and summary["missing"] == 1 and summary["images"] == 5
    line = dataset.summary_line()
    assert "5 images" in line and "1 corrupt image skipped" in line and "2 bad label files skipped" in line
    assert "1 duplicate row removed" in line and line in caplog.text

    assert len(warnings_about(caplog, "corrupt.jpg")) == 1
    assert len(warnings_about(caplog, "malformed.txt: image skipped, line 2: expected 5 values")) == 1
    assert len(warnings_about(caplog, "unknown.txt: image skipped, line 1: class 7 is not below nc=3")) == 1
    assert len(warnings_about(caplog, "pixels.txt: image skipped, line 1: box")) == 1
    assert len(warnings_about(caplog, "repairable.txt")) == 1

    repaired = dataset.labels[dataset.image_files.index(folder / "repairable.jpg")]
    assert len(repaired) == 2  # duplicate and zero-width rows removed
    clipped = repaired[repaired[:, 0] == 2][0]
    assert clipped[1] + clipped[3] / 2 == pytest.approx(1.0)  # right edge clipped to the image

    # The cached load replays the same report.
    caplog.clear()
    again = YoloDataset(folder, imgsz=64, num_classes=3, prefix="train: ")
    assert again.cache_hit and again.summary == summary
    assert len(warnings_about(caplog, "corrupt.jpg")) == 1


def test_no_usable_image_is_an_error(tmp_path):
    folder = tmp_path / "images" / "train"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no usable images"):
        YoloDataset(folder, imgsz=64)


def test_single_cls_and_polygon_rows(tmp_path):
    image = tmp_path / "images" / "x.jpg"
    write_image(image)
    write_labels(image_to_label_path(image), ["2 0.1 0.2 0.5 0.2 0.3 0.6", "1 0.5 0.5 0.2 0.2"])
    dataset = YoloDataset([image], imgsz=64, single_cls=True, num_classes=3)
    labels = dataset.labels[0]
    assert labels[:, 0].tolist() == [0, 0]
    np.testing.assert_allclose(labels[0, 1:], [0.3, 0.4, 0.4, 0.4], atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Items, rect batches, image caches, the loader
# ------------------------------------------------------------------------------------------------

def test_rect_batches_have_stride_multiple_shapes_and_items_map_back(tmp_path):
    sizes = [(96, 40), (40, 96), (64, 64), (100, 70), (50, 90), (80, 30), (64, 60)]
    make_split(tmp_path, "val", 7, sizes=sizes)
    dataset = YoloDataset(tmp_path / "images" / "val", imgsz=96, batch_size=3, rect=True, pad=0.5, stride=32,
                          num_classes=3)
    aspect = dataset.image_sizes[:, 1] / dataset.image_sizes[:, 0]
    assert (np.diff(aspect) >= 0).all()  # sorted by aspect ratio
    assert dataset.batch_shapes.shape == (3, 2) and (dataset.batch_shapes % 32 == 0).all()
    for index in range(len(dataset)):
        image, targets, path, shapes = dataset[index]
        assert tuple(image.shape[1:]) == tuple(dataset.batch_shapes[dataset.batch_index[index]])
        (height0, width0), ratio_pad = shapes
        assert (width0, height0) == tuple(dataset.image_sizes[index])
        # Labels normalised to the output image map back to the original labels.
        out_boxes = xywhn2xyxy(targets[:, 2:].numpy(), image.shape[2], image.shape[1])
        back = scale_boxes(out_boxes, image.shape[1:], (height0, width0), ratio_pad=ratio_pad)
        expected = xywhn2xyxy(dataset.labels[index][:, 1:], width0, height0)
        np.testing.assert_allclose(back, expected, atol=1.0)


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_image_caches_give_the_same_items(tmp_path, cache):
    images = make_split(tmp_path, "train", 3, sizes=((64, 48), (40, 80)))
    plain = YoloDataset(images, imgsz=64, num_classes=3)
    cached = YoloDataset(images, imgsz=64, cache=cache, num_classes=3)
    for index in range(3):
        torch.testing.assert_close(cached[index][0], plain[index][0])
    if cache == "disk":
        assert all(image.with_name(image.name + ".npy").is_file() for image in images)
        assert YoloDataset(images, imgsz=64, cache=cache, num_classes=3)[2][0].equal(plain[2][0])
    with pytest.raises(ValueError, match="cache"):
        YoloDataset(images, imgsz=64, cache="gpu")


def test_collate_produces_the_documented_batch(tmp_path):
    make_split(tmp_path, "train", 5)
    loader, dataset = create_dataloader(tmp_path / "images" / "train", 64, 4, 32, augment=False, workers=0,
                                        num_classes=3)
    batches = list(loader)
    assert [len(batch[2]) for batch in batches] == [4, 1]
    images, targets, paths, shapes = batches[0]
    assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, 64, 64)
    assert targets.dtype == torch.float32 and tuple(targets.shape) == (4, 6)
    assert targets[:, 0].tolist() == [0, 1, 2, 3]  # one box per image, indexed by position in the batch
    assert isinstance(paths, tuple) and all(isinstance(path, str) for path in paths)
    assert isinstance(shapes, tuple) and shapes[0][0] == (48, 64)
    assert targets[:, 2:].min() >= 0 and targets[:, 2:].max() <= 1

    item = dataset[0]
    merged = collate_fn([item, item])
    assert merged[1][:, 0].tolist() == [0, 1]


def test_augmented_loader_is_reproducible_with_workers(tmp_path):
    make_split(tmp_path, "train", 6)
    hyp = {"mosaic": 1.0, "mixup": 0.5}

    def first_batch(seed):
        loader, _ = create_dataloader(tmp_path / "images" / "train", 64, 3, 32, hyp=hyp, augment=True,
                                      workers=2, shuffle=True, seed=seed, num_classes=3)
        return next(iter(loader))

    first, again, other = first_batch(1), first_batch(1), first_batch(2)
    assert first[0].equal(again[0]) and first[1].equal(again[1])
    assert not first[0].equal(other[0])


# ------------------------------------------------------------------------------------------------
# python -m data.check and the plots
# ------------------------------------------------------------------------------------------------

def test_check_command_exit_codes(tmp_path):
    make_split(tmp_path, "train", 2)
    make_split(tmp_path, "val", 2)
    clean = write_yaml(tmp_path / "clean.yaml", {"train": "images/train", "val": "images/val", "names": NAMES})
    assert check_main([str(clean)]) == 0
    (tmp_path / "images" / "val" / "broken.jpg").write_bytes(b"garbage")
    assert check_main([str(clean)]) == 1
    broken = write_yaml(tmp_path / "broken.yaml", {"train": "images/train", "val": "images/val"})
    assert check_main([str(broken)]) == 2


def test_plots_are_written(tmp_path):
    make_split(tmp_path, "train", 4)
    loader, dataset = create_dataloader(tmp_path / "images" / "train", 64, 4, 32, workers=0, num_classes=3)
    images, targets, paths, _ = next(iter(loader))
    predictions = torch.tensor([[0, 10, 10, 40, 30, 0.9, 1], [1, 5, 5, 20, 20, 0.1, 2]])
    grid = plot_batch(images, targets, paths, tmp_path / "batch.jpg", names=NAMES, predictions=predictions)
    assert (tmp_path / "batch.jpg").stat().st_size > 0 and grid.shape == (128, 128, 3)
    plot_labels(dataset.labels, NAMES, tmp_path / "labels.png")
    assert cv2.imread(str(tmp_path / "labels.png")) is not None

    canvas = np.zeros((50, 50, 3), np.uint8)
    draw_boxes(canvas, np.array([[10, 10, 40, 40]]), ["x"], [(0, 255, 0)], line_thickness=1)
    assert (canvas[25, 10] == [0, 255, 0]).all() and canvas[25, 25].sum() == 0


def test_label_cache_write_is_atomic_and_fast_to_reuse(tmp_path):
    make_split(tmp_path, "train", 30)
    YoloDataset(tmp_path / "images" / "train", imgsz=64)
    cache_file = tmp_path / "labels" / "train.slimneck.cache"
    stamp = cache_file.stat().st_mtime_ns
    time.sleep(0.01)
    assert YoloDataset(tmp_path / "images" / "train", imgsz=64).cache_hit
    assert cache_file.stat().st_mtime_ns == stamp  # a hit does not rewrite the cache
    with np.load(cache_file, allow_pickle=False) as stored:  # plain arrays, no pickled objects
        assert stored["labels"].dtype == np.float32 and stored["labels"].shape == (30, 5)
    os.remove(cache_file)  # always safe to delete
    assert not YoloDataset(tmp_path / "images" / "train", imgsz=64).cache_hit
