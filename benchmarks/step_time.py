"""Training step time per model, precision and memory format, measured side by side in one process.

    python -m benchmarks.step_time [--cfgs yolov5n.yaml yolov5n-slimneck.yaml yolov5s.yaml yolov5s-slimneck.yaml]
        [--variants fp32-nchw fp32-cl bf16-cl default] [--batch 16] [--imgsz 320] [--rounds 8] [--profile]

One step is what the trainer does per batch: forward under the precision's autocast, the YOLOv5 loss (fp32),
backward, SGD step, zero_grad (random images, 4 random boxes per image, 10 classes). Every (model, variant) pair
is built first; then, after 2 warm-up rounds, each round runs one step of every pair in a freshly shuffled order
(``engine.torch_utils.interleaved_timings``), so a change in machine load hits all alike. Freed memory is kept for
reuse (``retain_freed_memory``), as in train.py. The table gives the median step time, the speed-up over
fp32 NCHW, and for each slim-neck model its step time over its baseline's (the model listed just before it)
next to the FLOP ratio.

Variants: ``fp32-nchw``, ``fp32-cl`` (channels_last), ``bf16-cl`` (bf16 autocast + channels_last; emulated, so
slow, on CPUs without native bf16) and ``default`` (what train.py's ``--precision auto --memory-format auto`` picks
on this machine; printed). ``--profile`` adds, per model in its default variant, where the step time goes by
operator kind (torch.profiler, self time per step): dense and depth-wise convolutions forward and backward,
batch norm, activations, copies (memory-format conversions among them), concatenations and the rest.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from engine.torch_utils import interleaved_timings, retain_freed_memory  # noqa: E402
from engine.train.loss import YoloLoss  # noqa: E402
from engine.train.precision import Precision, describe, resolve_memory_format, resolve_precision  # noqa: E402
from models.yolo import DetectionModel, count_gflops  # noqa: E402

DEFAULT_CFGS = ["yolov5n.yaml", "yolov5n-slimneck.yaml", "yolov5s.yaml", "yolov5s-slimneck.yaml"]
FIXED_VARIANTS = {"fp32-nchw": ("fp32", "contiguous"), "fp32-cl": ("fp32", "channels_last"),
                  "bf16-cl": ("bf16", "channels_last")}
NUM_CLASSES = 10


@dataclass
class Setting:
    precision: Precision
    memory_format: torch.memory_format


def resolve_variant(name: str) -> Setting:
    cpu = torch.device("cpu")
    precision, layout = FIXED_VARIANTS.get(name, ("auto", "auto"))
    return Setting(resolve_precision(precision, cpu), resolve_memory_format(layout, cpu))


def random_batch(batch: int, imgsz: int, boxes_per_image: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=generator)
    count = batch * boxes_per_image
    targets = torch.cat([torch.arange(batch).repeat_interleave(boxes_per_image)[:, None].float(),
                         torch.randint(0, NUM_CLASSES, (count, 1), generator=generator).float(),
                         torch.rand(count, 2, generator=generator) * 0.8 + 0.1,
                         torch.rand(count, 2, generator=generator) * 0.3 + 0.02], 1)
    return images, targets


def make_step(cfg: str, setting: Setting, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    model = DetectionModel(cfg, num_classes=NUM_CLASSES).train().to(memory_format=setting.memory_format)
    loss_fn = YoloLoss(model.head, {}, image_size=images.shape[-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    images = images.contiguous(memory_format=setting.memory_format)

    def step() -> None:
        with setting.precision.autocast():
            predictions = model(images)
        loss, _ = loss_fn(predictions, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def operator_kind(event) -> str:
    """The row of the --profile table an aten operator's time belongs to."""
    name = event.key
    if name in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                "aten::_slow_conv2d_forward", "aten::thnn_conv2d"):
        shapes = event.input_shapes
        weight = shapes[2] if name == "aten::convolution_backward" and len(shapes) > 2 else \
            (shapes[1] if len(shapes) > 1 else [])
        depthwise = len(weight) == 4 and weight[1] == 1 and weight[0] > 1
        direction = "backward" if "backward" in name else "forward"
        return f"conv {'depth-wise' if depthwise else 'dense'} {direction}"
    for part, kind in (("batch_norm_backward", "batch norm backward"), ("batch_norm", "batch norm forward"),
                       ("silu_backward", "activation backward"), ("silu", "activation forward"),
                       ("copy_", "copies"), ("aten::cat", "concatenation"), ("aten::stack", "concatenation")):
        if part in name:
            return kind
    return "other"


def profile_step(step: Callable[[], None], steps: int = 3) -> dict[str, float]:
    """Self time per step (ms) of each operator kind."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            step()
    totals: dict[str, float] = collections.defaultdict(float)
    for event in profiler.key_averages(group_by_input_shape=True):
        if event.key.startswith("aten::"):
            totals[operator_kind(event)] += event.self_cpu_time_total / 1000 / steps
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfgs", nargs="+", default=DEFAULT_CFGS)
    parser.add_argument("--variants", nargs="+", default=["fp32-nchw", "fp32-cl", "bf16-cl", "default"],
                        choices=[*FIXED_VARIANTS, "default"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--profile", action="store_true", help="add the time per operator kind")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    retain_freed_memory()
    default = resolve_variant("default")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default on this CPU: "
          f"{describe(default.precision, default.memory_format)}")
    images, targets = random_batch(options.batch, options.imgsz)
    settings = {name: resolve_variant(name) for name in options.variants}
    runners = {(cfg, name): make_step(cfg, settings[name], images, targets)
               for cfg in options.cfgs for name in options.variants}
    times = interleaved_timings(runners, rounds=options.rounds, warmup=options.warmup)
    median = {key: statistics.median(values) * 1000 for key, values in times.items()}

    flops = {cfg: count_gflops(DetectionModel(cfg, num_classes=NUM_CLASSES), options.imgsz) for cfg in options.cfgs}
    print(f"\nTraining step (forward + loss + backward + SGD), batch {options.batch}, {options.imgsz} px, median of "
          f"{options.rounds} interleaved rounds, ms:\n")
    print("| model | " + " | ".join(options.variants) + " |")
    print("|---" * (len(options.variants) + 1) + "|")
    reference = options.variants[0]
    for cfg in options.cfgs:
        cells = [f"{median[cfg, name]:.0f}" + ("" if name == reference else
                                                f" ({median[cfg, reference] / median[cfg, name]:.2f}x)")
                 for name in options.variants]
        print(f"| {Path(cfg).stem} | " + " | ".join(cells) + " |")
    pairs = [(base, slim) for base, slim in zip(options.cfgs, options.cfgs[1:]) if "slimneck" in slim
             and "slimneck" not in base]
    if pairs:
        print("\nSlim-neck step time / baseline step time (per-round ratios: median, min-max), FLOP ratio:")
        for base, slim in pairs:
            for name in options.variants:
                ratios = sorted(s / b for s, b in zip(times[slim, name], times[base, name]))
                print(f"  {Path(slim).stem} / {Path(base).stem}, {name}: {median[slim, name] / median[base, name]:.3f} "
                      f"(per round {statistics.median(ratios):.3f}, {ratios[0]:.3f}-{ratios[-1]:.3f}); "
                      f"FLOPs {flops[slim] / flops[base]:.3f}")
    if options.profile:
        name = "default" if "default" in options.variants else options.variants[0]
        profiles = {cfg: profile_step(runners[cfg, name]) for cfg in options.cfgs}
        kinds = sorted({kind for table in profiles.values() for kind in table},
                       key=lambda kind: -max(table.get(kind, 0.0) for table in profiles.values()))
        print(f"\nSelf time per step by operator kind ({name}, torch.profiler, ms):\n")
        print("| operator kind | " + " | ".join(Path(cfg).stem for cfg in options.cfgs) + " |")
        print("|---" * (len(options.cfgs) + 1) + "|")
        for kind in kinds + ["total"]:
            values = [sum(table.values()) if kind == "total" else table.get(kind, 0.0) for table in
                      (profiles[cfg] for cfg in options.cfgs)]
            print(f"| {kind} | " + " | ".join(f"{value:.0f}" for value in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
