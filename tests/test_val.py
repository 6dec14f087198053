"""val.py and the shared inference helpers of engine/infer/detector.py (CPU, tiny generated data, imgsz 128)."""
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import val
from data.shapes import CLASS_NAMES, generate_dataset
from engine.cli import check_imgsz
from engine.data.config import load_data_config
from engine.data.dataset import YoloDataset
from engine.data.loader import create_dataloader
from engine.evaluate.coco import load_json
from engine.evaluate.validate import evaluate
from engine.infer.detector import Detector, load_detector
from engine.infer.results import yolo_label_lines
from engine.infer.tta import augmented_forward, scale_image
from models.weights import build_checkpoint, load_model, save_checkpoint
from models.yolo import DetectionModel
from helpers import assert_detections_close

IMGSZ = 128
BATCH = 4
NAMES = list(CLASS_NAMES)
CPU = torch.device("cpu")


pytestmark = pytest.mark.torch_threads(1)  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), num_train=2, num_val=6, image_size=256)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained yolov5n whose objectness bias is raised, so that it makes detections above conf 0.01."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", num_classes=len(NAMES), names=NAMES)
    with torch.no_grad():
        for conv in model.head.outputs:
            conv.bias.view(model.head.num_anchors, -1)[:, 4] += 4.0
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, build_checkpoint(model))
    return path


def _val(dataset_dir: Path, weights, project: Path, **options) -> dict:
    settings = dict(data=dataset_dir / "data.yaml", weights=weights, imgsz=IMGSZ, batch_size=BATCH, device="cpu",
                    workers=0, project=project, progress=False)
    settings.update(options)
    return val.run(**settings)


def _val_loader(dataset_dir: Path):
    files = load_data_config(dataset_dir / "data.yaml")["val"]
    return create_dataloader(files, IMGSZ, BATCH, 32, rect=True, pad=0.5, workers=0, num_classes=len(NAMES))


# ---------------------------------------------------------------------------------------------- the oracle detector

class OracleDetector:
    """A stand-in model that "predicts" each image's ground truth with jitter, plus low-confidence false positives.

    It recognises an image by the hash of its letterboxed pixels, computed from a dataset built exactly as val.py
    builds its loader. Output is the decoded (B, N, 5 + nc) format of a real model, so NMS, matching and the COCO
    export downstream are the real code paths.
    """

    rows_per_image = 40

    def __init__(self, files, seed: int = 0):
        dataset = YoloDataset(files, imgsz=IMGSZ, batch_size=BATCH, rect=True, stride=32, pad=0.5,
                              num_classes=len(NAMES))
        self.truth = {}
        for index in range(len(dataset)):
            image, labels, _, _ = dataset[index]
            height, width = image.shape[1:]
            boxes = labels[:, 2:6] * torch.tensor([width, height, width, height])
            self.truth[self._key(image)] = (labels[:, 1].long(), boxes, (height, width))
        self.seed = seed

    @staticmethod
    def _key(image_uint8: torch.Tensor) -> str:
        return hashlib.sha1(image_uint8.contiguous().numpy().tobytes()).hexdigest()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        output = torch.zeros((images.shape[0], self.rows_per_image, 5 + len(NAMES)))
        for index, image in enumerate(images):
            key = self._key((image * 255).round().to(torch.uint8).cpu())
            if key not in self.truth:  # the warm-up pass on zeros
                continue
            classes, boxes, (height, width) = self.truth[key]
            rng = np.random.default_rng([self.seed, int(key[:8], 16)])
            rows = []
            for class_id, (cx, cy, w, h) in zip(classes.tolist(), boxes.tolist()):
                if rng.random() < 0.1:  # a missed object
                    continue
                jitter = rng.normal(0, 0.06, 4)
                predicted_class = class_id if rng.random() > 0.1 else int(rng.integers(len(NAMES)))
                rows.append([cx + jitter[0] * w, cy + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3]),
                             rng.uniform(0.4, 1.0), predicted_class])
            for _ in range(6):  # false positives, mostly less confident
                rows.append([rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 40), rng.uniform(8, 40),
                             rng.uniform(0.01, 0.6), int(rng.integers(len(NAMES)))])
            for row_index, (cx, cy, w, h, score, class_id) in enumerate(rows[:self.rows_per_image]):
                output[index, row_index, :5] = torch.tensor([cx, cy, w, h, score])
                output[index, row_index, 5 + class_id] = 1.0
        return output.to(images.device)


@pytest.fixture(scope="module")
def oracle(dataset_dir) -> Detector:
    files = load_data_config(dataset_dir / "data.yaml")["val"]
    return Detector(OracleDetector(files), NAMES, 32, CPU, IMGSZ, kind="oracle", weights=["oracle.pt"])


# ---------------------------------------------------------------------------------------------------------- val.run

def test_run_equals_evaluate_on_the_same_weights(dataset_dir, checkpoint, tmp_path):
    result = _val(dataset_dir, checkpoint, tmp_path, save_txt=True, save_conf=True)

    model, _ = load_model(checkpoint, fuse=True)
    loader, _ = _val_loader(dataset_dir)
    detections = {}
    direct = evaluate(model, loader, len(NAMES), NAMES, CPU, progress=False,
                      on_image=lambda path, shape, dets: detections.setdefault(Path(path).stem, (shape, dets)))
    assert {key: result[key] for key in direct.metrics} == direct.metrics
    assert result["images"] == 6 and result["instances"] > 0
    assert set(result["speed_ms"]) == {"preprocess", "inference", "nms"}

    # the written label files are exactly the detections of the direct run, in original-image coordinates
    save_dir = Path(result["save_dir"])
    assert sum(len(dets) for _, dets in detections.values()) > 0
    for stem, (shape, dets) in detections.items():
        label_file = save_dir / "labels" / f"{stem}.txt"
        expected = yolo_label_lines(dets, shape, save_conf=True)
        assert (label_file.read_text().splitlines() if label_file.exists() else []) == expected
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png",
                 "val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_labels.jpg", "val_batch1_pred.jpg"):
        assert (save_dir / name).stat().st_size > 0, name


def test_label_file_format(tmp_path):
    detections = torch.tensor([[10.0, 20.0, 50.0, 80.0, 0.875, 3.0], [-5.0, 0.0, 20.0, 10.0, 0.5, 0.0]])
    lines = yolo_label_lines(detections, (100, 200), save_conf=True)
    assert lines[0].split() == ["3", "0.150000", "0.500000", "0.200000", "0.600000", "0.87500"]
    # boxes reaching outside the image are clipped to it
    assert lines[1].split()[:5] == ["0", "0.050000", "0.050000", "0.100000", "0.100000"]
    assert len(yolo_label_lines(detections, (100, 200))[0].split()) == 5


def test_save_json_agrees_with_pycocotools(dataset_dir, oracle, tmp_path, monkeypatch):
    monkeypatch.setattr(val, "load_detector", lambda *args, **kwargs: oracle)
    result = _val(dataset_dir, "oracle.pt", tmp_path, save_json=True, noplots=True)
    assert 0.3 < result["map"] < 0.95 and 0.5 < result["map50"] < 1.0  # informative, not trivially 0 or 1
    assert result["coco"]["map"] == pytest.approx(result["map"], abs=0.005)
    assert result["coco"]["map50"] == pytest.approx(result["map50"], abs=0.005)

    records = load_json(result["predictions_json"])
    assert Path(result["predictions_json"]).name == "oracle_predictions.json"
    ground_truth = load_json(Path(result["save_dir"]) / "ground_truth_coco.json")
    assert len(ground_truth["annotations"]) == result["instances"]
    assert {record["image_id"] for record in records} <= {image["id"] for image in ground_truth["images"]}
    widths = {image["id"]: image["width"] for image in ground_truth["images"]}
    # COCO boxes are [x, y, w, h] in original pixels (256 x 256 here, not the 128-pixel network input)
    assert max(record["bbox"][0] + record["bbox"][2] for record in records) > IMGSZ
    assert all(record["bbox"][0] + record["bbox"][2] <= widths[record["image_id"]] + 1e-3 for record in records)

    # and the same numbers as the evaluation loop called directly with that model
    loader, _ = _val_loader(dataset_dir)
    direct = evaluate(oracle, loader, len(NAMES), NAMES, CPU, progress=False)
    assert direct.metrics["map"] == result["map"]


def test_corrupt_image_and_missing_label_are_reported_and_skipped(dataset_dir, checkpoint, tmp_path, caplog):
    copy = tmp_path / "data"
    shutil.copytree(dataset_dir, copy, ignore=shutil.ignore_patterns("*.cache"))
    (copy / "images" / "val" / "val_00001.jpg").write_bytes(b"not a jpeg")
    missing = copy / "labels" / "val" / "val_00002.txt"
    removed = len(missing.read_text().splitlines())
    corrupt_boxes = len((copy / "labels" / "val" / "val_00001.txt").read_text().splitlines())
    total = sum(len(path.read_text().splitlines()) for path in (copy / "labels" / "val").glob("*.txt"))
    missing.unlink()
    with caplog.at_level(logging.INFO):
        result = _val(copy, checkpoint, tmp_path / "runs", noplots=True)
    assert result["images"] == 5
    assert result["instances"] == total - removed - corrupt_boxes
    assert "val_00001.jpg: image skipped, cannot be decoded" in caplog.text
    assert "1 corrupt image skipped" in caplog.text and "1 without a label file" in caplog.text


def test_verbose_table_and_single_cls(dataset_dir, oracle, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(val, "load_detector", lambda *args, **kwargs: oracle)
    with caplog.at_level(logging.INFO):
        result = _val(dataset_dir, "oracle.pt", tmp_path, verbose=True, noplots=True)
    assert all(f"{name:>22}" in caplog.text for name in {entry["name"] for entry in result["per_class"]})
    assert "Speed:" in caplog.text and "per image at shape (4, 3, 128, 128)" in caplog.text
    single = _val(dataset_dir, "oracle.pt", tmp_path, single_cls=True, noplots=True)
    assert [entry["name"] for entry in single["per_class"]] == ["item"]
    assert single["instances"] == result["instances"] and single["images"] == result["images"]


def test_task_speed_reports_latency_only(dataset_dir, checkpoint, tmp_path):
    result = _val(dataset_dir, [checkpoint, checkpoint], tmp_path, task="speed")
    assert len(result["results"]) == 2
    for entry in result["results"]:
        assert "map" not in entry and entry["images"] == 6 and entry["speed_ms"]["inference"] > 0
        assert entry["shape"] == (BATCH, 3, IMGSZ, IMGSZ) and entry["save_dir"] is None
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # no run folder, no files


def test_test_split_missing_and_bad_inputs(dataset_dir, checkpoint, tmp_path, caplog):
    with pytest.raises(ValueError, match="no 'test' split"):
        _val(dataset_dir, checkpoint, tmp_path, task="test")
    caplog.set_level(logging.ERROR)
    assert val.main(["--data", str(dataset_dir / "data.yaml"), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt does not exist" in caplog.text
    wrong = DetectionModel("yolov5n.yaml", num_classes=3)
    save_checkpoint(tmp_path / "three.pt", build_checkpoint(wrong))
    with pytest.raises(ValueError, match="predicts 3 classes but .* has 6"):
        _val(dataset_dir, tmp_path / "three.pt", tmp_path)


# ----------------------------------------------------------------------------------------------------- engine/infer/

def test_load_detector_fuses_and_ensembles(checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        detector = load_detector(checkpoint, "cpu", half=True, imgsz=100)
    assert "--half needs a CUDA device" in caplog.text and not detector.half
    assert detector.imgsz == 128 and detector.stride == 32 and detector.names == NAMES
    assert detector.forward.is_fused()
    images = torch.rand(2, 3, 64, 96)
    single = detector(images)
    pair = load_detector([checkpoint, checkpoint], "cpu")(images)
    assert pair.shape == (2, 2 * single.shape[1], 5 + len(NAMES))
    torch.testing.assert_close(pair, torch.cat((single, single), 1))


def test_onnx_with_augment_and_bad_weights_are_refused(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")
    with pytest.raises(ValueError, match="--augment .* needs a PyTorch .pt model"):
        load_detector(onnx_file, "cpu", augment=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_detector(tmp_path / "absent.pt", "cpu")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a PyTorch .pt nor an exported model"):
        load_detector(tmp_path / "weights.bin", "cpu")
    with pytest.raises(ValueError, match="positive integer"):
        check_imgsz(0, 32)


def test_fixed_batch_is_split_and_padded():
    calls = []

    def forward(images):
        calls.append(images.shape[0])
        return images.mean(dim=(2, 3)).unsqueeze(1).repeat(1, 2, 3)  # (B, 2, 9): one value per image

    detector = Detector(forward, NAMES[:4], 32, CPU, 64, kind="onnx", fixed_shape=(64, 64), fixed_batch=4)
    images = torch.rand(6, 3, 64, 64)
    output = detector(images)
    assert calls == [4, 4] and output.shape == (6, 2, 9)
    torch.testing.assert_close(output, forward(images))
    with pytest.raises(ValueError, match="exported for 64x64 inputs, got 32x64"):
        detector(torch.rand(1, 3, 32, 64))


class MarkerModel(torch.nn.Module):
    """Predicts one box centred on the bright blob of each image (in the middle level's rows, so TTA crops keep it)."""

    stride = torch.tensor([8.0, 16.0, 32.0])
    size_multiple = 32

    def forward(self, images):
        batch, _, height, width = images.shape
        sizes = [(height // s) * (width // s) for s in (8, 16, 32)]
        decoded = torch.zeros(batch, sum(sizes), 6)
        rows, columns = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        for index, image in enumerate(images):
            bright = image.mean(0) > 0.8  # above the 0.447 padding gray
            decoded[index, sizes[0], :2] = torch.stack((columns[bright].mean(), rows[bright].mean()))
            decoded[index, sizes[0], 2:6] = torch.tensor([10.0, 10.0, 0.9, 1.0])
        raw = [torch.zeros(batch, 1, height // s, width // s, 6) for s in (8, 16, 32)]
        return decoded, raw


def test_augmented_forward_maps_every_pass_back_to_the_input():
    images = torch.zeros(1, 3, 96, 128)
    images[0, :, 26:34, 86:94] = 1.0  # a blob centred at (90, 30): a missing un-flip would put it at x = 38
    merged = augmented_forward(MarkerModel(), images)
    sizes = {scale: [(h // s) * (w // s) for s in (8, 16, 32)]
             for scale, (h, w) in {1.0: (96, 128), 0.83: (96, 128), 0.67: (64, 96)}.items()}
    # full size without its coarsest level + flipped 0.83x in full + 0.67x without its finest level
    assert merged.shape[1] == sum(sizes[1.0][:2]) + sum(sizes[0.83]) + sum(sizes[0.67][1:])
    found = merged[0][merged[0, :, 4] > 0]
    assert len(found) == 3
    torch.testing.assert_close(found[:, 0], torch.full((3,), 90.0), atol=0.8, rtol=0)
    torch.testing.assert_close(found[:, 1], torch.full((3,), 30.0), atol=0.8, rtol=0)
    assert found[1, 2] == pytest.approx(10 / 0.83)  # sizes are scaled back as well


def test_scale_image_pads_to_the_grid_with_gray():
    images = torch.ones(1, 3, 100, 100)
    scaled = scale_image(images, 0.67, 32)
    assert scaled.shape[-2:] == (96, 96)
    assert scale_image(images, 1.0, 32) is images
    scaled = scale_image(images, 0.83, 32)
    assert scaled.shape[-2:] == (96, 96) and scaled[0, 0, 90, 90] == pytest.approx(114 / 255)


def test_val_with_augment_runs_on_a_real_model(dataset_dir, checkpoint, tmp_path):
    plain = _val(dataset_dir, checkpoint, tmp_path, noplots=True, save_json=True, conf_thres=0.05)
    augmented = _val(dataset_dir, checkpoint, tmp_path, noplots=True, save_json=True, conf_thres=0.05, augment=True)
    assert augmented["images"] == plain["images"] == 6
    plain_records = load_json(plain["predictions_json"])
    augmented_records = load_json(augmented["predictions_json"])
    assert len(augmented_records) > 0 and augmented_records != plain_records



# ------------------------------------------------------------------------------------------------------------ ONNX

@pytest.fixture(scope="module")
def onnx_models(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """The test checkpoint exported with dynamic shapes and with a fixed 4 x 3 x 128 x 128 input."""
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    pytest.importorskip("onnxruntime", reason="running ONNX models needs onnxruntime")
    from engine.infer import export
    model, _ = load_model(checkpoint)
    folder = tmp_path_factory.mktemp("onnx")
    return (export.export_onnx(model, folder / "dynamic.onnx", imgsz=IMGSZ, dynamic=True),
            export.export_onnx(model, folder / "fixed.onnx", imgsz=IMGSZ, batch_size=4))


def _records_by_image(path) -> dict[int, np.ndarray]:
    grouped: dict[int, list] = {}
    for record in load_json(path):
        x, y, w, h = record["bbox"]
        grouped.setdefault(record["image_id"], []).append([x, y, x + w, y + h, record["score"],
                                                           record["category_id"]])
    return {image_id: np.array(rows) for image_id, rows in grouped.items()}


def test_onnx_validation_matches_pytorch(dataset_dir, checkpoint, onnx_models, tmp_path, caplog):
    dynamic, fixed = onnx_models
    options = dict(save_json=True, noplots=True, conf_thres=0.01)
    reference = _val(dataset_dir, checkpoint, tmp_path, **options)
    exported = _val(dataset_dir, dynamic, tmp_path, **options)
    for key in ("precision", "recall", "map50", "map"):
        assert exported[key] == pytest.approx(reference[key], abs=0.01)
    expected, actual = _records_by_image(reference["predictions_json"]), _records_by_image(exported["predictions_json"])
    assert expected.keys() == actual.keys()
    for image_id in expected:
        assert_detections_close(expected[image_id], actual[image_id])

    # A fixed-shape model gets square 128 x 128 batches of its exported size (4; the last batch is padded), so it is
    # compared with the PyTorch model on square batches too.
    with caplog.at_level(logging.WARNING):
        square = _val(dataset_dir, fixed, tmp_path, batch_size=3, **options)
    assert "exported with batch size 4; using --batch-size 4" in caplog.text
    assert square["shape"] == (4, 3, IMGSZ, IMGSZ) and square["images"] == 6
    model, _ = load_model(checkpoint, fuse=True)
    files = load_data_config(dataset_dir / "data.yaml")["val"]
    loader, _ = create_dataloader(files, IMGSZ, 4, 32, rect=False, workers=0, num_classes=len(NAMES))
    ids = {Path(image["file_name"]).stem: image["id"]
           for image in load_json(Path(square["save_dir"]) / "ground_truth_coco.json")["images"]}
    pytorch_square = {}
    direct = evaluate(model, loader, len(NAMES), NAMES, CPU, conf_thres=0.01, progress=False,
                      on_image=lambda path, shape, dets: pytorch_square.update({ids[Path(path).stem]: dets.numpy()}))
    assert square["map50"] == pytest.approx(direct.metrics["map50"], abs=0.01)
    actual = _records_by_image(square["predictions_json"])
    for image_id, detections in pytorch_square.items():
        assert_detections_close(detections, actual.get(image_id, np.zeros((0, 6))))


def test_pad_sets_the_size_the_model_is_scored_at(dataset_dir, checkpoint, tmp_path, caplog):
    """YOLOv5's pad of 0.5 strides scores square images at --imgsz + one stride; --pad 0 keeps --imgsz."""
    with caplog.at_level(logging.INFO):
        padded = _val(dataset_dir, checkpoint, tmp_path, noplots=True)
    assert padded["input_sizes"] == [(IMGSZ + 32, IMGSZ + 32)]
    assert f"Scored at {IMGSZ + 32}x{IMGSZ + 32}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        exact = _val(dataset_dir, checkpoint, tmp_path, noplots=True, pad=0.0)
    assert exact["input_sizes"] == [(IMGSZ, IMGSZ)] and "Scored at" not in caplog.text
    assert val.parse_options(["--weights", "a.pt", "--pad", "0"]).pad == 0.0
    assert val.parse_options(["--weights", "a.pt"]).pad == 0.5
