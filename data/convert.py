"""Bring a COCO or Pascal VOC dataset into the YOLO layout, and YOLO labels back out as COCO JSON.

    python -m data.convert coco annotations/instances_train2017.json --images train2017 --out datasets/coco
    python -m data.convert voc VOCdevkit --sets 2007:trainval 2012:trainval 2007:test --out datasets/VOC
    python -m data.convert yolo2coco data/my.yaml --split val --out gt.json

The output folder gets ``images/<folder>/`` (links to the original images; ``--copy`` copies them),
``labels/<folder>/<stem>.txt`` (``class cx cy w h`` normalised to the image, 6 decimals; an empty file for an
image without objects, a negative) and ``<out name>.yaml`` (the dataset YAML train.py and val.py take). Converting
more splits into the same folder adds them to that YAML.

Nothing is dropped silently: every problem (a missing image, an unknown category, malformed XML, a box outside the
image) is logged with its file, counted, and listed in the summary. What each converter keeps:

- COCO: categories in id order become classes 0..N-1 (the original ids are written to the YAML as
  ``category_ids``, so val.py's ``--save-json`` can report them); ``iscrowd`` boxes are skipped unless
  ``--keep-crowd``; boxes are clipped to the image (counted); boxes without area after clipping are dropped
  (counted); images without annotations are kept as negatives.
- VOC: objects marked ``difficult`` are skipped unless ``--keep-difficult``; ``truncated`` objects are kept.
  Coordinates follow the VOC devkit: ``xmin..xmax`` are the 1-based first and last pixel columns inside the box, so
  the box's edges are ``xmin - 1`` and ``xmax`` in 0-based pixel coordinates. A class missing from the class list
  (``--names``, default the 20 VOC classes) stops the conversion with an error naming it and its files, before
  anything is written.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from engine.data.config import DatasetError, load_data_config
from engine.data.dataset import YoloDataset
from engine.data.images import IMAGE_SUFFIXES
from engine.evaluate.coco import dataset_to_coco_gt, load_json, save_json
from models.errors import UsageError

logger = logging.getLogger(__name__)

VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor")
EVAL_SETS = ("val", "test")  # VOC image sets that become the YAML's val split (as in YOLOv5's VOC.yaml)

# What the summary calls each counter: (singular, plural, what happened).
_COUNTER_WORDS = {
    "images": ("image", "images", "converted"),
    "negatives": ("image", "images", "without objects, kept as negatives"),
    "boxes": ("box", "boxes", "written"),
    "crowd": ("crowd box", "crowd boxes", "skipped (--keep-crowd keeps them)"),
    "difficult": ("difficult object", "difficult objects", "skipped (--keep-difficult keeps them)"),
    "clipped": ("box", "boxes", "clipped to the image"),
    "degenerate": ("box", "boxes", "without area dropped"),
    "bad_box": ("malformed box", "malformed boxes", "dropped"),
    "unknown_category": ("annotation of an unknown category", "annotations of unknown categories", "dropped"),
    "unknown_image": ("annotation of an unknown image", "annotations of unknown images", "dropped"),
    "missing_image": ("missing image", "missing images", "skipped"),
    "bad_xml": ("unreadable annotation file", "unreadable annotation files", "skipped"),
    "missing_xml": ("missing annotation file", "missing annotation files", "skipped"),
}
PROBLEMS = ("clipped", "degenerate", "bad_box", "unknown_category", "unknown_image", "missing_image", "bad_xml",
            "missing_xml")


@dataclass
class ConversionReport:
    """Counts of what a conversion wrote and skipped, and one message per problem (with its file)."""

    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    yaml_file: Path | None = None

    def problem(self, kind: str, file: str | Path, reason: str) -> None:
        self.counts[kind] += 1
        self.problems.append(f"{file}: {reason}")
        logger.warning("%s: %s", file, reason)

    @property
    def num_problems(self) -> int:
        return sum(self.counts[kind] for kind in PROBLEMS)

    def summary(self) -> str:
        parts = []
        for key, (singular, plural, outcome) in _COUNTER_WORDS.items():
            if self.counts[key] or key in ("images", "boxes"):
                parts.append(f"{self.counts[key]} {singular if self.counts[key] == 1 else plural} {outcome}")
        return "; ".join(parts)


@dataclass
class _Sample:
    """One image to write: where it is, its size and its boxes as 0-based pixel corners."""

    image: Path
    relative: Path  # the image's path under images/<folder>/ (and, with .txt, the label's under labels/<folder>/)
    width: int
    height: int
    classes: list[int] = field(default_factory=list)
    corners: list[tuple[float, float, float, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Shared steps: boxes, writing a split, the dataset YAML
# ----------------------------------------------------------------------------------------------

def _checked_corners(x1: float, y1: float, x2: float, y2: float, width: int, height: int,
                     report: ConversionReport, file: str | Path) -> tuple[float, float, float, float] | None:
    """Clip a box to the image (counted and reported); None, counted, when nothing of it is left."""
    clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        report.problem("degenerate", file, f"box {_format_box((x1, y1, x2, y2))} has no area inside the "
                                           f"{width}x{height} image; dropped")
        return None
    if clipped != (x1, y1, x2, y2):
        report.problem("clipped", file, f"box {_format_box((x1, y1, x2, y2))} reaches outside the {width}x{height} "
                                        f"image; clipped to {_format_box(clipped)}")
    return clipped


def _format_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:g}" for value in box) + "]"


def label_lines(classes: Sequence[int], corners: Sequence[Sequence[float]], width: int, height: int) -> list[str]:
    """YOLO label rows ``class cx cy w h`` (normalised, 6 decimals) from 0-based pixel corners."""
    lines = []
    for class_id, (x1, y1, x2, y2) in zip(classes, corners):
        values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        lines.append(f"{int(class_id)} " + " ".join(f"{value:.6f}" for value in values))
    return lines


def _place_image(source: Path, target: Path, copy: bool) -> None:
    """``target`` becomes a symbolic link to ``source`` (a copy with ``copy``, or where links are not allowed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if not copy and target.is_symlink() and Path(os.readlink(target)) == source.resolve():
            return
        target.unlink()
    if not copy:
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:
            logger.debug("cannot link %s; copying it", target)
    shutil.copy2(source, target)


def _write_split(samples: Sequence[_Sample], out_dir: Path, folder: str, copy: bool,
                 report: ConversionReport) -> None:
    """Write images/<folder>/ and labels/<folder>/ for the samples; counts images, negatives and boxes."""
    for sample in samples:
        _place_image(sample.image, out_dir / "images" / folder / sample.relative, copy)
        label_path = (out_dir / "labels" / folder / sample.relative).with_suffix(".txt")
        label_path.parent.mkdir(parents=True, exist_ok=True)
        lines = label_lines(sample.classes, sample.corners, sample.width, sample.height)
        label_path.write_text("".join(line + "\n" for line in lines))
        report.counts["images"] += 1
        report.counts["boxes"] += len(lines)
        report.counts["negatives"] += not lines
    logger.info("%s: %d images written to %s", folder, len(samples), out_dir / "images" / folder)


def write_dataset_yaml(out_dir: Path, names: Sequence[str], splits: dict[str, list[str]],
                       extra: dict | None = None, comment: str = "") -> Path:
    """Write (or extend) ``out_dir/<out_dir name>.yaml``: ``path: .``, the split folders and the class names.

    A YAML already there from an earlier conversion keeps its splits; the new folders are added to them. Its class
    names must be the same (else UsageError: two conversions with different class lists cannot share one folder).
    """
    yaml_file = out_dir / f"{out_dir.name}.yaml"
    content: dict = {"path": "."}
    if yaml_file.is_file():
        content = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
        if content.get("names") is not None and list(content["names"]) != list(names):
            raise UsageError(f"{yaml_file} lists the classes {content['names']}, this conversion has {list(names)}; "
                             "convert into another --out folder")
    for key, folders in splits.items():
        existing = content.get(key) or []
        existing = [existing] if isinstance(existing, str) else list(existing)
        content[key] = list(dict.fromkeys(existing + [f"images/{folder}" for folder in folders]))
    content["names"] = list(names)
    content.update(extra or {})
    ordered = {key: content[key] for key in ("path", "train", "val", "test", "names") if key in content}
    ordered.update({key: value for key, value in content.items() if key not in ordered})
    header = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    yaml_file.write_text(header + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=120))
    for key in ("train", "val"):
        if not ordered.get(key):
            logger.warning("%s has no '%s' split yet: convert that split into the same --out folder (or add '%s:' "
                           "to the YAML) before training", yaml_file, key, key)
    return yaml_file


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------

def _split_key(name: str) -> str:
    """The YAML key a split folder goes to, guessed from its name: test / val when named so, else train."""
    lowered = name.lower()
    return "test" if "test" in lowered else "val" if "val" in lowered else "train"


def convert_coco(instances_json: str | Path, images_dir: str | Path, out_dir: str | Path, split: str | None = None,
                 keep_crowd: bool = False, copy: bool = False) -> ConversionReport:
    """Convert a COCO detection JSON and its image folder to ``out_dir/images|labels/<images folder name>/``.

    ``split`` is the YAML key the folder is added to (train, val or test; default: guessed from the folder name,
    e.g. val2017 -> val). Returns the report (its ``yaml_file`` is the dataset YAML written).
    """
    instances_json, images_dir, out_dir = Path(instances_json), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images {images_dir} is not a folder (give the folder the JSON's file_name "
                                "entries are relative to)")
    content = load_json(instances_json)
    for key in ("images", "categories"):
        if not isinstance(content, dict) or not isinstance(content.get(key), list):
            raise UsageError(f"{instances_json}: not a COCO detection file (no '{key}' list)")
    annotations = content.get("annotations") or []
    categories = sorted(content["categories"], key=lambda category: category["id"])
    class_of = {category["id"]: index for index, category in enumerate(categories)}
    names = [str(category.get("name", category["id"])) for category in categories]
    if len(class_of) != len(categories):
        raise UsageError(f"{instances_json}: category ids repeat: {[c['id'] for c in categories]}")

    report = ConversionReport()
    samples: dict[int, _Sample] = {}
    for image in content["images"]:
        sample = _coco_sample(image, images_dir, instances_json, report)
        if sample is not None:
            samples[image["id"]] = sample
    known_images = {image.get("id") for image in content["images"]}
    for number, annotation in enumerate(annotations):
        where = f"{instances_json} annotation {annotation.get('id', f'#{number}')}"
        image_id = annotation.get("image_id")
        if image_id not in known_images:
            report.problem("unknown_image", where, f"image_id {image_id!r} is not in 'images'; dropped")
            continue
        if image_id not in samples:  # its image is missing: already reported
            continue
        if annotation.get("category_id") not in class_of:
            report.problem("unknown_category", where,
                           f"category_id {annotation.get('category_id')!r} is not in 'categories'; dropped")
            continue
        if annotation.get("iscrowd", 0) and not keep_crowd:
            report.counts["crowd"] += 1
            continue
        box = annotation.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and np.isfinite(box).all() and box[2] >= 0 and box[3] >= 0):
            report.problem("bad_box", where, f"bbox {box!r} is not [x, y, width, height]; dropped")
            continue
        sample = samples[image_id]
        x, y, w, h = (float(value) for value in box)
        corners = _checked_corners(x, y, x + w, y + h, sample.width, sample.height, report,
                                   f"{where} ({sample.relative})")
        if corners is not None:
            sample.classes.append(class_of[annotation["category_id"]])
            sample.corners.append(corners)

    folder = images_dir.name
    _write_split(list(samples.values()), out_dir, folder, copy, report)
    report.yaml_file = write_dataset_yaml(
        out_dir, names, {split or _split_key(folder): [folder]},
        extra={"category_ids": [category["id"] for category in categories]},
        comment=f"Converted from COCO JSON by python -m data.convert coco ({instances_json.name} and more).\n"
                "category_ids: the COCO category id of each class, in class order.")
    return report


def _coco_sample(image: dict, images_dir: Path, instances_json: Path, report: ConversionReport) -> _Sample | None:
    file_name = image.get("file_name")
    where = f"{instances_json} image {image.get('id')!r}"
    if (not isinstance(file_name, str) or not file_name or Path(file_name).is_absolute()
            or ".." in Path(file_name).parts):
        report.problem("missing_image", where, f"file_name {file_name!r} is not a relative path; skipped")
        return None
    path = images_dir / file_name
    if not path.is_file():
        report.problem("missing_image", path, f"image of {where} not found; skipped")
        return None
    width, height = image.get("width"), image.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        width, height = _image_size(path)
        if width is None:
            report.problem("missing_image", path, "no width/height in the JSON and the image cannot be read; skipped")
            return None
    return _Sample(path, Path(file_name), width, height)


def _image_size(path: Path) -> tuple[int | None, int | None]:
    """(width, height) of an image file from its header, or (None, None) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        return None, None


# ----------------------------------------------------------------------------------------------
# Pascal VOC
# ----------------------------------------------------------------------------------------------

@dataclass
class _VocObject:
    name: str
    difficult: bool
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written (1-based, inclusive)


def parse_voc_xml(path: Path) -> tuple[int, int, list[_VocObject]]:
    """Read one VOC annotation file: (width, height, objects). ValueError says what is malformed."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"not well-formed XML ({error})") from error
    if root.tag != "annotation":
        raise ValueError(f"root element is <{root.tag}>, expected <annotation>")

    def number(parent: ElementTree.Element, tag: str, where: str) -> float:
        text = parent.findtext(tag)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: <{tag}> is {text!r}, not a number") from None
        if not np.isfinite(value):
            raise ValueError(f"{where}: <{tag}> is {text!r}, not a finite number")
        return value

    width = height = 0
    size = root.find("size")
    if size is not None and size.findtext("width") is not None:
        width, height = int(number(size, "width", "<size>")), int(number(size, "height", "<size>"))
    objects = []
    for index, element in enumerate(root.iter("object"), 1):
        name = (element.findtext("name") or "").strip()
        where = f"object {index} ({name or 'no name'})"
        if not name:
            raise ValueError(f"{where}: no <name>")
        box = element.find("bndbox")
        if box is None:
            raise ValueError(f"{where}: no <bndbox>")
        corners = tuple(number(box, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (element.findtext("difficult") or "0").strip() not in ("0", "", "false", "False")
        objects.append(_VocObject(name, difficult, corners))
    return width, height, objects


def write_voc_xml(path: str | Path, image_name: str, width: int, height: int, names: Sequence[str],
                  classes: Sequence[int], corners: Sequence[Sequence[float]],
                  difficult: Sequence[bool] | None = None) -> Path:
    """Write a VOC annotation file for 0-based pixel corners (the inverse of the VOC converter's reading)."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "filename").text = image_name
    size = ElementTree.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ElementTree.SubElement(size, tag).text = str(value)
    for index, (class_id, (x1, y1, x2, y2)) in enumerate(zip(classes, corners)):
        element = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(element, "name").text = names[int(class_id)]
        ElementTree.SubElement(element, "difficult").text = str(int(bool(difficult and difficult[index])))
        box = ElementTree.SubElement(element, "bndbox")
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ElementTree.SubElement(box, tag).text = repr(float(value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _voc_set(root: Path, spec: str) -> tuple[Path, str, str]:
    """``YEAR:SET`` (folder ROOT/VOC<YEAR> or ROOT/<YEAR>) or ``SET`` (folder ROOT) -> (folder, set, output name).

    SET is an ImageSets/Main/<SET>.txt list, or ``all`` for every Annotations/*.xml."""
    folder_name, _, image_set = spec.rpartition(":")
    if not image_set:
        raise UsageError(f"--sets entry {spec!r}: give YEAR:SET (e.g. 2007:trainval) or SET")
    if not folder_name:
        return root, image_set, image_set
    for candidate in (root / f"VOC{folder_name}", root / folder_name):
        if candidate.is_dir():
            return candidate, image_set, f"{image_set}{folder_name}"
    raise FileNotFoundError(f"--sets {spec}: neither {root / f'VOC{folder_name}'} nor {root / folder_name} exists")


def _voc_ids(folder: Path, image_set: str) -> list[str]:
    if image_set == "all":
        return sorted(path.stem for path in (folder / "Annotations").glob("*.xml"))
    list_file = folder / "ImageSets" / "Main" / f"{image_set}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"image set list {list_file} not found (or use the set 'all' for every "
                                f"{folder / 'Annotations'}/*.xml)")
    return [line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _voc_image(folder: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / "JPEGImages" / f"{image_id}{suffix}",
                          folder / "JPEGImages" / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def convert_voc(root: str | Path, sets: Sequence[str], out_dir: str | Path, names: Sequence[str] = VOC_NAMES,
                keep_difficult: bool = False, copy: bool = False) -> ConversionReport:
    """Convert VOC image sets (``2007:trainval``, ...) under ``root`` to ``out_dir/images|labels/<set><year>/``.

    Sets named val or test go to the YAML's val split, the others to train (YOLOv5's VOC.yaml: train on
    2007+2012 trainval, validate on 2007 test). Every annotation file is read before anything is written, so an
    unknown class (not in ``names``) raises UsageError naming it and the files it is in.
    """
    root, out_dir, names = Path(root), Path(out_dir), list(names)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC root {root} is not a folder (give the VOCdevkit folder)")
    if len(set(names)) != len(names):
        raise UsageError(f"--names has repeated classes: {names}")
    class_of = {name: index for index, name in enumerate(names)}
    report = ConversionReport()
    unknown: dict[str, list[str]] = defaultdict(list)
    converted: dict[str, tuple[str, list[_Sample]]] = {}
    for spec in sets:
        folder, image_set, output_name = _voc_set(root, spec)
        samples = []
        for image_id in _voc_ids(folder, image_set):
            sample = _voc_sample(folder, image_id, class_of, keep_difficult, report, unknown)
            if sample is not None:
                samples.append(sample)
        converted[output_name] = (image_set, samples)
    if unknown:
        listing = "; ".join(f"'{name}' in {len(files)} file(s), e.g. {', '.join(files[:3])}"
                            for name, files in sorted(unknown.items()))
        raise UsageError(f"classes not in the class list {names}: {listing}. Add them to --names "
                         "(in the order you want their class ids); nothing was written")

    splits: dict[str, list[str]] = defaultdict(list)
    for output_name, (image_set, samples) in converted.items():
        _write_split(samples, out_dir, output_name, copy, report)
        splits["val" if image_set in EVAL_SETS else "train"].append(output_name)
    if "val" not in splits:
        logger.warning("no val or test set among %s: the YAML validates on the training sets; add e.g. "
                       "2007:test to --sets for a held-out val split", list(sets))
        splits["val"] = list(splits["train"])
    report.yaml_file = write_dataset_yaml(
        out_dir, names, dict(splits),
        comment=f"Converted from Pascal VOC XML by python -m data.convert voc --sets {' '.join(sets)}.")
    return report


def _voc_sample(folder: Path, image_id: str, class_of: dict[str, int], keep_difficult: bool,
                report: ConversionReport, unknown: dict[str, list[str]]) -> _Sample | None:
    xml_path = folder / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
        report.problem("missing_xml", xml_path, "annotation file of a listed image not found; image skipped")
        return None
    try:
        width, height, objects = parse_voc_xml(xml_path)
    except (ValueError, OSError) as error:
        report.problem("bad_xml", xml_path, f"{error}; image skipped")
        return None
    image = _voc_image(folder, image_id)
    if image is None:
        report.problem("missing_image", xml_path,
                       f"no image {folder / 'JPEGImages' / image_id} (.jpg, .png, ...); skipped")
        return None
    if width <= 0 or height <= 0:
        width, height = _image_size(image)
        if width is None:
            report.problem("missing_image", image, "no <size> in the XML and the image cannot be read; skipped")
            return None
    sample = _Sample(image, Path(image.name), width, height)
    for item in objects:
        if item.name not in class_of:
            unknown[item.name].append(str(xml_path))
            continue
        if item.difficult and not keep_difficult:
            report.counts["difficult"] += 1
            continue
        xmin, ymin, xmax, ymax = item.box
        corners = _checked_corners(xmin - 1, ymin - 1, xmax, ymax, width, height, report, xml_path)
        if corners is not None:
            sample.classes.append(class_of[item.name])
            sample.corners.append(corners)
    return sample


# ----------------------------------------------------------------------------------------------
# YOLO -> COCO
# ----------------------------------------------------------------------------------------------

def convert_yolo_to_coco(data_yaml: str | Path, split: str, out: str | Path) -> Path:
    """Write the COCO ground truth of a dataset YAML's split, the same one val.py --save-json scores against."""
    config = load_data_config(data_yaml)
    if config.get(split) is None:
        raise DatasetError(f"{config['yaml_file']}: no '{split}' split")
    dataset = YoloDataset(config[split], augment=False, prefix=f"{split}: ", num_classes=config["nc"])
    ground_truth, _ = dataset_to_coco_gt(dataset, config["names"], config.get("category_ids"))
    path = save_json(ground_truth, out)
    logger.info("%s: %d images, %d annotations, %d categories written to %s", split, len(ground_truth["images"]),
                len(ground_truth["annotations"]), len(ground_truth["categories"]), path)
    return path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _log_report(report: ConversionReport) -> None:
    logger.info("Summary: %s", report.summary())
    if report.num_problems:
        logger.warning("%d problem(s), each reported above with its file", report.num_problems)
    logger.info("Dataset YAML: %s (train with: python train.py --data %s)", report.yaml_file, report.yaml_file)


def main(argv: list[str] | None = None) -> int:
    from engine.cli import run_command

    parser = argparse.ArgumentParser(description="Convert COCO JSON or VOC XML datasets to YOLO labels, "
                                                 "or YOLO labels to COCO JSON.")
    commands = parser.add_subparsers(dest="command", required=True)
    coco = commands.add_parser("coco", help="COCO detection JSON -> YOLO labels")
    coco.add_argument("instances", type=Path, help="COCO JSON, e.g. annotations/instances_train2017.json")
    coco.add_argument("--images", type=Path, required=True, help="folder the JSON's file_name entries are in")
    coco.add_argument("--out", type=Path, required=True, help="dataset folder to write (shared by all splits)")
    coco.add_argument("--split", choices=["train", "val", "test"], default=None,
                      help="YAML split for these images (default: from the folder name, e.g. val2017 -> val)")
    coco.add_argument("--keep-crowd", action="store_true", help="keep iscrowd boxes as ordinary objects")
    coco.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    voc = commands.add_parser("voc", help="Pascal VOC XML (VOCdevkit layout) -> YOLO labels")
    voc.add_argument("root", type=Path, help="VOCdevkit folder (holding VOC2007/, VOC2012/), or one VOC-layout "
                                             "folder with Annotations/ and JPEGImages/")
    voc.add_argument("--sets", nargs="+", default=["2007:trainval", "2012:trainval", "2007:test"],
                     help="YEAR:SET or SET entries; SET is ImageSets/Main/SET.txt or 'all' (every XML)")
    voc.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    voc.add_argument("--names", nargs="+", default=list(VOC_NAMES), help="class names in id order "
                                                                         "(default: the 20 VOC classes)")
    voc.add_argument("--keep-difficult", action="store_true", help="keep objects marked difficult")
    voc.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    back = commands.add_parser("yolo2coco", help="a YOLO dataset split -> COCO ground-truth JSON")
    back.add_argument("data", type=Path, help="dataset YAML")
    back.add_argument("--split", default="val", choices=["train", "val", "test"])
    back.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    def action() -> None:
        if args.command == "coco":
            _log_report(convert_coco(args.instances, args.images, args.out, args.split, args.keep_crowd, args.copy))
        elif args.command == "voc":
            _log_report(convert_voc(args.root, args.sets, args.out, args.names, args.keep_difficult, args.copy))
        else:
            convert_yolo_to_coco(args.data, args.split, args.out)

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
