"""detect.py: sources (image, folder, video, glob, .txt list), outputs (annotated media, labels, crops), errors."""
import logging
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from data.shapes import CLASS_NAMES
from engine.boxes import scale_boxes
from engine.infer.detector import Detector, load_detector
from engine.infer.nms import non_max_suppression
from engine.infer.results import describe_detections
from engine.infer.sources import SourceError, resolve_source
from models.weights import build_checkpoint, save_checkpoint
from helpers import assert_detections_close, confident_model

IMGSZ = 128
NAMES = list(CLASS_NAMES)
CPU = torch.device("cpu")
VIDEO_SIZE = (160, 120)  # width, height
VIDEO_FRAMES = 5


pytestmark = pytest.mark.torch_threads(1)  # tiny models: see tests/conftest.py


def fixed_boxes(images: torch.Tensor) -> torch.Tensor:
    """A fake model's decoded output: a 'rectangle' (0.9) over the middle half of the input's width and the middle
    quarter of its height, and a 'ring' (0.6) in the top-left corner (16..48 x 8..24)."""
    batch, _, height, width = images.shape
    output = torch.zeros(batch, 2, 5 + len(NAMES))
    output[:, 0, :5] = torch.tensor([width / 2, height / 2, width / 2, height / 4, 0.9])
    output[:, 0, 5] = 1.0
    output[:, 1, :5] = torch.tensor([32.0, 16.0, 32.0, 16.0, 0.6])
    output[:, 1, 5 + 5] = 1.0
    return output


@pytest.fixture
def fake_detector(monkeypatch) -> Detector:
    detector = Detector(fixed_boxes, NAMES, 32, CPU, IMGSZ, kind="fake", weights=["fake.pt"])
    monkeypatch.setattr(detect, "load_detector", lambda *args, **kwargs: detector)
    return detector


def expected_boxes(width: int, height: int) -> np.ndarray:
    """Where :func:`fixed_boxes` lands in an original image, from the letterbox rules (long side to 128, padding to
    the next multiple of 32, centred)."""
    gain = min(IMGSZ / width, IMGSZ / height)
    resized_width, resized_height = round(width * gain), round(height * gain)
    input_width, input_height = math.ceil(resized_width / 32) * 32, math.ceil(resized_height / 32) * 32
    pad_x, pad_y = (input_width - resized_width) // 2, (input_height - resized_height) // 2
    in_input = np.array([[input_width / 4, input_height * 3 / 8, input_width * 3 / 4, input_height * 5 / 8],
                         [16.0, 8.0, 48.0, 24.0]])
    boxes = (in_input - [pad_x, pad_y, pad_x, pad_y]) / gain
    return np.clip(boxes, 0, [width, height, width, height])


def read_labels(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    for line in lines:
        fields = line.split()
        assert len(fields) == 6 and fields[0].isdigit(), line
    rows = np.array([[float(value) for value in line.split()] for line in lines])
    assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
    return rows


def as_xyxy(rows: np.ndarray, width: int, height: int) -> np.ndarray:
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return path


def write_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, VIDEO_SIZE)
    assert writer.isOpened()
    for index in range(VIDEO_FRAMES):
        frame = np.full((VIDEO_SIZE[1], VIDEO_SIZE[0], 3), 90, np.uint8)
        cv2.rectangle(frame, (10 + 8 * index, 20), (60 + 8 * index, 80), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def media(tmp_path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    write_image(folder / "wide.jpg", 300, 180)
    write_image(folder / "tall.png", 90, 200, seed=1)
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    (folder / "notes.md").write_text("not media, ignored")
    write_video(folder / "clip.mp4")
    return folder


def test_folder_with_video_and_a_corrupt_image(media, fake_detector, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = detect.run(weights="fake.pt", source=media, imgsz=IMGSZ, project=tmp_path / "runs", save_txt=True,
                            save_conf=True, save_crop=True)
    save_dir = Path(result["save_dir"])
    assert result["frames"] == 2 + VIDEO_FRAMES
    assert len(result["skipped"]) == 1 and "broken.jpg" in result["skipped"][0]
    assert "broken.jpg: skipped, cannot be decoded" in caplog.text
    assert f"image 4/4 {media / 'wide.jpg'}: 96x128 1 rectangle, 1 ring," in caplog.text
    assert f"video 2/4 (frame 3/{VIDEO_FRAMES}) {media / 'clip.mp4'}: 96x128" in caplog.text
    assert "Speed:" in caplog.text and "per image at shape (1, 3, 128, 128)" in caplog.text

    for name, (width, height) in {"wide": (300, 180), "tall": (90, 200)}.items():
        rows = read_labels(save_dir / "labels" / f"{name}.txt")
        assert rows[:, 0].tolist() == [0, 5]
        np.testing.assert_allclose(rows[:, 5], [0.9, 0.6], atol=1e-5)
        np.testing.assert_allclose(as_xyxy(rows, width, height), expected_boxes(width, height), atol=0.02)
        annotated = cv2.imread(str(save_dir / (f"{name}.jpg" if name == "wide" else f"{name}.png")))
        original = cv2.imread(str(media / (f"{name}.jpg" if name == "wide" else f"{name}.png")))
        assert annotated.shape == original.shape and not np.array_equal(annotated, original)
    crops = sorted((save_dir / "crops" / "rectangle").glob("*.jpg"))
    assert [path.name for path in crops] == [f"clip_{i}.jpg" for i in range(1, VIDEO_FRAMES + 1)] + \
        ["tall.jpg", "wide.jpg"]
    x1, y1, x2, y2 = expected_boxes(300, 180)[0]
    assert cv2.imread(str(save_dir / "crops" / "rectangle" / "wide.jpg")).shape[:2] == \
        pytest.approx((y2 - y1, x2 - x1), abs=1.5)
    assert len(list((save_dir / "crops" / "ring").glob("*.jpg"))) == 2 + VIDEO_FRAMES

    # the video: one label file per frame and an annotated copy with every frame
    for frame in range(1, VIDEO_FRAMES + 1):
        np.testing.assert_allclose(as_xyxy(read_labels(save_dir / "labels" / f"clip_{frame}.txt"), *VIDEO_SIZE),
                                   expected_boxes(*VIDEO_SIZE), atol=0.02)
    capture = cv2.VideoCapture(str(save_dir / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == VIDEO_FRAMES
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == VIDEO_SIZE
    capture.release()
    assert [entry["frame"] for entry in result["results"]] == [*range(1, VIDEO_FRAMES + 1), None, None]


def test_txt_list_and_glob_sources(media, fake_detector, tmp_path, caplog):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\nmedia/wide.jpg\n\n{media / 'tall.png'}\nmedia/absent.jpg\nmedia/notes.md\n")
    with caplog.at_level(logging.WARNING):
        result = detect.run(weights="fake.pt", source=listing, imgsz=IMGSZ, project=tmp_path / "runs", nosave=True)
    assert [Path(entry["path"]).name for entry in result["results"]] == ["wide.jpg", "tall.png"]
    assert "line 5: " in caplog.text and "absent.jpg skipped, file not found" in caplog.text
    assert "line 6: media/notes.md skipped" in caplog.text
    assert not list(Path(result["save_dir"]).iterdir())  # --nosave and nothing else asked for

    result = detect.run(weights="fake.pt", source=str(media / "*.jpg"), imgsz=IMGSZ, project=tmp_path / "runs")
    assert result["frames"] == 1 and len(result["skipped"]) == 1  # wide.jpg, and broken.jpg reported
    assert (Path(result["save_dir"]) / "wide.jpg").is_file()
    assert Path(result["save_dir"]).name == "exp2"  # a new run folder, not the first one overwritten


def test_same_stem_from_two_folders_is_not_overwritten(tmp_path, fake_detector):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_image(tmp_path / "a" / "img.jpg", 64, 64)
    write_image(tmp_path / "b" / "img.jpg", 64, 64, seed=3)
    listing = tmp_path / "list.txt"
    listing.write_text("a/img.jpg\nb/img.jpg\n")
    result = detect.run(weights="fake.pt", source=listing, imgsz=IMGSZ, project=tmp_path / "runs", save_txt=True)
    save_dir = Path(result["save_dir"])
    assert {path.name for path in save_dir.glob("*.jpg")} == {"img.jpg", "img_2.jpg"}
    assert {path.name for path in (save_dir / "labels").glob("*.txt")} == {"img.txt", "img_2.txt"}


def test_bad_sources_are_clear_errors(tmp_path, caplog, fake_detector):
    caplog.set_level(logging.ERROR)
    assert detect.main(["--weights", "fake.pt", "--source", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder; give an image, a video, a folder" in caplog.text
    for source, message in (("https://example.com/a.jpg", "URLs and streams are not supported"),
                            ("rtsp://camera/stream", "URLs and streams are not supported"),
                            ("0", "webcams are not supported"),
                            ("", "--source is empty")):
        with pytest.raises(SourceError, match=message):
            resolve_source(source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="the folder holds no images"):
        resolve_source(tmp_path / "empty")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="unsupported file type '.csv'"):
        resolve_source(tmp_path / "table.csv")
    with pytest.raises(SourceError, match="matches no images"):
        resolve_source(str(tmp_path / "*.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(SourceError, match="none of its 1 files could be read"):
        detect.run(weights="fake.pt", source=tmp_path / "bad.jpg", imgsz=IMGSZ, project=tmp_path / "runs")
    with pytest.raises(ValueError, match=r"--classes \[9\]: the model has classes 0..5"):
        detect.run(weights="fake.pt", source=tmp_path / "bad.jpg", classes=[9], project=tmp_path / "runs")


def test_describe_detections():
    detections = torch.tensor([[0, 0, 1, 1, 0.9, 5], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.7, 0]])
    assert describe_detections(detections, NAMES) == "2 rectangles, 1 ring"
    assert describe_detections(torch.zeros((0, 6)), NAMES) == "(no detections)"


def test_real_checkpoint_with_filters_and_display_flags(tmp_path, caplog):
    model = confident_model(NAMES)  # clears conf 0.05 without training
    save_checkpoint(tmp_path / "tiny.pt", build_checkpoint(model))
    image = write_image(tmp_path / "scene.jpg", 200, 150)
    # --view-img only where OpenCV has no GUI (as with opencv-python-headless): it must warn, not fail
    headless = re.search(r"GUI:\s+NONE", cv2.getBuildInformation()) is not None
    with caplog.at_level(logging.WARNING):
        everything = detect.run(weights=tmp_path / "tiny.pt", source=image, imgsz=IMGSZ, conf_thres=0.05,
                                device="cpu", project=tmp_path / "runs", save_txt=True, view_img=headless,
                                hide_labels=True)
    detections = everything["results"][0]["detections"]
    assert len(detections) > 0
    present = sorted(set(detections[:, 5].astype(int).tolist()))
    only_one = detect.run(weights=tmp_path / "tiny.pt", source=image, imgsz=IMGSZ, conf_thres=0.05, device="cpu",
                          project=tmp_path / "runs", classes=present[:1], agnostic_nms=True)
    assert (detections[:, :4] >= 0).all() and (detections[:, [0, 2]] <= 200).all() and (detections[:, [1, 3]] <= 150).all()
    rows = np.loadtxt(Path(everything["save_dir"]) / "labels" / "scene.txt", ndmin=2)
    assert rows.shape == (len(detections), 5)
    kept = only_one["results"][0]["detections"]
    assert 0 < len(kept) <= (detections[:, 5] == present[0]).sum() and (kept[:, 5] == present[0]).all()
    if len(present) > 1:
        assert len(kept) < len(detections)
    assert caplog.text.count("--view-img: this OpenCV build or machine has no display") == int(headless)


# ------------------------------------------------------------------------------------------------------------ ONNX

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A confident tiny checkpoint and its ONNX exports: dynamic shapes, and a fixed 1 x 3 x 128 x 128 input."""
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    pytest.importorskip("onnxruntime", reason="running ONNX models needs onnxruntime")
    from engine.infer import export
    model = confident_model(NAMES, seed=1)
    folder = tmp_path_factory.mktemp("onnx")
    save_checkpoint(folder / "tiny.pt", build_checkpoint(model))
    return (folder / "tiny.pt", export.export_onnx(model, folder / "dynamic.onnx", imgsz=IMGSZ, dynamic=True),
            export.export_onnx(model, folder / "fixed.onnx", imgsz=IMGSZ, batch_size=1))


def test_onnx_detections_match_pytorch(exported, media, tmp_path, caplog):
    checkpoint, dynamic, fixed = exported
    options = dict(source=media, imgsz=IMGSZ, conf_thres=0.05, device="cpu", project=tmp_path / "runs", nosave=True)
    reference = detect.run(weights=checkpoint, **options)
    assert sum(len(entry["detections"]) for entry in reference["results"]) > 0
    same_shapes = detect.run(weights=dynamic, **options)
    assert len(same_shapes["results"]) == len(reference["results"]) == 2 + VIDEO_FRAMES
    for expected, actual in zip(reference["results"], same_shapes["results"]):
        assert (expected["path"], expected["frame"]) == (actual["path"], actual["frame"])
        assert_detections_close(expected["detections"], actual["detections"])

    # A fixed-shape model is fed its exported 128 x 128 (full letterbox, not the minimal stride-multiple one).
    with caplog.at_level(logging.INFO):
        square = detect.run(weights=fixed, **options)
    assert f"{media / 'wide.jpg'}: 128x128" in caplog.text
    pytorch = load_detector(checkpoint, "cpu", imgsz=IMGSZ)
    for entry in square["results"]:
        if entry["frame"] is not None:
            continue
        image = cv2.imread(entry["path"])
        images, ratio_pad = pytorch.prepare(image, auto=False)
        expected = non_max_suppression(pytorch(images), 0.05, 0.45, max_det=1000)[0]
        scale_boxes(expected[:, :4], images.shape[2:], image.shape[:2], ratio_pad)
        assert_detections_close(expected.numpy(), entry["detections"])


@pytest.fixture(scope="module")
def other_formats(exported, tmp_path_factory) -> dict[str, Path]:
    """The confident checkpoint as TorchScript and as OpenVINO IR (dynamic shapes, float32)."""
    pytest.importorskip("openvino", reason="OpenVINO export needs the openvino package")
    from engine.infer import export as exporters
    from models.weights import load_model

    model, _ = load_model(exported[0])
    folder = tmp_path_factory.mktemp("formats")
    onnx_path = exporters.export_onnx(model, folder / "tiny.onnx", imgsz=IMGSZ, dynamic=True)
    return {"torchscript": exporters.export_torchscript(model, folder / "tiny.torchscript", imgsz=IMGSZ),
            "openvino": exporters.export_openvino(onnx_path, folder / "tiny_openvino_model").parent}


@pytest.mark.isolated
@pytest.mark.parametrize("kind", ["torchscript", "openvino"])
def test_every_exported_format_detects_like_pytorch(exported, other_formats, kind, media, tmp_path):
    options = dict(source=media, imgsz=IMGSZ, conf_thres=0.05, device="cpu", project=tmp_path / "runs", nosave=True)
    reference = detect.run(weights=exported[0], **options)
    assert sum(len(entry["detections"]) for entry in reference["results"]) > 0
    detector = load_detector(other_formats[kind], "cpu", imgsz=IMGSZ)
    assert detector.kind == kind and detector.names == NAMES and detector.fixed_shape is None
    results = detect.run(weights=other_formats[kind], **options)
    assert len(results["results"]) == len(reference["results"])
    for expected, actual in zip(reference["results"], results["results"]):
        assert (expected["path"], expected["frame"]) == (actual["path"], actual["frame"])
        assert_detections_close(expected["detections"], actual["detections"])
