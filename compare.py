"""Train and compare model configs side by side, and say how sure the comparison is.

    python compare.py --cfgs yolov5n.yaml yolov5n-slimneck.yaml --data data/shapes.yaml --epochs 100 --seeds 0 1 2
    python compare.py --no-train --weights a.pt b.pt --data my.yaml --imgsz 640
    python compare.py --no-train --cfgs yolov5s.yaml yolov5s-slimneck.yaml --imgsz 640   # size and latency only

Each config is trained once per seed with the same data, hyperparameters and epochs (the train.py engine; the seed
changes initialisation, augmentation and data order), in ``runs/compare/<name>/<cfg>/seed<k>``; an interrupted
comparison resumes and skips finished runs. A run is validated once, after its last epoch (``--noval``; last.pt is
scored): picking the best epoch by validation mAP would select on the very images the comparison then scores. It is
scored at the size it was trained at (``--val-pad 0``): with val.py's padding, square images at --imgsz 96 are scored
at 128, and two slim-neck yolov5n trained at 96 lost 0.28 and 0.14 mAP50-95 to that change of scale where their
baselines lost 0.05 and 0.01 (README "Reading a comparison"). The first seed's models are timed side by side at batch 1 in their deploy form (PyTorch: fused +
``models.deploy.optimize_for_inference``, channels_last; ONNX Runtime, OpenVINO and OpenVINO INT8 on the graph
export.py writes, each when installed), each model built ``--latency-builds`` times, all builds interleaved round by
round. The INT8 model (NNCF, calibrated on --data train images as ``export.py --int8``) is also validated, so the
table shows what quantizing costs in mAP.

The table shows mAP as mean ± standard deviation over seeds (with one seed: the value and its bootstrap interval),
and under it one verdict line per config against the baseline (the first): the mean paired difference over seeds
with its Student-t 95 % interval, the within-run 95 % interval of the difference from a paired bootstrap over the
validation images, and the relative size, GFLOPs and latency (with a Welch t interval over the builds of each
model). "Higher" or "lower" only when the interval excludes no change (engine/evaluate/stats.py). Writes
compare.csv (one row per config and seed), compare.json (every value and interval), compare.md and compare.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.cli import run_command
from engine.evaluate.stats import (DEFAULT_RESAMPLES, Interval, bootstrap_maps, latency_ratio, percentile_interval,
                                   t_interval, typical_latency)
from engine.torch_utils import interleaved_timings
from engine.train.trainer import DEFAULT_HYP, ROOT, Trainer, TrainOptions
from models.deploy import optimize_for_inference
from models.yolo import DetectionModel, count_gflops, count_parameters

logger = logging.getLogger("compare")
METRICS = (("map50", "mAP50"), ("map", "mAP50-95"))
BACKENDS = (("torch", "torch"), ("onnx", "onnxruntime"), ("openvino", "openvino"), ("openvino-int8", "openvino INT8"))
EXPORTED = ("onnx", "openvino", "openvino-int8")  # timed on the graph export.py writes (fixed 1x3xHxW input)


@dataclass
class SeedRun:
    """One trained (or given) model of a config: its seed, metrics and the per-image matches behind them."""

    seed: int | None
    map50: float
    map: float
    train_speed: float | None = None
    image_stats: list = field(default_factory=list, repr=False)
    interval: dict = field(default_factory=dict)  # metric -> bootstrap Interval of this run's value


@dataclass
class Entry:
    """One compared config: its size, its runs (one per seed), and its latency rounds per backend."""

    label: str
    model: DetectionModel = field(repr=False)
    params: int = 0
    gflops: float = 0.0
    runs: list[SeedRun] = field(default_factory=list)
    latency: dict = field(default_factory=dict)  # backend -> per build of the model, its seconds per timing round
    int8: dict | None = None  # the first seed's model as INT8 OpenVINO IR: its map50 and map on the val set
    weights: Path | None = None  # the first seed's checkpoint (None for a bare config)

    def metric(self, name: str) -> list[float]:
        return [getattr(run, name) for run in self.runs]

    def latency_ms(self, backend: str) -> float | None:
        builds = self.latency.get(backend)
        return typical_latency(builds) * 1e3 if builds else None


# ---------------------------------------------------------------------------------------------- training, validation

def run_folders(cfgs: list[str]) -> list[str]:
    """A folder name per listed config (its stem; a config listed twice gets -2, -3 ...: trained again)."""
    names, seen = [], {}
    for cfg in cfgs:
        stem = Path(cfg).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def train_one(cfg: str, seed: int, options: argparse.Namespace, run_dir: Path) -> dict:
    """Train ``cfg`` with ``seed`` into ``run_dir`` unless already done there; resume an unfinished run."""
    done_file = run_dir / "done.json"
    if done_file.is_file():
        logger.info("%s seed %d: finished earlier, skipping training (%s)", cfg, seed, run_dir)
        return json.loads(done_file.read_text())
    last = run_dir / "weights" / "last.pt"
    train_options = TrainOptions(
        data=options.data, cfg=cfg, hyp=options.hyp, epochs=options.epochs, batch_size=options.batch_size,
        imgsz=options.imgsz, device=options.device, workers=options.workers, project=str(run_dir.parent),
        name=run_dir.name, exist_ok=True, seed=seed, patience=0, noval=True, cache=options.cache,
        noplots=options.noplots,
        resume=str(last) if last.is_file() else False, quiet=options.quiet)
    summary = Trainer(train_options).run()
    done_file.write_text(json.dumps(summary, indent=2))
    return summary


def parallel_devices(device: str) -> list[str]:
    """The CUDA devices to train on side by side: ``--device 0,1,2,3`` gives four (one run per GPU at a time);
    anything else (one device, ``cpu``, the default) gives one, and runs go one after the other."""
    indices = [part.strip() for part in str(device).replace("cuda:", "").split(",") if part.strip()]
    return indices if len(indices) > 1 and all(index.isdigit() for index in indices) else [device]


def _train_in_child(cfg: str, seed: int, options: argparse.Namespace, run_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_one(cfg, seed, options, run_dir)


def train_on_device(job: tuple[str, int, Path], device: str, options: argparse.Namespace) -> dict:
    """Train one (cfg, seed, run folder) job on ``device`` in a fresh process, so that concurrent runs share no
    global state (seeds, CUDA context); the run's summary comes back through its done.json."""
    import multiprocessing

    cfg, seed, run_dir = job
    if (run_dir / "done.json").is_file():
        return train_one(cfg, seed, options, run_dir)  # finished earlier: nothing to start
    child = multiprocessing.get_context("spawn").Process(
        target=_train_in_child, args=(cfg, seed, argparse.Namespace(**{**vars(options), "device": device}), run_dir),
        name=f"{Path(cfg).stem}-seed{seed}")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"training {cfg} seed {seed} on device {device} failed (exit code {child.exitcode}); "
                           f"its log is above, its run folder {run_dir}; rerun the command to resume")
    return json.loads((run_dir / "done.json").read_text())


def train_all(jobs: list[tuple[str, int, Path]], options: argparse.Namespace, run_job=None) -> list[dict]:
    """Train every (cfg, seed, run folder) job and return their summaries in job order.

    One device: in this process, one job after the other. Several (``parallel_devices``): one worker thread per
    device takes the next job from a shared queue and trains it with ``run_job(job, device, options)``
    (``train_on_device`` by default), so each device runs one job at a time and none waits while jobs remain.
    The first failure is raised after the jobs already running have finished (finished jobs stay done).
    """
    import queue
    import threading

    devices = parallel_devices(options.device)
    if len(devices) == 1:
        return [train_one(cfg, seed, options, run_dir) for cfg, seed, run_dir in jobs]
    run_job = run_job or train_on_device
    pending: queue.Queue = queue.Queue()
    for index, job in enumerate(jobs):
        pending.put((index, job))
    summaries: list = [None] * len(jobs)
    failures: list[BaseException] = []

    def worker(device: str) -> None:
        while not failures:
            try:
                index, job = pending.get_nowait()
            except queue.Empty:
                return
            try:
                summaries[index] = run_job(job, device, options)
            except BaseException as error:  # noqa: BLE001 - re-raised in the main thread below
                failures.append(error)

    logger.info("training %d runs on devices %s, one run per device at a time", len(jobs), ", ".join(devices))
    threads = [threading.Thread(target=worker, args=(device,), name=f"device-{device}") for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return summaries


def validate(weights: Path, options: argparse.Namespace) -> tuple[dict, list]:
    """mAP of ``weights`` (a .pt file or an exported model) on the --data validation set, and the per-image matches
    for the bootstrap. Batches are padded by ``--val-pad`` strides (0 by default: scored at --imgsz, as trained)."""
    from engine.evaluate.validate import validate_weights

    result = validate_weights(weights, options.data, options.imgsz, options.batch_size * 2, options.workers,
                              progress=not options.quiet, pad=options.val_pad)
    return result.metrics, result.detection_metrics.image_stats()


def add_bootstrap_intervals(entries: list[Entry], num_classes: int, resamples: int) -> dict:
    """Per seed: every run's bootstrap interval, and each config's paired difference to the baseline on the same
    resampled images. Returns {label: {metric: [Interval per seed]}} of the differences."""
    differences: dict = {entry.label: {name: [] for name, _ in METRICS} for entry in entries[1:]}
    for index in range(len(entries[0].runs)):
        runs = [entry.runs[index] for entry in entries]
        values = bootstrap_maps([run.image_stats for run in runs], num_classes, resamples, seed=index)
        for column, (name, _) in enumerate(METRICS):
            for run, samples in zip(runs, values[:, :, column].T):
                run.interval[name] = percentile_interval(getattr(run, name), samples)
            for entry, run, samples in zip(entries[1:], runs[1:], values[:, 1:, column].T):
                estimate = getattr(run, name) - getattr(runs[0], name)
                differences[entry.label][name].append(percentile_interval(estimate, samples - values[:, 0, column]))
    return differences


# ---------------------------------------------------------------------------------------------- latency

def measure_latency(entries: list[Entry], imgsz: int, runs: int, warmup: int, backends: list[str],
                    calibration: torch.Tensor | None = None, builds: int = 3) -> None:
    """Batch-1 latency rounds per model and backend (``backends``: names in BACKENDS). Each model is built
    ``builds`` times per backend (weights copied again, the exported file compiled again): builds of one model
    differ in speed by several per cent (``engine.evaluate.stats.latency_ratio``). All builds of all models of one
    backend run interleaved, round by round. ``calibration`` images calibrate the INT8 model (random images when
    None)."""
    image = torch.rand(1, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    workdir = Path(tempfile.mkdtemp(prefix="compare-exported-"))
    for backend in backends:
        runners = {}
        for index, entry in enumerate(entries):
            exported = None
            if backend in EXPORTED:
                exported = _export_for(backend, entry.model, imgsz, workdir / f"model{index}.onnx", calibration)
            for build in range(builds):
                runners[index, build] = _latency_runner(backend, entry.model, image, exported)
        with torch.inference_mode():
            times = interleaved_timings(runners, runs, warmup)
        for index, entry in enumerate(entries):
            entry.latency[backend] = [times[index, build] for build in range(builds)]


def _export_for(backend: str, model: DetectionModel, imgsz: int, onnx_path: Path,
                calibration: torch.Tensor | None) -> Path:
    """The file ``backend`` runs: the ONNX graph export.py writes, or its OpenVINO IR (fp32, or INT8 by NNCF)."""
    from engine.infer.export import export_onnx, export_openvino

    if not onnx_path.is_file():
        export_onnx(model, onnx_path, imgsz=imgsz)
    if backend == "onnx":
        return onnx_path
    if backend == "openvino-int8" and calibration is None:
        calibration = torch.rand(32, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    return export_openvino(onnx_path, onnx_path.with_name(f"{onnx_path.stem}_{backend}"),
                           int8_calibration=calibration if backend == "openvino-int8" else None)


def _latency_runner(backend: str, model: DetectionModel, image: torch.Tensor, exported: Path | None):
    """A fresh build of ``model`` for ``backend`` (its own weight copy, or its own compiled session of
    ``exported``), as a no-argument callable running one batch-1 forward."""
    from engine.infer.backends import OnnxBackend, OpenVinoBackend

    threads = torch.get_num_threads()
    if backend == "torch":
        built = optimize_for_inference(model).to(memory_format=torch.channels_last)
        return lambda: built(image)
    feed = image.contiguous().numpy()
    if backend == "onnx":  # idle workers must not spin: the next forward in the round is another session's
        session = OnnxBackend(exported, "cpu", threads=threads, spin=False).session
        return lambda: session.run(None, {session.get_inputs()[0].name: feed})
    compiled = OpenVinoBackend(exported, threads=threads).compiled
    return lambda: compiled(feed)


def installed_backends() -> list[str]:
    """torch, and each exported backend whose packages are installed (onnx + onnxruntime; openvino; nncf)."""
    import importlib.util

    have = {name: importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "openvino", "nncf")}
    backends = ["torch"]
    if have["onnx"] and have["onnxruntime"]:
        backends.append("onnx")
    if have["onnx"] and have["openvino"]:
        backends.append("openvino")
        if have["nncf"]:
            backends.append("openvino-int8")
    return backends


def int8_metrics(entry: Entry, options: argparse.Namespace, calibration: torch.Tensor, workdir: Path) -> None:
    """Export the entry's weights (the first seed's model) as INT8 OpenVINO IR with dynamic shapes, validate it."""
    from engine.infer.export import export_onnx, export_openvino
    from models.weights import load_model

    model, _ = load_model(entry.weights)
    folder = Path(tempfile.mkdtemp(prefix="int8-", dir=workdir))
    onnx_path = export_onnx(model, folder / "model.onnx", imgsz=options.imgsz, dynamic=True)
    xml = export_openvino(onnx_path, folder / "int8", int8_calibration=calibration)
    metrics, _ = validate(xml, options)
    entry.int8 = {"map50": metrics["map50"], "map": metrics["map"]}
    logger.info("%s INT8 (OpenVINO, NNCF): mAP50 %.4f, mAP50-95 %.4f (fp32: %.4f, %.4f)", entry.label,
                metrics["map50"], metrics["map"], entry.runs[0].map50, entry.runs[0].map)


# ---------------------------------------------------------------------------------------------- report

def _signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}"


def _percent(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


def metric_cell(entry: Entry, name: str) -> str:
    """mean ± std over seeds, or the single value with its bootstrap interval."""
    values = entry.metric(name)
    if not values:
        return "-"
    if len(values) > 1:
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    interval = entry.runs[0].interval.get(name)
    return f"{values[0]:.4f} [{interval.low:.4f}, {interval.high:.4f}]" if interval else f"{values[0]:.4f}"


def format_table(entries: list[Entry]) -> str:
    columns = ["config", "params (M)", "GFLOPs", "mAP50", "mAP50-95", "mAP50-95 INT8",
               *[f"latency ms ({label})" for _, label in BACKENDS], "train img/s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in entries:
        speeds = [s for s in entry.metric("train_speed") if s]
        cells = [entry.label, f"{entry.params / 1e6:.4g}", f"{entry.gflops:.4g}",
                 metric_cell(entry, "map50"), metric_cell(entry, "map"),
                 f"{entry.int8['map']:.4f}" if entry.int8 else "-"]
        cells += [f"{entry.latency_ms(backend):.4g}" if entry.latency_ms(backend) else "-" for backend, _ in BACKENDS]
        cells.append(f"{np.mean(speeds):.3g}" if speeds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(entries: list[Entry], differences: dict) -> tuple[list[str], dict]:
    """One line per config against the baseline, and the same numbers for compare.json."""
    base = entries[0]
    lines, report = [], {}
    for entry in entries[1:]:
        parts, record = [], {}
        for name, _ in METRICS if entry.runs else ():
            per_seed = [run - base_run for run, base_run in zip(entry.metric(name), base.metric(name))]
            within = differences[entry.label][name]
            seeds = t_interval(per_seed)
            record[name] = {"per_seed": per_seed, "between_seeds": seeds.as_dict(),
                            "within_run": [interval.as_dict() for interval in within]}
        if entry.runs:  # mAP50-95 is the headline; mAP50's intervals go to compare.json
            parts.append(_map_verdict(record["map"]))
        parts.append(f"params {_percent(entry.params / base.params)}, GFLOPs {_percent(entry.gflops / base.gflops)}")
        for backend, label in BACKENDS:
            if entry.latency.get(backend) and base.latency.get(backend):
                ratio = latency_ratio(base.latency[backend], entry.latency[backend])
                record[f"latency_{backend}_ratio"] = ratio.as_dict()
                parts.append(_latency_verdict(label, ratio))
        lines.append(f"{entry.label} vs {base.label}: " + "; ".join(parts))
        report[entry.label] = record
    return lines, report


def _latency_verdict(label: str, ratio: Interval) -> str:
    spread = (f"{ratio.samples} builds each" if ratio.samples > 1
              else "over timing rounds; 1 build each: build-to-build variation not measured")
    return (f"latency ({label}) {_percent(ratio.estimate)} (95 % CI {_percent(ratio.low)} .. {_percent(ratio.high)}, "
            f"{spread}): {ratio.verdict(reference=1.0)}")


def _map_verdict(record: dict) -> str:
    seeds, within = Interval(**record["between_seeds"]), Interval(**record["within_run"][0])
    if seeds.measured:
        return (f"mAP50-95 {_signed(seeds.estimate)} (95 % CI {_signed(seeds.low)} .. {_signed(seeds.high)}, "
                f"{seeds.samples} seeds; within a run {_signed(within.low)} .. {_signed(within.high)} by bootstrap): "
                f"{seeds.verdict()}")
    return (f"mAP50-95 {_signed(within.estimate)} (95 % CI {_signed(within.low)} .. {_signed(within.high)}, bootstrap "
            f"over the validation images; 1 seed: training-to-training variation not measured): {within.verdict()}")


def write_outputs(entries: list[Entry], lines: list[str], report: dict, save_dir: Path, table: str) -> None:
    save_dir.mkdir(parents=True, exist_ok=True)
    with (save_dir / "compare.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["config", "seed", "params", "GFLOPs", "mAP50", "mAP50 low", "mAP50 high", "mAP50-95",
                         "mAP50-95 low", "mAP50-95 high", "train img/s",
                         *[f"latency ms ({label})" for _, label in BACKENDS], "INT8 mAP50", "INT8 mAP50-95"])
        for entry in entries:
            for run in entry.runs or [None]:
                cells = [entry.label, "" if run is None else run.seed, entry.params, entry.gflops]
                for name, _ in METRICS:
                    interval = run.interval.get(name) if run else None
                    cells += ["" if run is None else getattr(run, name), "" if interval is None else interval.low,
                              "" if interval is None else interval.high]
                cells.append("" if run is None or run.train_speed is None else run.train_speed)
                cells += ["" if entry.latency_ms(b) is None else entry.latency_ms(b) for b, _ in BACKENDS]
                first = run is None or run is entry.runs[0]
                cells += [entry.int8[key] if entry.int8 and first else "" for key in ("map50", "map")]
                writer.writerow(cells)
    payload = {"configs": [{"config": entry.label, "params": entry.params, "gflops": entry.gflops,
                            "runs": [{"seed": run.seed, "map50": run.map50, "map": run.map,
                                      "train_images_per_second": run.train_speed,
                                      "bootstrap": {k: v.as_dict() for k, v in run.interval.items()}}
                                     for run in entry.runs],
                            "latency_s_per_build_and_round": entry.latency, "int8_first_seed": entry.int8}
                           for entry in entries],
               "against_baseline": report, "verdicts": lines}
    (save_dir / "compare.json").write_text(json.dumps(payload, indent=2, allow_nan=True))
    (save_dir / "compare.md").write_text(table + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    plot_comparison(entries, save_dir / "compare.png")


def plot_comparison(entries: list[Entry], path: Path) -> None:
    """mAP50-95 against latency and against GFLOPs, with error bars (std over seeds, or the bootstrap interval)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    for axis, label in ((figure.add_subplot(1, 2, 1), "latency ms (PyTorch, batch 1)"),
                        (figure.add_subplot(1, 2, 2), "GFLOPs")):
        for entry in entries:
            x = entry.latency_ms("torch") if label.startswith("latency") else entry.gflops
            values = entry.metric("map")
            if x is None or not values:
                continue
            y = float(np.mean(values))
            if len(values) > 1:
                error = [[np.std(values, ddof=1)], [np.std(values, ddof=1)]]
            else:
                interval: Interval = entry.runs[0].interval["map"]
                error = [[y - interval.low], [interval.high - y]]
            axis.errorbar([x], [y], yerr=error, fmt="o", capsize=4)
            axis.annotate(entry.label.replace(".yaml", ""), (x, y), textcoords="offset points", xytext=(5, 5),
                          fontsize=8)
        axis.set_xlabel(label)
        axis.set_ylabel("mAP50-95 (error bars: std over seeds or 95 % bootstrap)")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------- command line

def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfgs", nargs="+", default=["yolov5n.yaml", "yolov5n-slimneck.yaml"],
                        help="model YAMLs; the first is the baseline of the differences and ratios")
    parser.add_argument("--data", default="data/blocks.yaml")
    parser.add_argument("--hyp", default="", help="hyperparameter YAML for every model (default: each model "
                        f"config's hyp: key, else {DEFAULT_HYP.relative_to(ROOT)})")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--imgsz", "--img", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0, 1],
                        help="train every config once per seed (2 or more measure training-to-training variation)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                        help="resamples of the validation images for the within-run intervals")
    parser.add_argument("--device", default="",
                        help="cpu, or CUDA indices; several (0,1,2,3) train the runs side by side, one per GPU")
    parser.add_argument("--workers", type=int, default=2,
                        help="dataloader workers per run (0: load in the training process, fastest on 2 cores)")
    parser.add_argument("--cache", nargs="?", const="ram", default=None, choices=["ram", "disk"],
                        help="cache decoded training images (as train.py --cache)")
    parser.add_argument("--project", default=str(ROOT / "runs" / "compare"))
    parser.add_argument("--name", default="exp", help="runs/compare/<name>; rerun with the same name to resume")
    parser.add_argument("--no-train", action="store_true", help="compare given --weights or bare configs only")
    parser.add_argument("--weights", nargs="+", default=None, help="with --no-train: checkpoints to compare")
    parser.add_argument("--val-pad", type=float, default=0.0,
                        help="padding of the rectangular validation batches, in strides (val.py --pad). 0: every model "
                        "is scored at --imgsz, the size it was trained at; val.py's 0.5 scores square images at "
                        "--imgsz + one stride (96 -> 128), a change of scale that the comparison would then measure")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--latency-warmup", type=int, default=3)
    parser.add_argument("--latency-builds", type=int, default=3,
                        help="builds of each model per backend, timed side by side (2 or more measure how much "
                        "builds of one model differ, which the latency intervals need)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the latency measurement")
    parser.add_argument("--no-onnx", action="store_true", help="time PyTorch only (no ONNX Runtime / OpenVINO)")
    parser.add_argument("--no-int8", action="store_true", help="no INT8 model (its latency and mAP)")
    parser.add_argument("--calibration-images", type=int, default=300, help="INT8 calibration images (--data train)")
    parser.add_argument("--noplots", action="store_true", help="no training plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    options = parser.parse_args(argv)
    if options.weights and not options.no_train:
        parser.error("--weights is for --no-train comparisons")
    if options.latency_builds < 1 or options.latency_runs < 1:
        parser.error("--latency-builds and --latency-runs need at least 1")
    if options.bootstrap < 10:
        parser.error("--bootstrap needs at least 10 resamples")
    return options


def collect(options: argparse.Namespace, save_dir: Path) -> list[Entry]:
    """Train (or load) every config and validate every run."""
    from models.weights import load_model

    entries: list[Entry] = []
    if options.no_train:
        for source in options.weights or options.cfgs:
            if options.weights:
                model, _ = load_model(source)
                entry = Entry(_weights_label(Path(source)), model.eval(), weights=Path(source))
                map_values, stats = validate(Path(source), options)
                entry.runs.append(SeedRun(None, map_values["map50"], map_values["map"], image_stats=stats))
            else:
                entry = Entry(Path(source).name, DetectionModel(source).eval())
            entries.append(entry)
        return entries
    jobs = [(cfg, seed, save_dir / folder / f"seed{seed}")
            for cfg, folder in zip(options.cfgs, run_folders(options.cfgs)) for seed in options.seeds]
    summaries = train_all(jobs, options)
    for start in range(0, len(jobs), len(options.seeds)):
        entry = None
        for (cfg, seed, run_dir), summary in zip(jobs[start:start + len(options.seeds)], summaries[start:]):
            final = run_dir / "weights" / "last.pt"  # the model after the last epoch (no selection on val)
            map_values, stats = validate(final, options)
            if entry is None:  # the first seed's weights stand for the config in size and latency
                entry = Entry(Path(cfg).name, load_model(final)[0], weights=final)
            entry.runs.append(SeedRun(seed, map_values["map50"], map_values["map"],
                                      summary.get("train_images_per_second"), stats))
        entries.append(entry)
    return entries


def _weights_label(path: Path) -> str:
    """``runs/train/exp3/weights/last.pt`` -> ``exp3/last.pt`` (a run's files share their names); else the name."""
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "weights" else path.name


def run(options: argparse.Namespace) -> list[Entry]:
    save_dir = Path(options.project) / options.name
    entries = collect(options, save_dir)
    differences = {}
    if entries[0].runs:
        from engine.data.config import load_data_config

        differences = add_bootstrap_intervals(entries, load_data_config(options.data)["nc"], options.bootstrap)
    for entry in entries:
        entry.params = count_parameters(entry.model)
        entry.gflops = count_gflops(entry.model, options.imgsz)
        entry.model = entry.model.cpu().float().fuse().eval()
    if options.threads:
        torch.set_num_threads(options.threads)
    backends = ["torch"] if options.no_onnx else installed_backends()
    if options.no_int8:
        backends = [backend for backend in backends if backend != "openvino-int8"]
    missing = [label for backend, label in BACKENDS if backend not in backends]
    if missing and not options.no_onnx:
        logger.warning("not timed (package not installed or switched off): %s (pip install -r requirements-dev.txt)",
                       ", ".join(missing))
    calibration = None
    if "openvino-int8" in backends and options.data and entries[0].runs:
        from engine.infer.export import calibration_images

        calibration = calibration_images(options.data, options.calibration_images, options.imgsz,
                                         entries[0].model.size_multiple)
        workdir = Path(tempfile.mkdtemp(prefix="compare-int8-"))
        for entry in entries:
            int8_metrics(entry, options, calibration, workdir)
    measure_latency(entries, options.imgsz, options.latency_runs, options.latency_warmup, backends, calibration,
                    options.latency_builds)
    lines, report = verdicts(entries, differences)
    table = format_table(entries)
    write_outputs(entries, lines, report, save_dir, table)
    seeds = f"{len(entries[0].runs)} seed(s) per config" if entries[0].runs else "no training"
    logger.info("\n%s\n\n%s\n\n%s; mAP as mean ± std over seeds, or [95 %% bootstrap interval] for one seed. "
                "Latency: deploy form (fused + rewrites), batch 1, %dx%d, %d threads; %d builds per model, each timed "
                "in %d interleaved runs (geometric mean of the builds' medians). Saved %s", table, "\n".join(lines),
                seeds, options.imgsz, options.imgsz, torch.get_num_threads(), options.latency_builds,
                options.latency_runs, save_dir / "compare.md")
    return entries


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return run_command(lambda: run(options))


if __name__ == "__main__":
    sys.exit(main())
