"""The training engine behind train.py: the YOLOv5 7.0 recipe (data/hyps/) on one CPU/GPU or under torchrun."""
from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from tqdm import tqdm

from engine.cli import check_imgsz, increment_path
from engine.data.augment import multi_scale
from engine.data.config import load_data_config
from engine.data.loader import create_dataloader, image_weights
from engine.evaluate.validate import RECT_PAD, evaluate, save_plots
from engine.torch_utils import distributed_info, init_distributed, rank_zero_first, seed_everything, select_device
from engine.train.autoanchor import check_anchor_order, check_anchors
from engine.train.ema import ModelEMA
from engine.train.guard import NonFiniteGuard
from engine.train.loss import YoloLoss, build_loss
from engine.train.optim import (NOMINAL_BATCH_SIZE, apply_warmup, build_optimizer, build_scheduler, lr_lambda,
                                max_grad_norm, warmup_iterations)
from engine.train.precision import describe, memory_format_name, resolve_memory_format, resolve_precision
from engine.train.tensorboard import open_tensorboard
from models.errors import UsageError
from models.yolo import DetectionModel

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HYP = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"
INPUT_BOUND_FRACTION = 0.2  # an epoch that waits longer than this share of its time for data is input-bound
RESULT_COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                  "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                  "val/cls_loss", "x/lr0", "x/lr1", "x/lr2"]


@dataclass
class TrainOptions:
    """Everything train.py accepts (YOLOv5 flag names). Plain types only: stored in checkpoints and opt.yaml."""

    data: str = "data/shapes.yaml"
    cfg: str = ""
    weights: str = ""
    hyp: str = ""  # empty: the file the model config names (``hyp:``), else DEFAULT_HYP
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    device: str = ""
    workers: int = 8
    project: str = str(ROOT / "runs" / "train")
    name: str = "exp"
    exist_ok: bool = False
    resume: str | bool = False
    seed: int = 0
    optimizer: str = "SGD"
    cos_lr: bool = False
    patience: int = 100
    save_period: int = -1
    freeze: list[int] = field(default_factory=lambda: [0])
    cache: str | None = None
    single_cls: bool = False
    noautoanchor: bool = False
    noval: bool = False
    noplots: bool = False
    label_smoothing: float = 0.0
    precision: str = "auto"  # stored resolved (fp32 / bf16 / fp16), so a resume keeps it
    memory_format: str = "auto"  # stored resolved (channels_last / contiguous)
    quiet: bool = False
    tensorboard: bool | None = None  # None: event files when the tensorboard package is installed
    rect: bool = False  # rectangular training batches (no mosaic, no shuffle)
    multi_scale: bool = False  # each batch resized to a random stride multiple in [0.5, 1.5] x imgsz
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA
    image_weights: bool = False  # sample images by class weights and per-class mAP (single process)
    nosave: bool = False  # checkpoints only at the end (an interrupted run cannot be resumed)


@dataclass
class TrainingState:
    """What the training steps share within one run. What a resume needs of it goes into every checkpoint."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: Callable[[float], float]
    ema: ModelEMA | None
    scaler: torch.amp.GradScaler
    loss_fn: YoloLoss  # the training loss (``build_loss``: YOLOv5's, or OTA when the hyp says loss_ota: 1)
    val_loss_fn: YoloLoss  # validation losses are always YOLOv5's, as in upstream YOLOv7
    batches: int
    warmup_iterations: int
    accumulate: int
    max_grad_norm: float  # inf: no clipping (the norm is still measured, for the non-finite guard)
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    stopper: EarlyStopping | None = None
    start_epoch: int = 0
    best_fitness: float = 0.0
    best_epoch: int = -1  # the early stopper's, restored on resume
    last_step: int = -1
    images_seen: int = 0
    train_seconds: float = 0.0
    input_seconds: float = 0.0  # of train_seconds, the time spent waiting for the loader's batches
    input_bound_reported: bool = False
    class_maps: np.ndarray | None = None  # per-class mAP50-95 of the last validation (for --image-weights)
    best_checkpoint: dict | None = None  # --nosave: the best epoch's checkpoint, written as best.pt at the end


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once last.pt has been written."""


def resolve_hyp_path(path: str | Path) -> Path:
    """A hyperparameter file: the path itself, or a file of that name shipped in data/hyps/."""
    path = Path(path)
    if path.is_file():
        return path.resolve()
    alternative = ROOT / "data" / "hyps" / path.name
    if not alternative.is_file():
        raise FileNotFoundError(f"hyperparameter file {path} not found (shipped: data/hyps/*.yaml)")
    return alternative


def load_hyp(path: str | Path) -> dict:
    path = resolve_hyp_path(path)
    hyp = yaml.safe_load(path.read_text())
    if not isinstance(hyp, dict):
        raise UsageError(f"{path}: a hyperparameter YAML must be a mapping")
    return hyp


def find_resume_checkpoint(resume: str | bool, project: str) -> Path:
    """--resume with no value: the newest last.pt under the project; a run folder; or a last.pt path."""
    if resume is True or resume == "":
        candidates = sorted(Path(project).glob("*/weights/last.pt"), key=os.path.getmtime)
        if not candidates:
            raise FileNotFoundError(f"--resume: no */weights/last.pt under {project}; pass the run folder or last.pt")
        return candidates[-1]
    path = Path(resume)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist")
    return path


class Trainer:
    """Set up from ``TrainOptions``, then ``run()``; returns the final metrics of best.pt."""

    def __init__(self, options: TrainOptions):
        from models.weights import load_checkpoint

        self.rank, self.local_rank, self.world_size = distributed_info()
        self.is_main = self.rank in (-1, 0)
        self.tensorboard = None  # opened by run() on the main process
        self.resume_state = None
        if options.resume:
            checkpoint_path = find_resume_checkpoint(options.resume, options.project)
            self.resume_state = load_checkpoint(checkpoint_path)
            if self.resume_state["optimizer"] is None:
                raise UsageError(f"{checkpoint_path} already finished training (its optimizer state was stripped); "
                                 f"nothing to resume. To train further, start a new run with --weights {checkpoint_path}")
            saved = self.resume_state["options"]
            saved.update(resume=str(checkpoint_path), exist_ok=True, device=options.device or saved.get("device", ""),
                         workers=options.workers)
            for key in ("precision", "memory_format"):  # kept unless this command names one explicitly
                if getattr(options, key) != "auto":
                    saved[key] = getattr(options, key)
            options = TrainOptions(**{k: v for k, v in saved.items() if k in TrainOptions.__dataclass_fields__})
            options.name = Path(checkpoint_path).parent.parent.name
            options.project = str(Path(checkpoint_path).parent.parent.parent)
            done = self.resume_state["epoch"] + 1
            logger.info("Resuming %s: %d of %d epochs done, continuing with epoch %d", checkpoint_path, done,
                        options.epochs, done + 1)
        check_flag_combinations(options, self.world_size)
        self.options = options
        self.device = select_device(options.device)
        if self.world_size > 1:
            init_distributed(self.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.memory_format = resolve_memory_format(options.memory_format, self.device)
        options.precision = self.precision.name
        options.memory_format = memory_format_name(self.memory_format)
        if self.is_main:
            logger.info("Training with %s", describe(self.precision, self.memory_format))
        seed_everything(options.seed + 1 + max(self.rank, 0))
        with rank_zero_first(self.rank) if self.world_size > 1 else contextlib.nullcontext():
            self.data = load_data_config(options.data)
        self.names = ["item"] if options.single_cls else self.data["names"]
        self.num_classes = len(self.names)
        self.model = self._build_model()
        self.hyp = self.resume_state["hyp"] if self.resume_state else self._load_hyp()
        self.hyp.setdefault("label_smoothing", options.label_smoothing)

        self.save_dir = Path(options.project) / options.name
        if not self.resume_state:
            self.save_dir = increment_path(self.save_dir, options.exist_ok)
        self.weights_dir = self.save_dir / "weights"
        if self.is_main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / "hyp.yaml").write_text(yaml.safe_dump(self.hyp, sort_keys=False))
            (self.save_dir / "opt.yaml").write_text(yaml.safe_dump(asdict(options), sort_keys=False))
        self.grid_size = self.model.size_multiple
        self.imgsz = check_imgsz(options.imgsz, self.grid_size)
        self._freeze(options.freeze)

    # ------------------------------------------------------------------ setup
    def _load_hyp(self) -> dict:
        """--hyp, or when it is not given the file the model config names (``hyp:``, e.g. YOLOv7's recipe for
        cfg/yolov7*.yaml), or YOLOv5's scratch-low. The file used is recorded in the options (opt.yaml)."""
        options = self.options
        if not options.hyp:
            named = self.model.cfg.get("hyp")
            options.hyp = str(named or DEFAULT_HYP)
            if self.is_main:
                logger.info("Hyperparameters: %s (%s; --hyp overrides)", options.hyp,
                            "named by the model config" if named else "the default")
        return load_hyp(options.hyp)

    def _build_model(self) -> DetectionModel:
        from models.weights import load_model

        options = self.options
        if self.resume_state:
            model = DetectionModel(self.resume_state["model_cfg"], num_classes=self.num_classes, names=self.names)
            model.load_state_dict(self.resume_state["model"])
        elif options.weights:
            model, _ = load_model(options.weights, cfg=options.cfg or None, num_classes=self.num_classes)
            model.names = list(self.names)
        elif options.cfg:
            model = DetectionModel(options.cfg, num_classes=self.num_classes, names=self.names)
        else:
            raise UsageError("give --cfg (a model YAML) and/or --weights (a checkpoint)")
        return model.to(self.device, memory_format=self.memory_format)

    def _freeze(self, freeze: list[int]) -> None:
        layers = list(range(freeze[0])) if len(freeze) == 1 else list(freeze)
        prefixes = tuple(f"layers.{index}." for index in layers)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(not name.startswith(prefixes))
            if name.startswith(prefixes):
                logger.debug("freezing %s", name)

    def _dataloaders(self):
        options = self.options
        per_rank_batch = options.batch_size // self.world_size
        with rank_zero_first(self.rank) if self.world_size > 1 else contextlib.nullcontext():
            train_loader, train_set = create_dataloader(
                self.data["train"], self.imgsz, per_rank_batch, self.grid_size, hyp=self.hyp, augment=True,
                cache=options.cache, rect=options.rect, rank=self.rank, workers=options.workers,
                shuffle=not options.rect and not options.image_weights, seed=options.seed,
                single_cls=options.single_cls, prefix="train: ", num_classes=self.data["nc"],
                weighted=options.image_weights)
        val_loader = None
        if self.is_main:
            val_loader, _ = create_dataloader(
                self.data["val"], self.imgsz, per_rank_batch * 2, self.grid_size, hyp=self.hyp, augment=False,
                cache=options.cache, rect=True, pad=RECT_PAD, rank=-1, workers=options.workers,
                single_cls=options.single_cls, prefix="val: ", num_classes=self.data["nc"])
        return train_loader, train_set, val_loader

    # ------------------------------------------------------------------ training
    def run(self) -> dict:
        """Train from the first (or the resumed) epoch to the last; returns the final metrics of best.pt."""
        train_loader, train_set, val_loader = self._dataloaders()
        self._prepare_anchors(train_set)
        if self.options.sync_bn:
            self._convert_sync_batchnorm()
        state = self._training_state(len(train_loader))
        model = self.model
        if self.world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if self.is_main:
            logger.info("Image sizes %d train, %d val; %d dataloader workers; logging to %s\nStarting training for "
                        "%d epochs...", self.imgsz, self.imgsz, train_loader.num_workers, self.save_dir,
                        self.options.epochs)
            if self.options.nosave:
                logger.warning("--nosave: last.pt and best.pt are written after the final epoch only; a run killed "
                               "before then cannot be resumed (Ctrl-C still saves last.pt)")
        if state.start_epoch >= self.options.epochs and self.is_main:
            logger.info("All %d epochs were trained before; finishing the run", self.options.epochs)
        epoch, epochs_run = state.start_epoch, 0
        self.tensorboard = open_tensorboard(self.save_dir, self.options.tensorboard) if self.is_main else None
        try:
            for epoch in range(state.start_epoch, self.options.epochs):
                mean_loss, learning_rates = self._train_epoch(model, train_loader, state, epoch)
                epochs_run += 1
                if self._end_epoch(val_loader, state, epoch, mean_loss, learning_rates):
                    break
        except KeyboardInterrupt:
            self._save_interrupted(state, epoch)
            raise TrainingInterrupted() from None
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
            if self.world_size > 1 and dist.is_initialized():
                dist.destroy_process_group()
        if not self.is_main:
            return {}
        return self._finish(val_loader, state, epochs_run)

    def _prepare_anchors(self, train_set) -> None:
        if self.is_main and not self.options.noplots and not self.resume_state:
            from engine.visualize import plot_labels
            plot_labels(train_set.labels, self.names, self.save_dir / "labels.jpg")
        head = self.model.head
        if not self.resume_state:
            if not self.options.noautoanchor or head.anchors_generated:
                check_anchors(train_set, head, thr=self.hyp["anchor_t"], image_size=self.imgsz)
            check_anchor_order(head)
        if self.world_size > 1:  # every rank must use rank 0's anchors
            dist.broadcast(head.anchors, 0)

    def _convert_sync_batchnorm(self) -> None:
        """--sync-bn: BatchNorm statistics over all ranks' batches. SyncBatchNorm runs on CUDA under DDP only;
        elsewhere the flag is reported and ignored (YOLOv5 ignores it silently)."""
        if self.world_size > 1 and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            if self.is_main:
                logger.info("--sync-bn: BatchNorm layers synchronised across %d processes", self.world_size)
        elif self.is_main:
            logger.warning("--sync-bn ignored: SyncBatchNorm needs DDP on CUDA GPUs (this run: %d process(es) on %s)",
                           self.world_size, self.device.type)

    def _training_state(self, batches: int) -> TrainingState:
        """Optimizer, schedule, EMA, loss scaler and counters: fresh, or restored from the resumed checkpoint."""
        options, hyp = self.options, self.hyp
        accumulate = max(round(NOMINAL_BATCH_SIZE / options.batch_size), 1)
        weight_decay = hyp["weight_decay"] * options.batch_size * accumulate / NOMINAL_BATCH_SIZE
        optimizer = build_optimizer(self.model, options.optimizer, hyp["lr0"], hyp["momentum"], weight_decay)
        schedule = lr_lambda(options.epochs, hyp["lrf"], options.cos_lr)
        state = TrainingState(
            optimizer=optimizer, schedule=schedule, scheduler=build_scheduler(optimizer, schedule),
            ema=ModelEMA(self.model) if self.is_main else None,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_grad_scaler),
            loss_fn=build_loss(self.model.head, hyp, image_size=self.imgsz),
            val_loss_fn=YoloLoss(self.model.head, hyp, image_size=self.imgsz), batches=batches,
            warmup_iterations=warmup_iterations(hyp, batches), accumulate=accumulate,
            max_grad_norm=max_grad_norm(hyp))
        if self.resume_state:
            self._restore(state, self.resume_state)
        state.stopper = EarlyStopping(options.patience, state.best_fitness, state.best_epoch)
        return state

    def _restore(self, state: TrainingState, saved: dict) -> None:
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        if state.ema is not None and saved.get("ema") is not None:
            state.ema.ema.load_state_dict(saved["ema"])
            state.ema.updates = saved["ema_updates"]
        state.start_epoch, state.best_fitness = saved["epoch"] + 1, saved["best_fitness"]
        extra = saved["extra"]
        if extra.get("stopped_early"):  # killed while finishing an early-stopped run: finish it, train no more
            state.start_epoch = self.options.epochs
        state.last_step = extra.get("last_step", -1)
        if extra.get("class_maps") is not None:
            state.class_maps = np.asarray(extra["class_maps"], dtype=np.float64)
        state.best_epoch = extra.get("best_epoch", saved["epoch"])
        if extra.get("grad_scaler"):
            state.scaler.load_state_dict(extra["grad_scaler"])
        if self.is_main:
            self._discard_unsaved_epochs(state.start_epoch)

    def _discard_unsaved_epochs(self, start_epoch: int) -> None:
        """A kill between writing an epoch's results row and its last.pt left a row that will be re-run; a kill
        during a checkpoint write left a temporary file. Remove both, so the resumed run's files equal an
        uninterrupted run's."""
        results = self.save_dir / "results.csv"
        if results.is_file():
            rows = list(csv.reader(results.open(newline="")))
            kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < start_epoch]
            if len(kept) != len(rows):
                with results.open("w", newline="") as handle:
                    csv.writer(handle).writerows(kept)
                logger.info("results.csv: dropped %d row(s) of epochs that are re-run", len(rows) - len(kept))
        for leftover in self.weights_dir.glob(".*.pt.*.tmp"):
            leftover.unlink(missing_ok=True)

    def _train_epoch(self, model: nn.Module, loader, state: TrainingState, epoch: int
                     ) -> tuple[list[float], list[float]]:
        """One pass over the training set; returns the mean [box, obj, cls] losses and the groups' learning rates."""
        options, device = self.options, self.device
        epoch_start = time.perf_counter()
        model.train()
        epoch_seed = self._seed_epoch(loader, epoch)
        scale_rng = random.Random(epoch_seed) if options.multi_scale else None
        if options.image_weights:
            loader.sampler.set_weights(image_weights(loader.dataset.labels, self.num_classes, state.class_maps))
        state.guard.start_epoch(epoch)
        mean_loss, finite_batches, input_seconds = torch.zeros(3, device=device), 0, 0.0
        state.optimizer.zero_grad()
        bar = tqdm(enumerate(loader), total=state.batches, disable=not self.is_main or options.quiet,
                   bar_format="{l_bar}{bar:10}{r_bar}")
        ready = time.perf_counter()
        for i, (images, targets, paths, _) in bar:
            if i > 0:  # the first batch's wait is the workers' start-up, not their pace
                input_seconds += time.perf_counter() - ready
            images = images.to(device, non_blocking=True).float() / 255
            if scale_rng is not None:
                images = multi_scale(images, scale_rng, self.imgsz, self.grid_size)
            images = images.contiguous(memory_format=self.memory_format)
            loss_items = self._train_step(model, state, images, targets, paths, epoch, i)
            if torch.isfinite(loss_items).all():  # a skipped batch is reported by the guard, not averaged in
                mean_loss = (mean_loss * finite_batches + loss_items) / (finite_batches + 1)
                finite_batches += 1
            state.images_seen += images.shape[0]
            if self.is_main:
                memory = f"{torch.cuda.memory_reserved(device) / 1e9:.3g}G" if device.type == "cuda" else "0G"
                bar.set_description(f"{epoch + 1}/{options.epochs} {memory} box {mean_loss[0]:.4f} "
                                    f"obj {mean_loss[1]:.4f} cls {mean_loss[2]:.4f} inst {targets.shape[0]}")
                if epoch == state.start_epoch and i < 3 and not options.noplots:
                    from engine.visualize import plot_batch
                    grid = plot_batch(images, targets, paths, self.save_dir / f"train_batch{i}.jpg", self.names)
                    if self.tensorboard is not None:
                        self.tensorboard.image(f"train_batch{i}", grid)
            ready = time.perf_counter()
        learning_rates = [group["lr"] for group in state.optimizer.param_groups]
        state.scheduler.step()
        epoch_seconds = time.perf_counter() - epoch_start
        state.train_seconds += epoch_seconds
        state.input_seconds += input_seconds
        self._report_input_bound(state, epoch, input_seconds / max(epoch_seconds, 1e-9), loader.num_workers)
        return mean_loss.tolist(), learning_rates

    def _report_input_bound(self, state: TrainingState, epoch: int, waiting: float, workers: int) -> None:
        """Say once per run when the training steps waited for data for more than ``INPUT_BOUND_FRACTION`` of an
        epoch: the images/s then measure the data pipeline, not the model."""
        if waiting <= INPUT_BOUND_FRACTION or state.input_bound_reported or not self.is_main:
            return
        state.input_bound_reported = True
        where = ("batches are made in the training process (--workers 0)" if workers == 0
                 else f"{workers} loader worker(s) on {os.cpu_count()} CPU(s)")
        logger.warning("Input-bound: epoch %d waited for training batches %.0f %% of its time (%s). Where CPUs are "
                       "free, more --workers help; --cache ram skips the image decoding.", epoch + 1, 100 * waiting,
                       where)

    def _train_step(self, model: nn.Module, state: TrainingState, images: torch.Tensor, targets: torch.Tensor,
                    paths: tuple, epoch: int, batch: int) -> torch.Tensor:
        """Forward and backward of one batch; an optimizer step once ``accumulate`` batches have gathered.

        A step whose loss or gradient is not finite is skipped whole: its gradients are dropped, and neither the
        optimizer, the EMA nor the weights change (``NonFiniteGuard``). Backward runs even on a non-finite loss,
        so under DDP every rank receives the bad gradient in the all-reduce and skips the same step.
        """
        iteration = batch + state.batches * epoch
        if iteration <= state.warmup_iterations:
            state.accumulate = max(1, int(np.interp(iteration, [0, state.warmup_iterations],
                                                    [1, NOMINAL_BATCH_SIZE / self.options.batch_size]).round()))
            apply_warmup(state.optimizer, iteration, state.warmup_iterations, epoch, state.schedule, self.hyp)
        with self.precision.autocast():
            predictions = model(images)
        loss, loss_items = state.loss_fn(predictions, targets.to(self.device))
        if self.world_size > 1:
            loss = loss * self.world_size  # DDP averages gradients across ranks
        state.guard.add_batch(batch, paths, loss)
        state.scaler.scale(loss).backward()
        # A bad gradient ends the accumulation at once (its step is skipped, not filled with more batches). Under
        # DDP the gradients are all-reduced, so every rank sees the same and ends it at the same batch.
        if iteration - state.last_step >= state.accumulate or not gradients_are_finite(self.model):
            state.scaler.unscale_(state.optimizer)
            gradient_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=state.max_grad_norm)
            if state.guard.step_is_finite(gradient_norm, state.scaler):
                state.scaler.step(state.optimizer)
                if state.ema is not None:
                    state.ema.update(self.model)
            state.scaler.update()
            state.optimizer.zero_grad()
            state.last_step = iteration
        return loss_items

    def _end_epoch(self, val_loader, state: TrainingState, epoch: int, mean_loss: list[float],
                   learning_rates: list[float]) -> bool:
        """Validate, log, checkpoint and ask the early stopper; returns True to stop (the same on every rank)."""
        stop = False
        if self.is_main:
            final_epoch = epoch + 1 == self.options.epochs
            result = None
            if not self.options.noval or final_epoch:
                result = self._validate(state.ema.ema, val_loader, state.val_loss_fn)
            metrics = result.metrics if result else {"precision": 0, "recall": 0, "map50": 0, "map": 0,
                                                     "fitness": 0.0}
            val_losses = result.losses if result else [0.0, 0.0, 0.0]
            if result is not None:
                state.class_maps = per_class_maps(result, self.num_classes)
            values = self._append_results(self.save_dir / "results.csv", epoch, mean_loss, metrics, val_losses,
                                          learning_rates)
            if self.tensorboard is not None:
                self.tensorboard.scalars(epoch, values)
            improved = metrics["fitness"] > state.best_fitness
            state.best_fitness = max(state.best_fitness, metrics["fitness"])
            stop = state.stopper(epoch, metrics["fitness"])
            no_best_yet = state.best_checkpoint is None and not (self.weights_dir / "best.pt").exists()
            self._save_epoch(state, epoch, improved or no_best_yet, stop)
        if self.world_size > 1:
            flag = torch.tensor([int(stop)], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def _save_epoch(self, state: TrainingState, epoch: int, save_best: bool, stopped_early: bool) -> None:
        # best.pt before last.pt: a kill between the two re-runs this epoch, which then writes best.pt again.
        checkpoint = self._checkpoint(state, epoch, last_step=state.last_step, stopped_early=stopped_early)
        if self.options.nosave and not (stopped_early or epoch + 1 == self.options.epochs):
            if save_best:  # kept in memory (the tensors are copied: training goes on changing them)
                state.best_checkpoint = copy.deepcopy(checkpoint)
            return
        if self.options.nosave and not save_best and state.best_checkpoint is not None:
            self._save(state.best_checkpoint, self.weights_dir / "best.pt")
        if save_best:
            self._save(checkpoint, self.weights_dir / "best.pt")
        self._save(checkpoint, self.weights_dir / "last.pt")
        if self.options.save_period > 0 and (epoch + 1) % self.options.save_period == 0 and not self.options.nosave:
            self._save(checkpoint, self.weights_dir / f"epoch{epoch + 1}.pt")

    def _save_interrupted(self, state: TrainingState, epoch: int) -> None:
        """After Ctrl-C: last.pt as of the end of the previous epoch, so the unfinished epoch is re-run on resume."""
        if not self.is_main or state.ema is None:
            return
        # the next optimizer step must come as scheduled in the re-run epoch
        checkpoint = self._checkpoint(state, epoch - 1, last_step=min(state.last_step, epoch * state.batches - 1),
                                      interrupted_in_epoch=epoch)
        self._save(checkpoint, self.weights_dir / "last.pt")
        logger.warning("Interrupted: saved %s (resume with --resume %s)", self.weights_dir / "last.pt",
                       self.save_dir)

    def _seed_epoch(self, loader, epoch: int) -> int:
        """Derive every random stream of an epoch from (seed, epoch), so a resumed run replays the same epochs.
        Returns the epoch's rank-free seed."""
        epoch_seed = self.options.seed * 100_003 + epoch * 1_009
        seed = epoch_seed + max(self.rank, 0)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if loader.generator is not None:
            loader.generator.manual_seed(seed)
        # rank-free: item i of epoch e is augmented alike whatever the world size or the number of workers
        loader.dataset.set_augment_seed(epoch_seed)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        return epoch_seed

    def _validate(self, model: nn.Module, loader, loss_fn):
        return evaluate(model, loader, self.num_classes, self.names, self.device, loss_fn=loss_fn,
                        single_cls=self.options.single_cls, progress=not self.options.quiet)

    def _checkpoint(self, state: TrainingState, epoch: int, **extra) -> dict:
        """Everything a resume needs to continue exactly: weights, EMA, optimizer, schedule, scaler, counters."""
        from models.weights import build_checkpoint

        ema = state.ema
        return build_checkpoint(
            self.model, ema_state=ema.ema.state_dict(), ema_updates=ema.updates,
            optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(), epoch=epoch,
            best_fitness=float(state.best_fitness), hyp=self.hyp, options=asdict(self.options),
            date=datetime.now(timezone.utc).isoformat(),
            extra={"grad_scaler": state.scaler.state_dict(), "best_epoch": state.stopper.best_epoch,
                   "class_maps": None if state.class_maps is None else state.class_maps.tolist(), **extra})

    def _save(self, checkpoint: dict, path: Path) -> None:
        from models.weights import save_checkpoint

        save_checkpoint(path, checkpoint)

    def _append_results(self, path: Path, epoch: int, train_losses: list[float], metrics: dict,
                        val_losses: list[float], learning_rates: list[float]) -> dict[str, float]:
        """Append the epoch's row to results.csv; returns it by column name (without the epoch)."""
        row = [epoch, *train_losses, metrics["precision"], metrics["recall"], metrics["map50"], metrics["map"],
               *val_losses, *learning_rates]
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(RESULT_COLUMNS)
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        return dict(zip(RESULT_COLUMNS[1:], (float(value) for value in row[1:])))

    def _finish(self, val_loader, state: TrainingState, epochs_run: int) -> dict:
        from models.weights import load_model

        best = self.weights_dir / "best.pt"
        model, _ = load_model(best, device=self.device)
        model.fuse()
        result = evaluate(model, val_loader, self.num_classes, self.names, self.device, loss_fn=None,
                          single_cls=self.options.single_cls, confusion=True, progress=not self.options.quiet,
                          desc="best.pt")
        if not self.options.noplots:
            save_plots(result, self.save_dir, self.names)
            from engine.evaluate.plots import plot_results_csv
            plot_results_csv(self.save_dir / "results.csv")
        self._strip_checkpoints()
        train_seconds = state.train_seconds
        speed = state.images_seen / max(train_seconds, 1e-9)
        logger.info("%d epochs completed in %.3f hours (%.1f train images/s).\n%s", epochs_run, train_seconds / 3600,
                    speed, result.table)
        logger.info("Results saved to %s; weights: %s and %s", self.save_dir, best, self.weights_dir / "last.pt")
        return {**{k: v for k, v in result.metrics.items() if k != "per_class"}, "save_dir": str(self.save_dir),
                "train_images_per_second": speed, "train_seconds": train_seconds, "epochs_run": epochs_run,
                "input_wait_fraction": state.input_seconds / max(train_seconds, 1e-9)}


    def _strip_checkpoints(self) -> None:
        """As YOLOv5 does at the end: keep only the EMA weights in last.pt and best.pt (no optimizer state)."""
        from models.weights import strip_training_state

        for path in (self.weights_dir / "last.pt", self.weights_dir / "best.pt"):
            if path.is_file():
                logger.info("Optimizer stripped from %s, %.1f MB", path, strip_training_state(path) / 1e6)


def check_flag_combinations(options: TrainOptions, world_size: int) -> None:
    """Flags that cannot work together are a UsageError before anything starts."""
    if options.image_weights and options.rect:
        raise UsageError("--image-weights and --rect cannot be combined: rectangular batches fix the image order")
    if options.image_weights and world_size > 1:
        raise UsageError("--image-weights needs a single process (YOLOv5 does not support it under DDP either)")


def per_class_maps(result, num_classes: int) -> np.ndarray:
    """Each class's mAP50-95 in a validation result; classes absent from the val split get the mean (YOLOv5)."""
    maps = np.full(num_classes, float(result.metrics["map"]))
    ap_result = result.detection_metrics.result if result.detection_metrics is not None else None
    if ap_result is not None:
        maps[np.asarray(ap_result.classes, dtype=int)] = ap_result.ap50_95
    return maps


def gradients_are_finite(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (one reduction over all of them)."""
    norms = [torch.linalg.vector_norm(parameter.grad) for parameter in model.parameters() if parameter.grad is not None]
    return not norms or bool(torch.isfinite(torch.stack(norms).sum()))


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs."""

    def __init__(self, patience: int, best_fitness: float = 0.0, best_epoch: int = 0):
        self.patience = patience if patience > 0 else math.inf
        self.best_fitness, self.best_epoch = best_fitness, max(best_epoch, 0)

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_fitness, self.best_epoch = fitness, epoch
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            logger.info("Early stopping: no improvement in the last %d epochs (best epoch %d)", self.patience,
                        self.best_epoch + 1)
        return stop
