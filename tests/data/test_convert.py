"""COCO / VOC -> YOLO converters and YOLO -> COCO: hand-written fixtures with every problem case, and round trips
on generated datasets (photo_objects: real photographs, many small objects; blocks)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data import blocks, photo_objects
from data.convert import VOC_NAMES, convert_coco, convert_voc, convert_yolo_to_coco, main, write_voc_xml
from engine.data.config import DatasetError, load_data_config
from engine.data.dataset import YoloDataset
from engine.evaluate.coco import load_json
from models.errors import UsageError
from helpers import REPO


def write_image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))
    return path


def read_labels(path: Path) -> np.ndarray:
    text = path.read_text()
    return np.array([line.split() for line in text.splitlines()], dtype=np.float64).reshape(-1, 5)


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def coco_fixture(tmp_path):
    images = tmp_path / "val2017"
    write_image(images / "000000000001.jpg", 200, 100)
    write_image(images / "000000000002.jpg", 50, 80)
    write_image(images / "sub" / "negative.jpg", 64, 64)
    content = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 200, "height": 100},
            {"id": 2, "file_name": "000000000002.jpg"},  # no size: read from the file
            {"id": 3, "file_name": "sub/negative.jpg", "width": 64, "height": 64},
            {"id": 4, "file_name": "gone.jpg", "width": 10, "height": 10},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "bird"}, {"id": 90, "name": "zebra"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 30], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [180, 50, 40, 20], "iscrowd": 0},  # clipped at x=200
            {"id": 12, "image_id": 1, "category_id": 90, "bbox": [0, 0, 100, 100], "iscrowd": 1},  # crowd
            {"id": 13, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # unknown category
            {"id": 14, "image_id": 2, "category_id": 90, "bbox": [60, 10, 5, 5], "iscrowd": 0},  # outside: dropped
            {"id": 15, "image_id": 2, "category_id": 90, "bbox": [5, 8, 10, 20]},  # no iscrowd key: kept
            {"id": 16, "image_id": 2, "category_id": 3, "bbox": [5, 8, 0, 20], "iscrowd": 0},  # no area: dropped
            {"id": 17, "image_id": 2, "category_id": 3, "bbox": [5, "x", 1, 1], "iscrowd": 0},  # malformed
            {"id": 18, "image_id": 99, "category_id": 3, "bbox": [1, 1, 1, 1], "iscrowd": 0},  # unknown image
            {"id": 19, "image_id": 4, "category_id": 3, "bbox": [1, 1, 1, 1], "iscrowd": 0},  # image file missing
        ],
    }
    json_file = tmp_path / "instances_val2017.json"
    json_file.write_text(json.dumps(content))
    return json_file, images


def test_coco_fixture_every_case(coco_fixture, tmp_path):
    json_file, images = coco_fixture
    out = tmp_path / "coco"
    report = convert_coco(json_file, images, out)
    labels = out / "labels" / "val2017"
    # categories in id order: bird (3) -> 0, cat (7) -> 1, zebra (90) -> 2
    np.testing.assert_allclose(read_labels(labels / "000000000001.txt"),
                               [[1, 40 / 200, 25 / 100, 40 / 200, 30 / 100],
                                [0, 190 / 200, 60 / 100, 20 / 200, 20 / 100]], atol=1e-6)
    np.testing.assert_allclose(read_labels(labels / "000000000002.txt"), [[2, 10 / 50, 18 / 80, 10 / 50, 20 / 80]],
                               atol=1e-6)
    assert (labels / "sub" / "negative.txt").read_text() == ""
    assert not (labels / "gone.txt").exists()
    assert (out / "images" / "val2017" / "sub" / "negative.jpg").is_file()
    counts = report.counts
    assert (counts["images"], counts["negatives"], counts["boxes"]) == (3, 1, 3)
    assert (counts["crowd"], counts["clipped"], counts["degenerate"], counts["bad_box"]) == (1, 1, 2, 1)
    assert (counts["unknown_category"], counts["unknown_image"], counts["missing_image"]) == (1, 1, 1)
    assert report.num_problems == 7 and len(report.problems) == 7
    assert any("gone.jpg" in problem for problem in report.problems)
    assert any("annotation 13" in problem and "category_id 5" in problem for problem in report.problems)
    assert "1 crowd box skipped" in report.summary()

    content = yaml.safe_load(report.yaml_file.read_text())
    assert content["names"] == ["bird", "cat", "zebra"] and content["category_ids"] == [3, 7, 90]
    assert content["val"] == ["images/val2017"] and "train" not in content  # warned: convert the train split too
    dataset = YoloDataset(out / "images" / "val2017", imgsz=64, num_classes=3)
    assert len(dataset) == 3 and dataset.summary["corrupt"] == dataset.summary["bad_labels"] == 0


def test_coco_keep_crowd_and_second_split_extends_the_yaml(coco_fixture, tmp_path):
    json_file, images = coco_fixture
    out = tmp_path / "coco"
    assert convert_coco(json_file, images, out, keep_crowd=True).counts["boxes"] == 4
    train_images = tmp_path / "train2017"
    write_image(train_images / "000000000005.jpg", 32, 32)
    train_json = tmp_path / "instances_train2017.json"
    train_json.write_text(json.dumps({"images": [{"id": 5, "file_name": "000000000005.jpg", "width": 32,
                                                  "height": 32}],
                                      "categories": json.loads(json_file.read_text())["categories"],
                                      "annotations": []}))
    report = convert_coco(train_json, train_images, out, copy=True)
    content = yaml.safe_load(report.yaml_file.read_text())
    assert content["train"] == ["images/train2017"] and content["val"] == ["images/val2017"]
    config = load_data_config(report.yaml_file)
    assert config["category_ids"] == [3, 7, 90] and (len(config["train"]), len(config["val"])) == (1, 3)
    copied = out / "images" / "train2017" / "000000000005.jpg"
    assert copied.is_file() and not copied.is_symlink()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "dog"}], "annotations": []}))
    with pytest.raises(UsageError, match="convert into another --out folder"):
        convert_coco(other, train_images, out)


def test_coco_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "images").mkdir()
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(UsageError, match="broken.json: line 1"):
        convert_coco(broken, tmp_path / "images", tmp_path / "out")
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[]")
    with pytest.raises(UsageError, match="not a COCO detection file"):
        convert_coco(not_coco, tmp_path / "images", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--images"):
        convert_coco(not_coco, tmp_path / "nowhere", tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# VOC
# ----------------------------------------------------------------------------------------------

VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{cls}</name><truncated>{truncated}</truncated><difficult>{difficult}</difficult>"
              "<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>"
              "</object>")


def voc_image(folder: Path, name: str, width: int, height: int, objects: list[tuple], image: bool = True) -> None:
    if image:
        write_image(folder / "JPEGImages" / f"{name}.jpg", width, height)
    body = "".join(VOC_OBJECT.format(cls=cls, truncated=truncated, difficult=difficult, box=box)
                   for cls, box, difficult, truncated in objects)
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, width=width, height=height,
                                                                       objects=body))


def image_set(folder: Path, name: str, ids: list[str]) -> None:
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{image_id}\n" for image_id in ids))


@pytest.fixture
def voc_fixture(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    voc2007, voc2012 = devkit / "VOC2007", devkit / "VOC2012"
    voc_image(voc2007, "000001", 100, 50, [("dog", (11, 6, 30, 25), 0, 0), ("person", (1, 1, 100, 50), 1, 0),
                                           ("cat", (91, 41, 120, 60), 0, 1)])  # difficult; truncated and clipped
    voc_image(voc2007, "000002", 40, 40, [])
    voc_image(voc2007, "000003", 40, 40, [("dog", (1, 1, 4, 4), 0, 0)], image=False)  # image missing
    (voc2007 / "Annotations" / "000004.xml").write_text("<annotation><object><name>dog</name>")  # malformed
    write_image(voc2007 / "JPEGImages" / "000004.jpg", 8, 8)
    voc_image(voc2007, "000005", 40, 40, [("dog", (1, 1, "wide", 4), 0, 0)])  # not a number
    image_set(voc2007, "trainval", ["000001", "000002", "000003", "000004", "000005", "000006"])  # 6: no XML
    voc_image(voc2007, "000007", 60, 30, [("bird", (31, 1, 60, 30), 0, 0)])
    image_set(voc2007, "test", ["000007"])
    voc_image(voc2012, "2012_000001", 20, 20, [("cat", (1, 1, 20, 20), 0, 0)])
    image_set(voc2012, "trainval", ["2012_000001"])
    return devkit


def test_voc_fixture_every_case(voc_fixture, tmp_path):
    out = tmp_path / "VOC"
    report = convert_voc(voc_fixture, ["2007:trainval", "2012:trainval", "2007:test"], out)
    dog, cat, bird = VOC_NAMES.index("dog"), VOC_NAMES.index("cat"), VOC_NAMES.index("bird")
    # 1-based inclusive pixels: xmin 11..xmax 30 covers edges 10..30
    np.testing.assert_allclose(read_labels(out / "labels" / "trainval2007" / "000001.txt"),
                               [[dog, 20 / 100, 15 / 50, 20 / 100, 20 / 50],
                                [cat, 95 / 100, 45 / 50, 10 / 100, 10 / 50]], atol=1e-6)
    assert (out / "labels" / "trainval2007" / "000002.txt").read_text() == ""
    np.testing.assert_allclose(read_labels(out / "labels" / "test2007" / "000007.txt"),
                               [[bird, 45 / 60, 0.5, 0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(read_labels(out / "labels" / "trainval2012" / "2012_000001.txt"),
                               [[cat, 0.5, 0.5, 1.0, 1.0]], atol=1e-6)
    counts = report.counts
    assert (counts["images"], counts["negatives"], counts["boxes"], counts["difficult"]) == (4, 1, 4, 1)
    assert (counts["clipped"], counts["missing_image"], counts["bad_xml"], counts["missing_xml"]) == (1, 1, 2, 1)
    assert any("000004.xml" in problem and "not well-formed" in problem for problem in report.problems)
    assert any("000005.xml" in problem and "'wide'" in problem for problem in report.problems)
    content = yaml.safe_load(report.yaml_file.read_text())
    assert content["train"] == ["images/trainval2007", "images/trainval2012"]
    assert content["val"] == ["images/test2007"] and content["names"] == list(VOC_NAMES)
    # the shipped data/VOC.yaml expects the same folders
    shipped = yaml.safe_load((REPO / "data" / "VOC.yaml").read_text())
    assert shipped["train"] == content["train"] and shipped["val"] == content["val"]
    assert shipped["names"] == content["names"]

    kept = convert_voc(voc_fixture, ["2007:trainval"], tmp_path / "kept", keep_difficult=True)
    assert kept.counts["difficult"] == 0 and kept.counts["boxes"] == 3


def test_voc_unknown_class_is_an_error_before_anything_is_written(voc_fixture, tmp_path):
    out = tmp_path / "custom"
    with pytest.raises(UsageError, match=r"'bird' in 1 file.*000007\.xml.*'cat' in 2 file") as error:
        convert_voc(voc_fixture, ["2007:trainval", "2007:test", "2012:trainval"], out,
                    names=["dog", "person"])
    assert "nothing was written" in str(error.value)
    assert not out.exists()
    report = convert_voc(voc_fixture, ["2007:trainval"], out, names=["person", "dog", "cat"])
    assert read_labels(out / "labels" / "trainval2007" / "000001.txt")[:, 0].tolist() == [1, 2]
    assert yaml.safe_load(report.yaml_file.read_text())["val"] == ["images/trainval2007"]  # no val set: warned


def test_voc_bad_sets_are_clear_errors(voc_fixture, tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC1999"):
        convert_voc(voc_fixture, ["1999:trainval"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="or use the set 'all'"):
        convert_voc(voc_fixture, ["2007:nonesuch"], tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# Round trips on generated data, and the command line
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["photo_objects", "blocks"])
def generated(request, tmp_path_factory):
    generator = {"photo_objects": photo_objects, "blocks": blocks}[request.param]
    root = generator.generate_dataset(tmp_path_factory.mktemp(request.param), num_train=4, num_val=12, seed=3)
    return root


def original_labels(root: Path, split: str) -> dict[str, np.ndarray]:
    return {path.stem: read_labels(path) for path in sorted((root / "labels" / split).glob("*.txt"))}


def converted_labels(out: Path, folder: str) -> dict[str, np.ndarray]:
    return {path.stem: read_labels(path) for path in sorted((out / "labels" / folder).rglob("*.txt"))}


def assert_same_labels(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> None:
    assert sorted(expected) == sorted(actual)
    assert sum(len(labels) for labels in expected.values()) > 20
    for stem, labels in expected.items():
        assert actual[stem].shape == labels.shape, stem
        np.testing.assert_allclose(actual[stem], labels, atol=1e-6, rtol=0, err_msg=stem)


def test_round_trip_yolo_coco_yolo(generated, tmp_path):
    data_yaml = generated / "data.yaml"
    gt = convert_yolo_to_coco(data_yaml, "val", tmp_path / "gt.json")
    content = load_json(gt)
    assert len(content["images"]) == 12
    report = convert_coco(gt, generated / "images" / "val", tmp_path / "back")
    assert report.num_problems == 0
    assert_same_labels(original_labels(generated, "val"), converted_labels(tmp_path / "back", "val"))
    assert yaml.safe_load(report.yaml_file.read_text())["names"] == load_data_config(data_yaml)["names"]


def test_round_trip_yolo_voc_yolo(generated, tmp_path):
    config = load_data_config(generated / "data.yaml")
    folder = tmp_path / "VOCdevkit" / "VOCmine"
    dataset = YoloDataset(config["val"], augment=False, num_classes=config["nc"])
    ids = []
    for image, labels, (width, height) in zip(dataset.image_files, dataset.labels, dataset.image_sizes):
        (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (folder / "JPEGImages" / image.name).symlink_to(image)
        cx, cy, w, h = (labels[:, index].astype(np.float64) for index in range(1, 5))
        corners = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                            (cy + h / 2) * height], 1)
        write_voc_xml(folder / "Annotations" / f"{image.stem}.xml", image.name, int(width), int(height),
                      config["names"], labels[:, 0].astype(int), corners)
        ids.append(image.stem)
    image_set(folder, "val", ids)
    report = convert_voc(folder.parent, ["mine:val"], tmp_path / "back", names=config["names"])
    assert report.num_problems == 0 and report.counts["images"] == 12
    assert_same_labels(original_labels(generated, "val"), converted_labels(tmp_path / "back", "valmine"))
    # and "all" (every XML, no ImageSets list) finds the same files
    assert convert_voc(folder, ["all"], tmp_path / "all", names=config["names"]).counts["images"] == 12


def test_command_line_convert_then_dataset_loads(coco_fixture, voc_fixture, tmp_path):
    json_file, images = coco_fixture
    assert main(["coco", str(json_file), "--images", str(images), "--out", str(tmp_path / "c"), "--split",
                 "train"]) == 0
    assert main(["coco", str(json_file), "--images", str(images), "--out", str(tmp_path / "c")]) == 0
    assert load_data_config(tmp_path / "c" / "c.yaml")["nc"] == 3
    assert main(["voc", str(voc_fixture), "--sets", "2007:trainval", "2007:test", "--out", str(tmp_path / "v")]) == 0
    assert len(load_data_config(tmp_path / "v" / "v.yaml")["val"]) == 1
    assert main(["yolo2coco", str(tmp_path / "v" / "v.yaml"), "--split", "train", "--out",
                 str(tmp_path / "gt.json")]) == 0
    ground_truth = load_json(tmp_path / "gt.json")
    assert len(ground_truth["images"]) == 2 and len(ground_truth["categories"]) == 20
    assert main(["voc", str(voc_fixture), "--sets", "2007:test", "--names", "dog", "--out",
                 str(tmp_path / "x")]) == 2  # bird is not in the list: a usage error


def test_shipped_yamls_name_the_converter_when_the_folder_is_missing(tmp_path):
    data_dir = REPO / "data"
    for name, command in (("VOC.yaml", "python -m data.convert voc"), ("coco.yaml", "python -m data.convert coco")):
        content = yaml.safe_load((data_dir / name).read_text())
        content["path"] = str(tmp_path / "missing")
        (tmp_path / name).write_text(yaml.safe_dump(content))
        with pytest.raises(DatasetError, match="does not exist; create it with: " + command):
            load_data_config(tmp_path / name)
    coco = yaml.safe_load((data_dir / "coco.yaml").read_text())
    assert len(coco["names"]) == len(coco["category_ids"]) == 80 and coco["category_ids"][-1] == 90


def test_category_ids_reach_the_coco_json(tmp_path):
    from engine.evaluate.coco import predictions_to_coco, yolo_to_coco_gt

    ground_truth, ids = yolo_to_coco_gt(["a/1.jpg"], [np.array([[1, 0.5, 0.5, 0.2, 0.2]])], [(10, 10)], ["x", "y"],
                                        category_ids=[5, 9])
    assert ground_truth["annotations"][0]["category_id"] == 9
    assert [category["id"] for category in ground_truth["categories"]] == [5, 9]
    records = predictions_to_coco([np.array([[1, 1, 3, 3, 0.9, 0]])], [1], category_ids=[5, 9])
    assert records[0]["category_id"] == 5
    with pytest.raises(UsageError, match="2 distinct integers"):
        yolo_to_coco_gt(["1.jpg"], [np.zeros((0, 5))], [(10, 10)], ["x", "y"], category_ids=[5, 5])
    bad = tmp_path / "bad.yaml"
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "1.jpg", 8, 8)
    bad.write_text("train: images\nval: images\nnames: [x, y]\ncategory_ids: [1]\n")
    with pytest.raises(DatasetError, match="bad.yaml: category_ids must be 2"):
        load_data_config(bad)


def test_convert_then_train(generated, tmp_path):
    """The README's two commands for a COCO-format dataset: convert (each split), then train on the YAML."""
    from engine.train.trainer import Trainer, TrainOptions

    for split in ("train", "val"):
        gt = convert_yolo_to_coco(generated / "data.yaml", split, tmp_path / f"instances_{split}.json")
        assert main(["coco", str(gt), "--images", str(generated / "images" / split), "--out",
                     str(tmp_path / "mine"), "--split", split]) == 0
    summary = Trainer(TrainOptions(data=str(tmp_path / "mine" / "mine.yaml"), cfg="yolov5n.yaml", epochs=1,
                                   batch_size=4, imgsz=64, device="cpu", workers=0, project=str(tmp_path / "runs"),
                                   noplots=True, quiet=True, noautoanchor=True, tensorboard=False)).run()
    assert Path(summary["save_dir"], "weights", "best.pt").is_file() and summary["epochs_run"] == 1
