"""hubconf.py: torch.hub.load(..., source="local") gives a model that takes images and returns detections equal to
detect.py's, and untrained models from every config; nothing is downloaded."""
from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from engine.infer.hub import Detections, HubModel
from models.errors import UsageError
from models.weights import build_checkpoint, save_checkpoint
from models.yolo import DetectionModel
from helpers import confident_model, REPO as ROOT

NAMES = ["a", "b", "c"]

pytestmark = pytest.mark.torch_threads(1)


@pytest.fixture(scope="module")
def confident(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny checkpoint whose objectness is pushed up (so an untrained model detects something), and two images."""
    model = confident_model(NAMES)
    folder = tmp_path_factory.mktemp("hub")
    save_checkpoint(folder / "tiny.pt", build_checkpoint(model))
    rng = np.random.default_rng(0)
    images = []
    for name, (width, height) in (("wide.jpg", (200, 120)), ("tall.png", (90, 160))):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        images.append(folder / name)
    return folder / "tiny.pt", images


def test_custom_matches_detect_py(confident, tmp_path):
    checkpoint, images = confident
    model = torch.hub.load(str(ROOT), "custom", path=str(checkpoint), source="local", imgsz=128)
    assert isinstance(model, HubModel) and model.names == NAMES
    model.conf = 0.1  # an untrained model's class scores are low
    results = model([str(path) for path in images])
    assert isinstance(results, Detections) and len(results) == 2
    reference = detect.run(weights=checkpoint, source=images[0].parent, imgsz=128, device="cpu",
                           conf_thres=0.1, project=tmp_path, nosave=True)
    by_file = {Path(entry["path"]).name: entry["detections"] for entry in reference["results"]}
    assert sum(len(value) for value in by_file.values()) > 0
    for path, detections in zip(images, results.xyxy):
        np.testing.assert_allclose(detections.numpy(), by_file[path.name], atol=1e-4)
    # an RGB numpy array (and a PIL image) give the same as the file
    rgb = cv2.imread(str(images[0]))[..., ::-1]
    np.testing.assert_allclose(model(rgb).xyxy[0].numpy(), results.xyxy[0].numpy(), atol=1e-5)
    from PIL import Image
    np.testing.assert_allclose(model(Image.open(images[0])).xyxy[0].numpy(), results.xyxy[0].numpy(), atol=1e-5)
    normalised = results.xywhn(0)
    assert normalised.shape == results.xyxy[0].shape and 0 <= float(normalised[:, :4].min()) <= 1.0 + 1e-6
    assert "wide.jpg" in str(results)


def test_custom_settings_and_size(confident):
    checkpoint, images = confident
    model = torch.hub.load(str(ROOT), "custom", path=str(checkpoint), source="local", imgsz=128)
    model.conf = 0.1
    everything = model(str(images[0])).xyxy[0]
    model.conf, model.max_det = 0.2, 2
    strict = model(str(images[0])).xyxy[0]
    assert len(strict) <= 2 and len(strict) < len(everything) and (strict[:, 4] >= 0.2).all()
    model.conf, model.max_det, model.classes = 0.1, 1000, [1]
    assert set(model(str(images[0])).xyxy[0][:, 5].tolist()) <= {1.0}
    model.classes = None
    larger = model(str(images[0]), size=160).xyxy[0]  # other input size, boxes still in original pixels
    assert float(larger[:, [0, 2]].max()) <= 200 + 1e-3 and float(larger[:, [1, 3]].max()) <= 120 + 1e-3
    with pytest.raises(UsageError, match="numpy image must be"):
        model(np.zeros((10, 10), np.uint8))
    with pytest.raises(UsageError, match="cannot be read"):
        model(str(images[0].parent / "missing.jpg"))


def test_untrained_entry_points_for_every_config():
    hubconf = importlib.import_module("hubconf")
    entry_points = sorted(name for name in dir(hubconf) if not name.startswith("_") and callable(getattr(hubconf, name))
                          and name not in ("build_untrained", "load_custom", "custom"))
    configs = sorted(path.stem.replace("-", "_") for path in (ROOT / "cfg").glob("*.yaml") if "gsconv" not in path.stem)
    assert entry_points == configs
    model = torch.hub.load(str(ROOT), "yolov5n_slimneck", source="local", classes=4)
    assert isinstance(model, DetectionModel) and model.head.num_classes == 4
    with pytest.raises(UsageError, match="no pretrained"):
        torch.hub.load(str(ROOT), "yolov7_tiny", source="local", pretrained=True)
