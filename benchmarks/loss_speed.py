"""Loss speed: our OTA loss (YOLOv7) against our YOLOv5 loss and, where it is importable, upstream YOLOv7's
ComputeLossOTA, on one fixed workload, measured side by side in one process.

    python -m benchmarks.loss_speed [--cfg yolov7-tiny.yaml] [--batch 64] [--imgsz 320] [--targets 20]
        [--classes 10] [--rounds 10]
    PYTHONPATH=. /tmp/upstream-yolov7/bin/python benchmarks/loss_speed.py   # adds upstream (../shared/peer7)

One timed call is the loss of one batch plus its backward pass to the prediction maps. The predictions are the
model's raw train-mode maps for random images (computed once, then fixed), the targets ``--targets`` random boxes
per image (2-30 % of the image, random classes). After 2 warm-up rounds every round runs each loss once in a
shuffled order (``engine.torch_utils.interleaved_timings``). Prints the median seconds and the ratios
OTA / YOLOv5 loss and ours / upstream's OTA. Upstream's loss is looked up in the running interpreter (the peer's
venv has it; it is never a dependency of this project).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from engine.torch_utils import interleaved_timings  # noqa: E402
from engine.train.loss import OtaLoss, YoloLoss  # noqa: E402
from engine.train.trainer import load_hyp  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402


def random_targets(batch: int, per_image: int, classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    count = batch * per_image
    sizes = torch.rand(count, 2, generator=generator) * 0.28 + 0.02
    centres = sizes / 2 + torch.rand(count, 2, generator=generator) * (1 - sizes)
    return torch.cat([torch.arange(batch).repeat_interleave(per_image)[:, None].float(),
                      torch.randint(0, classes, (count, 1), generator=generator).float(), centres, sizes], 1)


def upstream_ota(model: DetectionModel, hyp: dict, classes: int, imgsz: int):
    """Upstream YOLOv7's ComputeLossOTA on our model's head (same anchors and strides), or None where the peer's
    package is not importable. Its gains are scaled as its train.py scales them before building the loss."""
    try:
        from yolov7.models.yolo import Model
        from yolov7.utils.loss import ComputeLossOTA
    except ImportError:
        return None
    import logging

    logging.disable(logging.INFO)  # upstream prints its model table
    upstream = Model(str(REPO.parent / "shared" / "peer7" / "cfg" / "yolov7-tiny.yaml"), nc=classes)
    logging.disable(logging.NOTSET)
    head = upstream.model[-1]
    head.anchors, head.stride = model.head.anchors.detach().clone(), model.head.stride.detach().clone()
    scaled = dict(hyp)
    scaled["box"] *= 3 / head.nl
    scaled["cls"] *= classes / 80 * 3 / head.nl
    scaled["obj"] *= (imgsz / 640) ** 2 * 3 / head.nl
    upstream.hyp, upstream.gr, upstream.nc = scaled, 1.0, classes
    return ComputeLossOTA(upstream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", default="yolov7-tiny.yaml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--targets", type=int, default=20, help="targets per image")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    options = parser.parse_args(argv)

    torch.manual_seed(0)
    model = DetectionModel(options.cfg, num_classes=options.classes).train()
    images = torch.rand(options.batch, 3, options.imgsz, options.imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predictions = [p.detach() for p in model(images)]
    targets = random_targets(options.batch, options.targets, options.classes)
    hyp = load_hyp("hyp.scratch.tiny.yaml")

    losses = {"OTA (ours)": OtaLoss(model.head, hyp, image_size=options.imgsz),
              "YOLOv5 loss (ours)": YoloLoss(model.head, hyp, image_size=options.imgsz)}
    upstream = upstream_ota(model, hyp, options.classes, options.imgsz)
    if upstream is not None:
        losses["OTA (upstream ComputeLossOTA)"] = lambda p, t: upstream(p, t, images)[:2]

    def runner(loss_fn):
        def call() -> None:
            leaves = [p.clone().requires_grad_() for p in predictions]
            loss_fn(leaves, targets)[0].backward()
        return call

    times = interleaved_timings({name: runner(fn) for name, fn in losses.items()}, rounds=options.rounds, warmup=2)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {options.cfg}, {options.classes} classes, "
          f"batch {options.batch} at {options.imgsz} px, {options.targets} targets per image; loss + backward, "
          f"median of {options.rounds} interleaved rounds")
    for name, seconds in median.items():
        print(f"  {name}: {seconds * 1000:.1f} ms")
    print(f"  OTA / YOLOv5 loss (ours): {median['OTA (ours)'] / median['YOLOv5 loss (ours)']:.2f} (target <= 2)")
    if upstream is not None:
        print(f"  ours / upstream OTA: {median['OTA (ours)'] / median['OTA (upstream ComputeLossOTA)']:.2f} "
              "(target <= 0.5)")
    else:
        print("  upstream YOLOv7 not importable here: run with the peer's python for the ours / upstream ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
