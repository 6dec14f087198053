"""Train and compare model configs side by side: the workflow this project exists for.

    python compare.py --cfgs yolov5n.yaml yolov5n-slimneck.yaml --data data/shapes.yaml --epochs 10 --imgsz 320
    python compare.py --no-train --cfgs yolov5s.yaml yolov5s-slimneck.yaml --imgsz 640

Each config is trained with the same data, hyperparameters, epochs and seed (the train.py engine), in its own folder
``runs/compare/<name>/<cfg>``; an interrupted comparison resumes and skips finished runs. Then every best.pt is
validated, and the models' batch-1 latency is measured side by side in this process (warm-up, then the median of
interleaved runs) in their deploy form: with PyTorch, fused + ``models.deploy.optimize_for_inference`` in channels_last
memory format; and, when installed, with ONNX Runtime on the graph export.py writes. Prints one table with ratios to the first row, and
writes compare.csv, compare.md and compare.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.cli import run_command
from engine.torch_utils import interleaved_timings
from engine.trainer import DEFAULT_HYP, ROOT, Trainer, TrainOptions
from models.deploy import optimize_for_inference
from models.yolo import DetectionModel, count_gflops, count_parameters

logger = logging.getLogger("compare")
COLUMNS = ["config", "params (M)", "GFLOPs", "mAP50", "mAP50-95", "latency ms (torch)", "latency ms (onnxruntime)",
           "train img/s"]


@dataclass
class Row:
    """One compared model."""

    config: str
    model: DetectionModel = field(repr=False)
    params: int = 0
    gflops: float = 0.0
    map50: float | None = None
    map: float | None = None
    torch_ms: float | None = None
    onnx_ms: float | None = None
    train_speed: float | None = None

    def values(self) -> list:
        return [self.config, self.params / 1e6, self.gflops, self.map50, self.map, self.torch_ms, self.onnx_ms,
                self.train_speed]


def train_one(cfg: str, options: argparse.Namespace, run_dir: Path) -> dict:
    """Train ``cfg`` into ``run_dir`` unless already done there; resume an unfinished run."""
    done_file = run_dir / "done.json"
    if done_file.is_file():
        logger.info("%s: finished earlier, skipping training (%s)", cfg, run_dir)
        return json.loads(done_file.read_text())
    last = run_dir / "weights" / "last.pt"
    train_options = TrainOptions(
        data=options.data, cfg=cfg, hyp=options.hyp, epochs=options.epochs, batch_size=options.batch_size,
        imgsz=options.imgsz, device=options.device, workers=options.workers, project=str(run_dir.parent),
        name=run_dir.name, exist_ok=True, seed=options.seed, patience=0, noplots=options.noplots,
        resume=str(last) if last.is_file() else False, quiet=options.quiet)
    summary = Trainer(train_options).run()
    done_file.write_text(json.dumps(summary, indent=2))
    return summary


def validate(weights: Path, options: argparse.Namespace) -> dict:
    from engine.dataloader import create_dataloader
    from engine.dataset import load_data_config
    from engine.validate import evaluate
    from models.weights import load_model

    model, _ = load_model(weights, fuse=True)
    data = load_data_config(options.data)
    stride = max(int(model.stride.max()), 32)
    loader, _ = create_dataloader(data["val"], options.imgsz, options.batch_size * 2, stride, rect=True, pad=0.5,
                                  workers=options.workers, num_classes=data["nc"], prefix="val: ")
    return evaluate(model, loader, model.num_classes, model.names, torch.device("cpu"), progress=not options.quiet,
                    desc=Path(weights).parent.parent.name).metrics


def measure_latency(rows: list[Row], imgsz: int, runs: int, warmup: int, with_onnx: bool) -> None:
    """Median batch-1 latency per model and backend, the models of one backend interleaved run by run."""
    image = torch.rand(1, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    runners: dict[str, dict] = {"torch_ms": {}, "onnx_ms": {}}
    for index, row in enumerate(rows):
        model = optimize_for_inference(row.model).to(memory_format=torch.channels_last)
        runners["torch_ms"][index] = lambda m=model: m(image)
        if with_onnx:
            runners["onnx_ms"][index] = _onnx_runner(row.model, imgsz)
    for attribute, functions in runners.items():
        with torch.inference_mode():
            times = interleaved_timings(functions, runs, warmup)
        for index, samples in times.items():
            setattr(rows[index], attribute, statistics.median(samples) * 1e3)


def _onnx_runner(model: DetectionModel, imgsz: int):
    from engine.backends import OnnxBackend
    from export import export_onnx

    path = Path(tempfile.mkdtemp(prefix="compare-onnx-")) / "model.onnx"
    export_onnx(model, path, imgsz=imgsz)
    session = OnnxBackend(path, "cpu", threads=torch.get_num_threads()).session
    feed = {session.get_inputs()[0].name: torch.rand(1, 3, imgsz, imgsz).numpy()}
    return lambda: session.run(None, feed)


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def format_table(rows: list[Row]) -> str:
    """A Markdown table with every row, then each row's ratio to the first (the baseline)."""
    def cell(value, digits=3) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(v, 4) for v in row.values()) + " |")
    base = rows[0].values()
    for row in rows[1:]:
        ratios = [f"{row.config} / {rows[0].config}"]
        for value, reference in zip(row.values()[1:], base[1:]):
            ratios.append(f"{value / reference:.3f}" if value is not None and reference else "-")
        lines.append("| " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def write_outputs(rows: list[Row], save_dir: Path) -> None:
    save_dir.mkdir(parents=True, exist_ok=True)
    with (save_dir / "compare.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row.values()])
    (save_dir / "compare.md").write_text(format_table(rows) + "\n")
    plot_comparison(rows, save_dir / "compare.png")


def plot_comparison(rows: list[Row], path: Path) -> None:
    """mAP50-95 against latency and against GFLOPs, one labelled point per config."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    for axis, attribute, label in ((figure.add_subplot(1, 2, 1), "torch_ms", "latency ms (PyTorch, batch 1)"),
                                   (figure.add_subplot(1, 2, 2), "gflops", "GFLOPs")):
        for row in rows:
            x, y = getattr(row, attribute), row.map if row.map is not None else 0.0
            if x is None:
                continue
            axis.scatter([x], [y], s=40)
            axis.annotate(row.config.replace(".yaml", ""), (x, y), textcoords="offset points", xytext=(5, 5),
                          fontsize=8)
        axis.set_xlabel(label)
        axis.set_ylabel("mAP50-95")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfgs", nargs="+", default=["yolov5n.yaml", "yolov5n-slimneck.yaml"],
                        help="model YAMLs; the first is the baseline of the ratios")
    parser.add_argument("--data", default="data/shapes.yaml")
    parser.add_argument("--hyp", default=str(DEFAULT_HYP))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", "--img", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--project", default=str(ROOT / "runs" / "compare"))
    parser.add_argument("--name", default="exp", help="runs/compare/<name>; rerun with the same name to resume")
    parser.add_argument("--no-train", action="store_true", help="compare given --weights or bare configs only")
    parser.add_argument("--weights", nargs="+", default=None, help="with --no-train: checkpoints to compare")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--latency-warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the latency measurement")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    parser.add_argument("--noplots", action="store_true", help="no training plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    options = parser.parse_args(argv)
    if options.weights and not options.no_train:
        parser.error("--weights is for --no-train comparisons")
    return options


def run(options: argparse.Namespace) -> list[Row]:
    from models.weights import load_model

    save_dir = Path(options.project) / options.name
    rows: list[Row] = []
    if options.no_train:
        sources = options.weights or options.cfgs
        for source in sources:
            if options.weights:
                model, _ = load_model(source)
                label = Path(source).name
            else:
                model, label = DetectionModel(source), Path(source).name
            rows.append(Row(label, model.eval()))
    else:
        for cfg in options.cfgs:
            run_dir = save_dir / Path(cfg).stem
            summary = train_one(cfg, options, run_dir)
            metrics = validate(run_dir / "weights" / "best.pt", options)
            model, _ = load_model(run_dir / "weights" / "best.pt")
            rows.append(Row(Path(cfg).name, model, map50=metrics["map50"], map=metrics["map"],
                            train_speed=summary.get("train_images_per_second")))
    for row in rows:
        row.params = count_parameters(row.model)
        row.gflops = count_gflops(row.model, options.imgsz)
        row.model = row.model.cpu().float().fuse().eval()
    if options.threads:
        torch.set_num_threads(options.threads)
    with_onnx = not options.no_onnx and onnx_available()
    if not with_onnx and not options.no_onnx:
        logger.warning("onnx/onnxruntime not installed: no ONNX Runtime latency (pip install -r requirements-dev.txt)")
    measure_latency(rows, options.imgsz, options.latency_runs, options.latency_warmup, with_onnx)
    write_outputs(rows, save_dir)
    logger.info("\n%s\n\nlatency: deploy form (fused + rewrites), batch 1, %dx%d, %d threads, median of %d "
                "interleaved runs. Saved %s",
                format_table(rows), options.imgsz, options.imgsz, torch.get_num_threads(), options.latency_runs,
                save_dir / "compare.md")
    return rows


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return run_command(lambda: run(options))


if __name__ == "__main__":
    sys.exit(main())
