"""Detect objects in images and videos: ``python detect.py --weights best.pt --source path/to/images``.

Flags follow YOLOv5's detect.py. ``--source`` is an image, a video, a folder, a glob pattern or a .txt list of
paths (no URLs, streams or webcams: this tool works offline). Annotated images and videos, YOLO-format label
files (``--save-txt``) and crops (``--save-crop``) go to ``runs/detect/exp*``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.boxes import scale_boxes
from engine.cli import add_inference_arguments, add_output_arguments, increment_path, run_command
from engine.evaluate.validate import log_speed
from engine.infer.detector import load_detector
from engine.infer.nms import non_max_suppression
from engine.infer.results import describe_detections, write_yolo_labels
from engine.infer.sources import Frame, SourceError, iterate_frames, resolve_source
from engine.torch_utils import synchronize
from engine.visualize import class_color, draw_boxes
from models.errors import UsageError

logger = logging.getLogger("detect")
ROOT = Path(__file__).resolve().parent
VIDEO_FOURCC = "mp4v"
DEFAULT_FPS = 30.0


def run(weights: str | Path | list[str | Path] = "", source: str | Path = "", imgsz: int = 640,
        conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000, device: str = "",
        classes: list[int] | None = None, agnostic_nms: bool = False, augment: bool = False,
        save_txt: bool = False, save_conf: bool = False, save_crop: bool = False, nosave: bool = False,
        view_img: bool = False, line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False,
        project: str | Path = ROOT / "runs" / "detect", name: str = "exp", exist_ok: bool = False,
        half: bool = False) -> dict:
    """Run detection over ``source``; the keyword arguments mirror the command line.

    Returns ``save_dir``, ``frames`` (images and video frames processed), ``skipped`` (one "path: reason" per
    file that could not be read), ``speed_ms`` (pre-process, inference, NMS per frame) and ``results``: one
    dict per frame with ``path``, ``frame`` (1-based for videos, None for images) and ``detections``, an
    (n, 6) array [x1, y1, x2, y2, conf, cls] in original-image pixels. Raises :class:`SourceError` for an
    unusable source and when no file of it could be read.
    """
    files, problems = resolve_source(source)
    skipped = []
    for problem in problems:
        logger.warning("%s", problem)
        skipped.append(problem)
    detector = load_detector(weights, device, half, imgsz, augment)
    if classes is not None:
        wrong = [class_id for class_id in classes if not 0 <= class_id < detector.num_classes]
        if wrong:
            raise UsageError(f"--classes {wrong}: the model has classes 0..{detector.num_classes - 1}")
    if detector.fixed_batch is not None and detector.fixed_batch > 1:
        logger.warning("%s was exported with batch size %d: each frame is padded to a full batch; export with "
                       "--batch-size 1 or --dynamic for detection", detector.label, detector.fixed_batch)
    save_dir = increment_path(Path(project) / name, exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(save_dir, detector.names, save_txt, save_conf, save_crop, not nosave, view_img,
                     line_thickness, hide_labels, hide_conf)

    def on_error(path: Path, reason: str) -> None:
        logger.warning("%s: skipped, %s", path, reason)
        skipped.append(f"{path}: {reason}")

    detector.warmup(1)
    times = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
    results = []
    try:
        for frame in iterate_frames(files, on_error):
            start = time.perf_counter()
            images, ratio_pad = detector.prepare(frame.image)
            synchronize(detector.device)
            prepared = time.perf_counter()
            with torch.no_grad():
                decoded = detector(images)
            synchronize(detector.device)
            inferred = time.perf_counter()
            detections = non_max_suppression(decoded, conf_thres, iou_thres, classes=classes,
                                             agnostic=agnostic_nms, max_det=max_det)[0]
            synchronize(detector.device)
            suppressed = time.perf_counter()
            times["preprocess"] += prepared - start
            times["inference"] += inferred - prepared
            times["nms"] += suppressed - inferred

            detections = detections.cpu()
            scale_boxes(detections[:, :4], tuple(images.shape[2:]), frame.image.shape[:2], ratio_pad)
            writer.write(frame, detections)
            results.append({"path": str(frame.path), "frame": frame.frame if frame.kind == "video" else None,
                            "detections": detections.numpy()})
            position = f"{frame.index + 1}/{len(files)}"
            if frame.kind == "video":
                position += f" (frame {frame.frame}/{frame.frame_count or '?'})"
            logger.info("%s %s %s: %dx%d %s, %.1fms", frame.kind, position, frame.path, images.shape[2],
                        images.shape[3], describe_detections(detections, detector.names),
                        (inferred - prepared) * 1e3)
    finally:
        writer.close()

    if not results:
        raise SourceError(f"--source {source}: none of its {len(files)} files could be read (see the warnings above)")
    speed = {key: value / len(results) * 1e3 for key, value in times.items()}
    logger.info("%s", log_speed(speed, (1, 3, *detector.input_shape())))
    if skipped:
        logger.warning("%d file(s) skipped: %s", len(skipped), "; ".join(skipped))
    if save_txt:
        logger.info("%d label files written to %s", writer.label_files, save_dir / "labels")
    logger.info("Results saved to %s", save_dir)
    return {"save_dir": str(save_dir), "frames": len(results), "skipped": skipped, "speed_ms": speed,
            "results": results}


class _Writer:
    """Everything detect.py writes per frame: annotated images/videos, label files, crops, the preview window."""

    def __init__(self, save_dir: Path, names: list[str], save_txt: bool, save_conf: bool, save_crop: bool,
                 save_media: bool, view_img: bool, line_thickness: int, hide_labels: bool, hide_conf: bool):
        self.save_dir, self.names = save_dir, names
        self.save_txt, self.save_conf, self.save_crop = save_txt, save_conf, save_crop
        self.save_media, self.view_img = save_media, view_img
        self.line_thickness, self.hide_labels, self.hide_conf = line_thickness, hide_labels, hide_conf
        self.stems: dict[Path, str] = {}
        self.label_files = 0
        self.video_path: Path | None = None
        self.video: cv2.VideoWriter | None = None

    def _stem(self, path: Path) -> str:
        """The file stem outputs of ``path`` use; a second source file with the same stem gets ``_2``, ..."""
        if path not in self.stems:
            taken = set(self.stems.values())
            stem, number = path.stem, 2
            while stem in taken:
                stem, number = f"{path.stem}_{number}", number + 1
            self.stems[path] = stem
        return self.stems[path]

    def write(self, frame: Frame, detections: torch.Tensor) -> None:
        stem = self._stem(frame.path)
        name = stem if frame.kind == "image" else f"{stem}_{frame.frame}"
        if self.save_txt and write_yolo_labels(self.save_dir / "labels" / f"{name}.txt", detections,
                                               frame.image.shape[:2], self.save_conf):
            self.label_files += 1
        if self.save_crop:
            self._save_crops(frame.image, detections, name)
        if not (self.save_media or self.view_img):
            return
        annotated = self._annotate(frame.image.copy(), detections)
        if self.view_img:
            self._show(str(frame.path), annotated)
        if not self.save_media:
            return
        if frame.kind == "image":
            out_path = self.save_dir / f"{stem}{frame.path.suffix}"
            if not cv2.imwrite(str(out_path), annotated):
                logger.warning("could not write %s", out_path)
        else:
            self._write_video_frame(frame, stem, annotated)

    def _annotate(self, image: np.ndarray, detections: torch.Tensor) -> np.ndarray:
        class_ids = detections[:, 5].long().tolist()
        texts = None
        if not self.hide_labels:
            texts = [self.names[class_id] if self.hide_conf else f"{self.names[class_id]} {conf:.2f}"
                     for class_id, conf in zip(class_ids, detections[:, 4].tolist())]
        return draw_boxes(image, detections[:, :4], texts, [class_color(class_id) for class_id in class_ids],
                          self.line_thickness)

    def _save_crops(self, image: np.ndarray, detections: torch.Tensor, name: str) -> None:
        height, width = image.shape[:2]
        for x1, y1, x2, y2, _, class_id in detections.tolist():
            left, top = max(int(x1), 0), max(int(y1), 0)
            right, bottom = min(int(round(x2)), width), min(int(round(y2)), height)
            if right <= left or bottom <= top:
                continue
            folder = self.save_dir / "crops" / self.names[int(class_id)]
            folder.mkdir(parents=True, exist_ok=True)
            path, number = folder / f"{name}.jpg", 2
            while path.exists():
                path, number = folder / f"{name}_{number}.jpg", number + 1
            if not cv2.imwrite(str(path), image[top:bottom, left:right]):
                logger.warning("could not write %s", path)

    def _write_video_frame(self, frame: Frame, stem: str, annotated: np.ndarray) -> None:
        if frame.path != self.video_path:
            self._close_video()
            self.video_path = frame.path
            out_path = self.save_dir / f"{stem}.mp4"
            height, width = annotated.shape[:2]
            video = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), frame.fps or DEFAULT_FPS,
                                    (width, height))
            if video.isOpened():
                self.video = video
            else:
                logger.warning("cannot write the video %s (OpenCV has no %s encoder here); frames are not saved",
                               out_path, VIDEO_FOURCC)
        if self.video is not None:
            self.video.write(annotated)

    def _show(self, title: str, image: np.ndarray) -> None:
        try:
            cv2.imshow(title, image)
            cv2.waitKey(1)
        except cv2.error:
            logger.warning("--view-img: this OpenCV build or machine has no display; not showing frames")
            self.view_img = False

    def _close_video(self) -> None:
        if self.video is not None:
            self.video.release()
        self.video, self.video_path = None, None

    def close(self) -> None:
        self._close_video()
        if self.view_img:
            cv2.destroyAllWindows()


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (YOLOv5 detect.py flag names)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_inference_arguments(parser, conf_thres=0.25, iou_thres=0.45, max_det=1000)
    parser.add_argument("--source", required=True, help="image, video, folder, glob pattern or .txt list of paths")
    parser.add_argument("--classes", nargs="+", type=int, help="keep only these class ids")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--save-crop", action="store_true", help="save each detection to crops/<class>/")
    parser.add_argument("--nosave", action="store_true", help="do not save annotated images or videos")
    parser.add_argument("--view-img", action="store_true", help="show results in a window (needs a display)")
    parser.add_argument("--line-thickness", type=int, default=3, help="box line thickness (pixels)")
    parser.add_argument("--hide-labels", action="store_true", help="draw boxes without captions")
    parser.add_argument("--hide-conf", action="store_true", help="captions without the confidence")
    add_output_arguments(parser, ROOT / "runs" / "detect")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for an unusable source or weights)."""
    options = parse_options(argv)
    return run_command(lambda: run(**vars(options)))


if __name__ == "__main__":
    sys.exit(main())
