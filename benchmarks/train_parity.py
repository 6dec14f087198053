"""Train-parity benchmark: our engine against upstream YOLOv5 7.0 on the same data, epochs, image size, batch and seed.

    python -m benchmarks.train_parity --epochs 60 --imgsz 320 --batch 16
        [--cfg yolov5n.yaml] [--data data/shapes.yaml] [--peer ../shared/peer/yolov5.sh] [--out runs/parity]
    python -m benchmarks.train_parity --summary runs/parity-seed0 runs/parity-seed1 ...   # mAP over seeds

Our engine trains twice, with its defaults (``--precision auto --memory-format auto``: bf16 autocast where the CPU
has native bf16, channels_last on CPU) and as plain fp32 NCHW (``--precision fp32 --memory-format contiguous``), so
the table shows what the defaults buy. Both engines train from scratch with hyp.scratch-low and validate after every
epoch (the packaged peer crashes with --noval). The upstream peer runs offline from its own venv
(../shared/peer/README.md); it is never a dependency of this project. Reported per engine: train images/second
(images seen / wall time of the whole training command, start-up and per-epoch validation included for both engines
alike), the engine's own mAP50 and mAP50-95 of its best.pt, mAP50-95 of its own predictions (conf 0.001, IoU 0.6,
max 300) scored by one COCO evaluator (pycocotools) against the same ground truth, and the mean training losses of a
few epochs side by side (both engines log the same three YOLOv5 loss terms). Prints the tables and the ratios ours /
upstream. Needs an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("parity")
# Our engine's runs: (folder name, label, train.py flags). "ours" is the default the other scripts compare against.
OUR_VARIANTS = (("ours", "slimneck-yolo (defaults)", []),
                ("ours-fp32", "slimneck-yolo fp32 NCHW", ["--precision", "fp32", "--memory-format", "contiguous"]))


def run(command: list[str], log_file: Path, cwd: Path = ROOT) -> tuple[float, str]:
    """Run a command in ``cwd``, save its output to ``log_file``; returns (wall seconds, output)."""
    logger.info("$ %s", " ".join(command))
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    log_file.write_text(output)
    if result.returncode:
        raise RuntimeError(f"command failed ({result.returncode}); see {log_file}:\n{output[-3000:]}")
    return seconds, output


def train(command: list[str], out: Path, name: str, cwd: Path = ROOT) -> float | None:
    """Run a training command (unless it ran before: then reuse its recorded time); returns its wall seconds, or
    None for an earlier run without a recorded time (one that ran beside other jobs, so it has no speed)."""
    timing = out / f"{name}.seconds"
    if command:
        seconds, _ = run(command, out / f"{name}.log", cwd)
        timing.write_text(f"{seconds:.3f}\n")
    if not (out / name / "results.csv").exists():
        raise RuntimeError(f"no earlier {name} run in {out}: run without --skip-{name}")
    return float(timing.read_text()) if timing.exists() else None


def results_columns(results_csv: Path, columns: list[str]) -> list[list[float]]:
    """Per epoch: the values of ``columns`` in a YOLOv5-style results.csv (both engines write one; upstream pads
    its header with spaces)."""
    import csv

    rows = list(csv.reader(results_csv.open()))
    header = [h.strip() for h in rows[0]]
    indices = [header.index(column) for column in columns]
    return [[float(row[i]) for i in indices] for row in rows[1:]]


def train_losses(results_csv: Path) -> list[list[float]]:
    """Per epoch: the mean (box, obj, cls) training loss."""
    return results_columns(results_csv, [f"train/{term}_loss" for term in ("box", "obj", "cls")])


def coco_score(val_images: list[Path], predictions: list[dict], data: dict) -> dict:
    """pycocotools mAP of ``predictions`` (image ids from each file stem, 0-based category ids)."""
    import cv2
    import numpy as np

    from engine.coco import evaluate_coco, yolo_to_coco_gt
    from engine.dataset import image_to_label_path, parse_label_file

    labels, shapes = [], []
    for image in val_images:
        height, width = cv2.imread(str(image)).shape[:2]
        shapes.append((height, width))
        label_file = image_to_label_path(image)
        labels.append(parse_label_file(label_file, data["nc"])[0] if label_file.exists()
                      else np.zeros((0, 5), np.float32))
    ground_truth, ids = yolo_to_coco_gt(val_images, labels, shapes, data["names"])
    remapped = []
    for record in predictions:
        image_id = record["image_id"]
        image_id = ids.get(str(image_id), image_id)
        remapped.append({**record, "image_id": image_id})
    return evaluate_coco(ground_truth, remapped)


def our_predictions(weights: Path, data: dict, imgsz: int, batch: int) -> tuple[list[dict], dict]:
    import torch

    from engine.dataloader import create_dataloader
    from engine.validate import evaluate
    from models.weights import load_model

    model, _ = load_model(weights, fuse=True)
    loader, _ = create_dataloader(data["val"], imgsz, batch, 32, rect=True, pad=0.5, workers=2,
                                  num_classes=data["nc"])
    records: list[dict] = []

    def on_image(path: str, shape, detections) -> None:
        records.extend(_records(Path(path).stem, detections))

    result = evaluate(model, loader, model.num_classes, model.names, torch.device("cpu"), on_image=on_image,
                      progress=False)
    return records, result.metrics


def _records(stem: str, detections) -> list[dict]:
    """COCO result records keyed by file stem (engine.coco.predictions_to_coco takes numeric ids; coco_score maps
    stems to the ground truth's ids, as it does for the peer's JSON)."""
    rows = []
    for x1, y1, x2, y2, score, cls in detections.tolist():
        rows.append({"image_id": stem, "category_id": int(cls),
                     "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                     "score": round(score, 5)})
    return rows


def summary(out_dirs: list[str]) -> str:
    """One row per earlier run (its parity.json) and the mean over them: mAP50-95 on the common scorer."""
    lines = ["| run | setup | ours mAP50-95 | upstream mAP50-95 | ours / upstream |", "|---|---|---|---|---|"]
    ours_all, peer_all = [], []
    for folder in map(Path, out_dirs):
        results = json.loads((folder / "parity.json").read_text())
        setup = results.get("setup") or (folder / "parity.md").read_text().splitlines()[0]
        ours, peer = results["ours"]["coco"], results["peer"]["coco"]
        ours_all.append(ours)
        peer_all.append(peer)
        lines.append(f"| {folder.name} | {setup} | {ours:.4f} | {peer:.4f} | {ours / peer:.3f} |")
    ours_mean, peer_mean = sum(ours_all) / len(ours_all), sum(peer_all) / len(peer_all)
    ratios = sorted(o / p for o, p in zip(ours_all, peer_all))
    lines.append(f"| mean of {len(ours_all)} | | {ours_mean:.4f} | {peer_mean:.4f} | {ours_mean / peer_mean:.3f} "
                 f"(per-run ratios {ratios[0]:.3f} to {ratios[-1]:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--data", default="data/shapes.yaml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peer", default=str(ROOT.parent / "shared" / "peer" / "yolov5.sh"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "parity"))
    parser.add_argument("--skip-ours", action="store_true", help="reuse an earlier run of our engine in --out")
    parser.add_argument("--skip-peer", action="store_true", help="reuse an earlier peer run in --out")
    parser.add_argument("--summary", nargs="+", metavar="OUT", help="only summarise earlier runs (their --out folders)")
    options = parser.parse_args(argv)
    if options.summary:
        print(summary(options.summary))
        return 0

    from engine.dataset import load_data_config

    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_data_config(options.data)
    common = ["--epochs", str(options.epochs), "--imgsz", str(options.imgsz), "--batch-size", str(options.batch),
              "--seed", str(options.seed), "--workers", str(options.workers), "--device", "cpu", "--exist-ok"]
    results = {}

    for name, _, flags in OUR_VARIANTS:
        seconds = train([] if options.skip_ours else
                        [sys.executable, "train.py", "--cfg", options.cfg, "--data", options.data, "--project",
                         str(out), "--name", name, "--quiet", *flags, *common], out, name)
        predictions, metrics = our_predictions(out / name / "weights" / "best.pt", data, options.imgsz, 32)
        results[name] = {"seconds": seconds, "map50": metrics["map50"], "map": metrics["map"],
                         "coco": coco_score(data["val"], predictions, data)["map"]}

    peer_dir = out / "peer"
    peer_data = out / "peer_data.yaml"
    peer_list = out / "peer_lists"
    peer_list.mkdir(exist_ok=True)
    (peer_list / "train.txt").write_text("\n".join(str(p) for p in data["train"]) + "\n")
    (peer_list / "val.txt").write_text("\n".join(str(p) for p in data["val"]) + "\n")
    peer_data.write_text(json.dumps({"path": str(peer_list), "train": "train.txt", "val": "val.txt",
                                     "names": list(data["names"])}))  # JSON keys would be strings
    seconds = train([] if options.skip_peer else
                    ["bash", options.peer, "train", "--cfg", options.cfg, "--weights", "", "--data", str(peer_data),
                     "--project", str(out), "--name", "peer", *common], out, "peer", cwd=out)
    if not options.skip_peer:
        run(["bash", options.peer, "val", "--weights", str(peer_dir / "weights" / "best.pt"), "--data", str(peer_data),
             "--imgsz", str(options.imgsz), "--save-json", "--project", str(out), "--name", "peer-val", "--exist-ok",
             "--device", "cpu"], out / "peer-val.log", cwd=out)
    val_output = (out / "peer-val.log").read_text()
    match = re.search(r"\ball\s+\d+\s+\d+\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)\s+([0-9.]+)", val_output)
    # the standalone val's table line; the last epoch of results.csv if that line is missing
    peer_map50, peer_map = ((float(match.group(1)), float(match.group(2))) if match else
                            results_columns(peer_dir / "results.csv", ["metrics/mAP_0.5", "metrics/mAP_0.5:0.95"])[-1])
    peer_predictions = json.loads((out / "peer-val" / "best_predictions.json").read_text())
    results["peer"] = {"seconds": seconds,
                       "map50": peer_map50, "map": peer_map,
                       "coco": coco_score(data["val"], peer_predictions, data)["map"]}

    images = options.epochs * len(data["train"])
    results["setup"] = (f"{options.cfg}, {options.epochs} epochs, {options.imgsz} px, batch {options.batch}, "
                        f"seed {options.seed}, {len(data['train'])} train / {len(data['val'])} val images, CPU")
    lines = [results["setup"],
             "| engine | train img/s | mAP50 (own) | mAP50-95 (own) | mAP50-95 (pycocotools) |", "|---|---|---|---|---|"]
    engines = [(name, label) for name, label, _ in OUR_VARIANTS] + [("peer", "upstream YOLOv5 7.0")]
    for name, label in engines:
        r = results[name]
        r["images_per_second"] = images / r["seconds"] if r["seconds"] else None
        speed = f"{r['images_per_second']:.1f}" if r["seconds"] else "-"
        lines.append(f"| {label} | {speed} | {r['map50']:.4f} | {r['map']:.4f} | {r['coco']:.4f} |")
    peer = results["peer"]
    for name, label, _ in OUR_VARIANTS:
        ours = results[name]
        speed_ratio = (f"{ours['images_per_second'] / peer['images_per_second']:.3f}"
                       if ours["seconds"] and peer["seconds"] else "-")
        lines.append(f"| {label} / upstream | {speed_ratio} | {ours['map50'] / max(peer['map50'], 1e-9):.3f} | "
                     f"{ours['map'] / max(peer['map'], 1e-9):.3f} | {ours['coco'] / max(peer['coco'], 1e-9):.3f} |")
    ours_losses, peer_losses = train_losses(out / "ours" / "results.csv"), train_losses(peer_dir / "results.csv")
    lines += ["", "mean training loss per epoch (box / obj / cls)", "| epoch | slimneck-yolo | upstream YOLOv5 7.0 |",
              "|---|---|---|"]
    shown = sorted({0, 1, 2} | set(range(4, options.epochs, 5)) | {options.epochs - 1})
    for epoch in (e for e in shown if e < min(len(ours_losses), len(peer_losses))):
        lines.append(f"| {epoch} | " + " | ".join(" / ".join(f"{v:.4f}" for v in losses[epoch])
                                                  for losses in (ours_losses, peer_losses)) + " |")
    table = "\n".join(lines)
    (out / "parity.md").write_text(table + "\n")
    (out / "parity.json").write_text(json.dumps(results, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
