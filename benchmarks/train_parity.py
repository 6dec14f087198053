"""Train-parity benchmark: our engine against upstream YOLOv5 7.0 or YOLOv7 on the same data, epochs, image size,
batch and seed.

    python -m benchmarks.train_parity --epochs 60 --imgsz 320 --batch 16
        [--cfg yolov5n.yaml] [--data data/shapes.yaml] [--peer ../shared/peer/yolov5.sh] [--out runs/parity]
        [--hyp FILE] [--hyp-set key=value ...] [--variants ours ours-fp32]
    python -m benchmarks.train_parity --cfg yolov7-tiny.yaml ...   # against ../shared/peer7 (YOLOv7's recipe)
    python -m benchmarks.train_parity --summary runs/parity-seed0 runs/parity-seed1 ...   # mAP over seeds

A ``yolov7*`` config is compared with upstream YOLOv7 (../shared/peer7/yolov7.sh, its own cfg of that name, which
names every activation): both engines get the same hyperparameter file (default: the one our config names, e.g.
data/hyps/hyp.scratch.tiny.yaml: OTA loss, 1000-iteration warm-up floor), the cosine schedule (YOLOv7's default;
ours with --cos-lr) and NMS IoU 0.6 for the scored predictions; the peer's seed is PEER7_SEED. Upstream YOLOv7
makes 20 % of its mosaics from 9 images, which our engine does not: ``--hyp-set mosaic=0`` gives both engines the
same augmentation. ``--hyp-set`` writes the changed file to --out and gives it to both engines.

Our engine trains twice, with its defaults (``--precision auto --memory-format auto``: bf16 autocast where the CPU
has native bf16, channels_last on CPU) and as plain fp32 NCHW (``--precision fp32 --memory-format contiguous``), so
the table shows what the defaults buy. Both engines train from scratch with the same hyp file and validate after every
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
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("parity")
# Our engine's runs: (folder name, label, train.py flags). "ours" is the default the other scripts compare against.
OUR_VARIANTS = (("ours", "slimneck-yolo (defaults)", []),
                ("ours-fp32", "slimneck-yolo fp32 NCHW", ["--precision", "fp32", "--memory-format", "contiguous"]))


def run(command: list[str], log_file: Path, cwd: Path = ROOT, env: dict | None = None) -> tuple[float, str]:
    """Run a command in ``cwd``, save its output to ``log_file``; returns (wall seconds, output)."""
    logger.info("$ %s", " ".join(command))
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True,
                            env=None if env is None else {**os.environ, **env})
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    log_file.write_text(output)
    if result.returncode:
        raise RuntimeError(f"command failed ({result.returncode}); see {log_file}:\n{output[-3000:]}")
    return seconds, output


def train(command: list[str], out: Path, name: str, cwd: Path = ROOT, env: dict | None = None) -> float | None:
    """Run a training command (unless it ran before: then reuse its recorded time); returns its wall seconds, or
    None for an earlier run without a recorded time (one that ran beside other jobs, so it has no speed)."""
    timing = out / f"{name}.seconds"
    if command:
        seconds, _ = run(command, out / f"{name}.log", cwd, env)
        timing.write_text(f"{seconds:.3f}\n")
    if not any((out / name / results).exists() for results in ("results.csv", "results.txt")):
        raise RuntimeError(f"no earlier {name} run in {out}: run without --skip-{name}")
    return float(timing.read_text()) if timing.exists() else None


# upstream YOLOv7's results.txt: no header, these 15 space-separated columns per epoch (../shared/peer7/README.md)
YOLOV7_RESULT_COLUMNS = ("epoch", "gpu_mem", "train/box_loss", "train/obj_loss", "train/cls_loss", "total", "labels",
                         "img_size", "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
                         "val/box_loss", "val/obj_loss", "val/cls_loss")


def results_columns(run_dir: Path, columns: list[str]) -> list[list[float]]:
    """Per epoch: the values of ``columns`` (YOLOv5 names) in a run's results.csv (our engine and YOLOv5 write one;
    upstream pads its header with spaces) or, for upstream YOLOv7, its results.txt."""
    import csv

    if (run_dir / "results.csv").exists():
        rows = list(csv.reader((run_dir / "results.csv").open()))
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    else:
        header = list(YOLOV7_RESULT_COLUMNS)
        rows = [line.split() for line in (run_dir / "results.txt").read_text().splitlines() if line.strip()]
    indices = [header.index(column) for column in columns]
    return [[float(row[i]) for i in indices] for row in rows]


def train_losses(run_dir: Path) -> list[list[float]]:
    """Per epoch: the mean (box, obj, cls) training loss."""
    return results_columns(run_dir, [f"train/{term}_loss" for term in ("box", "obj", "cls")])


@dataclass
class Peer:
    """How to train and validate with one upstream engine."""

    label: str
    script: Path
    yolov7: bool

    def train_command(self, cfg: str, hyp: Path, data: Path, out: Path, options) -> tuple[list[str], dict]:
        sizes = ["--epochs", str(options.epochs), "--batch-size", str(options.batch), "--workers",
                 str(options.workers), "--device", "cpu", "--exist-ok", "--project", str(out), "--name", "peer"]
        if self.yolov7:  # no --seed (PEER7_SEED); cosine lr is its default; its own cfg names the activations
            return (["bash", str(self.script), "train", "--cfg", cfg, "--hyp", str(hyp), "--weights", "", "--data",
                     str(data), "--img-size", str(options.imgsz), "--v5-metric", *sizes],
                    {"PEER7_SEED": str(options.seed)})
        return (["bash", str(self.script), "train", "--cfg", cfg, "--hyp", str(hyp), "--weights", "", "--data",
                 str(data), "--imgsz", str(options.imgsz), "--seed", str(options.seed), *sizes], {})

    def val_command(self, weights: Path, data: Path, out: Path, imgsz: int) -> list[str]:
        common = ["--weights", str(weights), "--data", str(data), "--save-json", "--project", str(out), "--name",
                  "peer-val", "--exist-ok", "--device", "cpu"]
        if self.yolov7:  # NMS IoU 0.6 as ours (its test.py defaults to 0.65); YOLOv5-style AP
            return ["bash", str(self.script), "test", *common, "--img-size", str(imgsz), "--iou-thres", "0.6",
                    "--v5-metric", "--no-trace"]
        return ["bash", str(self.script), "val", *common, "--imgsz", str(imgsz)]


def choose_peer(cfg: str, script: str | None) -> Peer:
    yolov7 = Path(cfg).name.startswith("yolov7")
    default = ROOT.parent / "shared" / ("peer7/yolov7.sh" if yolov7 else "peer/yolov5.sh")
    return Peer("upstream YOLOv7" if yolov7 else "upstream YOLOv5 7.0", Path(script) if script else default, yolov7)


def parity_hyp(options, out: Path) -> tuple[Path, str]:
    """The hyperparameter file both engines train with: --hyp, else the one our model config names, else
    scratch-low; with the --hyp-set changes written to ``out``. Returns (file, the name of the file it came from)."""
    import yaml

    from engine.train.trainer import DEFAULT_HYP, load_hyp, resolve_hyp_path
    from models.parse import load_model_config

    path = options.hyp or load_model_config(options.cfg)[0].get("hyp") or str(DEFAULT_HYP)
    hyp = load_hyp(path)
    source = resolve_hyp_path(path)
    if not options.hyp_set:
        return source, source.name
    for change in options.hyp_set:
        key, _, value = change.partition("=")
        if key not in hyp:
            raise SystemExit(f"--hyp-set {change}: {path} has no key {key!r}")
        hyp[key] = yaml.safe_load(value)
    changed = out / "hyp.yaml"
    changed.write_text(yaml.safe_dump(hyp, sort_keys=False))
    return changed, source.name


def coco_score(val_images: list[Path], predictions: list[dict], data: dict) -> dict:
    """pycocotools mAP of ``predictions`` (image ids from each file stem, 0-based category ids)."""
    import cv2
    import numpy as np

    from engine.data.labels import image_to_label_path, parse_label_file
    from engine.evaluate.coco import evaluate_coco, yolo_to_coco_gt

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

    from engine.data.loader import create_dataloader
    from engine.evaluate.validate import evaluate
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
    """COCO result records keyed by file stem (engine.evaluate.coco.predictions_to_coco takes
    numeric ids; coco_score maps
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
        first = next(name for name, _, _ in OUR_VARIANTS if name in results)
        ours, peer = results[first]["coco"], results["peer"]["coco"]
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
    parser.add_argument("--peer", default=None, help="the peer's script (default: ../shared/peer/yolov5.sh, or "
                        "../shared/peer7/yolov7.sh for a yolov7* --cfg)")
    parser.add_argument("--hyp", default="", help="hyperparameter file for both engines (default: the one the "
                        "model config names, else scratch-low)")
    parser.add_argument("--hyp-set", nargs="+", default=[], metavar="KEY=VALUE", help="change hyp keys for both")
    parser.add_argument("--variants", nargs="+", default=[name for name, _, _ in OUR_VARIANTS],
                        choices=[name for name, _, _ in OUR_VARIANTS], help="our engine's runs")
    parser.add_argument("--out", default=str(ROOT / "runs" / "parity"))
    parser.add_argument("--skip-ours", action="store_true", help="reuse an earlier run of our engine in --out")
    parser.add_argument("--skip-peer", action="store_true", help="reuse an earlier peer run in --out")
    parser.add_argument("--summary", nargs="+", metavar="OUT", help="only summarise earlier runs (their --out folders)")
    options = parser.parse_args(argv)
    if options.summary:
        print(summary(options.summary))
        return 0

    from engine.data.config import load_data_config

    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_data_config(options.data)
    peer = choose_peer(options.cfg, options.peer)
    hyp, hyp_source = parity_hyp(options, out)
    common = ["--epochs", str(options.epochs), "--imgsz", str(options.imgsz), "--batch-size", str(options.batch),
              "--seed", str(options.seed), "--workers", str(options.workers), "--device", "cpu", "--exist-ok",
              "--hyp", str(hyp), *(["--cos-lr"] if peer.yolov7 else [])]
    results = {}
    variants = [variant for variant in OUR_VARIANTS if variant[0] in options.variants]

    for name, _, flags in variants:
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
    peer_data.write_text(json.dumps({"train": str(peer_list / "train.txt"), "val": str(peer_list / "val.txt"),
                                     "nc": data["nc"], "names": list(data["names"])}))  # JSON keys would be strings
    for cache in peer_list.glob("*.cache"):  # the two peers' label caches share a name, not a format
        cache.unlink()
    command, env = peer.train_command(options.cfg, hyp, peer_data, out, options)
    seconds = train([] if options.skip_peer else command, out, "peer", cwd=out, env=env)
    if not options.skip_peer:
        run(peer.val_command(peer_dir / "weights" / "best.pt", peer_data, out, options.imgsz), out / "peer-val.log",
            cwd=out)
    val_output = (out / "peer-val.log").read_text()
    match = re.search(r"\ball\s+\d+\s+\d+\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)\s+([0-9.]+)", val_output)
    # the standalone val's table line; the last epoch of the results if that line is missing
    peer_map50, peer_map = ((float(match.group(1)), float(match.group(2))) if match else
                            results_columns(peer_dir, ["metrics/mAP_0.5", "metrics/mAP_0.5:0.95"])[-1])
    peer_predictions = json.loads((out / "peer-val" / "best_predictions.json").read_text())
    results["peer"] = {"seconds": seconds,
                       "map50": peer_map50, "map": peer_map,
                       "coco": coco_score(data["val"], peer_predictions, data)["map"]}

    images = options.epochs * len(data["train"])
    changes = f", {' '.join(options.hyp_set)}" if options.hyp_set else ""
    results["setup"] = (f"{options.cfg}, {options.epochs} epochs, {options.imgsz} px, batch {options.batch}, "
                        f"seed {options.seed}, {len(data['train'])} train / {len(data['val'])} val images, "
                        f"{hyp_source}{changes}, CPU")
    lines = [results["setup"],
             "| engine | train img/s | mAP50 (own) | mAP50-95 (own) | mAP50-95 (pycocotools) |", "|---|---|---|---|---|"]
    engines = [(name, label) for name, label, _ in variants] + [("peer", peer.label)]
    for name, label in engines:
        r = results[name]
        r["images_per_second"] = images / r["seconds"] if r["seconds"] else None
        speed = f"{r['images_per_second']:.1f}" if r["seconds"] else "-"
        lines.append(f"| {label} | {speed} | {r['map50']:.4f} | {r['map']:.4f} | {r['coco']:.4f} |")
    theirs = results["peer"]
    for name, label, _ in variants:
        ours = results[name]
        speed_ratio = (f"{ours['images_per_second'] / theirs['images_per_second']:.3f}"
                       if ours["seconds"] and theirs["seconds"] else "-")
        lines.append(f"| {label} / upstream | {speed_ratio} | {ours['map50'] / max(theirs['map50'], 1e-9):.3f} | "
                     f"{ours['map'] / max(theirs['map'], 1e-9):.3f} | {ours['coco'] / max(theirs['coco'], 1e-9):.3f} |")
    first = variants[0][0]
    ours_losses, peer_losses = train_losses(out / first), train_losses(peer_dir)
    lines += ["", "mean training loss per epoch (box / obj / cls)", f"| epoch | slimneck-yolo | {peer.label} |",
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
