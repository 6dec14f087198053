"""What every command-line entry point shares: console logging, one exit-code convention, run folders and --imgsz."""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Callable

from engine.train.guard import NonFiniteTrainingError
from models.errors import MissingDependencyError, UsageError

logger = logging.getLogger("slimneck")

# Bad input (the project's UsageError and its kinds, a missing file), a missing optional package (onnx,
# onnxruntime) or a diverged training run: say what is wrong, exit 2, no traceback. Any other exception,
# a plain ValueError included, is a bug and keeps its traceback.
USAGE_ERRORS = (UsageError, FileNotFoundError, MissingDependencyError, NonFiniteTrainingError)


def increment_path(path: Path, exist_ok: bool = False) -> Path:
    """runs/train/exp -> exp2, exp3, ... unless ``exist_ok`` or the folder does not exist yet."""
    if exist_ok or not path.exists():
        return path
    for number in range(2, 10_000):
        candidate = path.with_name(f"{path.name}{number}")
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"no free run folder next to {path}")


def check_imgsz(imgsz: int, multiple: int) -> int:
    """``--imgsz`` rounded up to a multiple of ``multiple`` (a model's ``size_multiple``), with a warning when that
    changes it; anything but a positive integer is a UsageError."""
    if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz < 1:
        raise UsageError(f"--imgsz must be a positive integer, got {imgsz!r}")
    rounded = math.ceil(imgsz / multiple) * multiple
    if rounded != imgsz:
        logger.warning("--imgsz %d is not a multiple of the max stride %d; using %d", imgsz, multiple, rounded)
    return rounded


def run_command(action: Callable[[], object]) -> int:
    """Run ``action`` with INFO logging to the console. Returns 0, 2 for bad input (the message is logged),
    or 130 after Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        action()
    except KeyboardInterrupt:
        return 130
    except USAGE_ERRORS as error:
        logger.error("error: %s", error)
        return 2
    return 0


def add_inference_arguments(parser: argparse.ArgumentParser, conf_thres: float, iou_thres: float,
                            max_det: int) -> None:
    """The flags val.py and detect.py share (YOLOv5 names); the thresholds' defaults differ between the two."""
    parser.add_argument("--weights", nargs="+", required=True, help=".pt checkpoint(s), or one exported model: .onnx, .torchscript (a program: "
                        "trusted files only), an OpenVINO .xml or its folder")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=conf_thres, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=iou_thres, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=max_det, help="maximum detections per image")
    parser.add_argument("--device", default="", help="cuda device, e.g. 0, or cpu")
    parser.add_argument("--augment", action="store_true", help="test-time augmentation (.pt models)")
    parser.add_argument("--save-txt", action="store_true", help="save detections to labels/<image>.txt")
    parser.add_argument("--save-conf", action="store_true", help="add the confidence to --save-txt rows")


def add_output_arguments(parser: argparse.ArgumentParser, project: Path) -> None:
    """Where results go (``project/name``, incremented unless --exist-ok) and --half, as in val.py and detect.py."""
    parser.add_argument("--project", default=str(project), help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    parser.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
