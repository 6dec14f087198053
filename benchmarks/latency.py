"""CPU latency of a baseline detector and its slim-neck version, with and without the deploy rewrites.

    python benchmarks/latency.py --pair yolov5s [--imgsz 640] [--batch 1 8] [--threads 2] [--runs 30] [--builds 3]
                                 [--backends eager channels_last compile torchscript onnxruntime
                                  onnxruntime-int8 openvino openvino-int8] [--profile]
                                 [--glibc-malloc]
    python benchmarks/latency.py --cfgs yolov7-tiny.yaml yolov7-tiny-slimneck.yaml --batch 1

Both models are built (randomly initialised: latency does not depend on the weight values), fused, and
rewritten by each deploy rewrite of ``models.deploy`` alone and by all of them. For each batch size and backend
every variant is built ``--builds`` times (its own copy of the weights, its own compiled session of the exported
file) and all builds run in one process, interleaved: after a warm-up, each round times one forward of every build
in a shuffled order, so a change in machine load hits all of them alike (backends are measured one after the
other, so their thread pools never compete). Builds are needed because two builds of the same model run several
per cent apart, round after round (measured: 4 OpenVINO compilations of one IR, 72-76 ms; 4 weight copies of one
PyTorch model, 155-162 ms), which is as large as the slim neck's saving. The table gives the geometric mean of the
builds' medians; the slim/base ratios compare those at the same rewrite level, with the 95 % Welch interval over
the builds (``engine.evaluate.stats.latency_ratio``) and each model's build spread, next to the FLOP ratio.

Backends: ``eager`` (PyTorch fp32, NCHW), ``channels_last`` (the same with weights and input in NHWC memory
format), ``compile`` (``torch.compile``, default inductor backend, channels_last), ``torchscript``
(``torch.jit.trace`` + ``freeze`` with oneDNN Graph fusion enabled, channels_last: deprecated in PyTorch 2.x,
but the one PyTorch path here that fuses convs with their activations and adds) and ``onnxruntime`` (the model
as export.py writes it, which keeps only the rewrites marked ``for_onnx``; intra-op threads = ``--threads``,
sequential execution, idle workers do not spin), ``openvino`` (that graph converted to OpenVINO IR, fp32
inference precision, ``--threads`` inference threads), ``openvino-int8`` (the IR quantized by NNCF as
``export.py --int8`` does it) and ``onnxruntime-int8`` (ONNX Runtime's static QDQ quantization of the convs, the
alternative to NNCF; measured to choose between them). The INT8 rows are calibrated on random images (timing only;
their accuracy is measured on trained models with val.py) and measured only for the "all rewrites" row. ``compile`` and ``torchscript`` build only the "fused" and
"all rewrites" rows (building is slow); a backend that fails for a row is reported, not fatal. Each backend's
output is checked against eager PyTorch.

Before timing, freed memory is kept for reuse (``engine.torch_utils.retain_freed_memory``): with glibc's default
thresholds, alternating between models made every forward page in its activation buffers afresh (over 11,000 page
faults per yolov5s forward), a cost of the interleaving, not of the models. ``--glibc-malloc`` keeps the defaults;
each batch size reports the page faults per forward.

``--profile`` adds, per model and rewrite level, the exclusive time of each module kind (forward hooks with
wall-clock timing; a module's time excludes that of the hooked modules inside it), so the cost of the GSConv
concatenation/shuffle, the depth-wise convs, VoV-GSCSP and C3 is visible; with the ``openvino`` or
``openvino-int8`` backend it also prints OpenVINO's own per-node counters summed per model layer and per kernel
(``openvino_profile``), which is where an exported model's time goes.
"""
from __future__ import annotations

import argparse
import collections
import copy
import gc
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as ``python benchmarks/latency.py``: make the repository's packages importable.
    sys.path.insert(0, str(REPO))

from engine.evaluate.stats import latency_ratio, typical_latency  # noqa: E402
from engine.torch_utils import interleaved_timings, minor_page_faults, retain_freed_memory  # noqa: E402
from models.deploy import DEPLOY_REWRITES, apply_rewrites  # noqa: E402
from models.modules.conv import Conv  # noqa: E402
from models.yolo import DetectionModel, count_gflops  # noqa: E402

logger = logging.getLogger(__name__)

PAIRS = {"yolov5n": ("yolov5n.yaml", "yolov5n-slimneck.yaml"), "yolov5s": ("yolov5s.yaml", "yolov5s-slimneck.yaml"),
         "yolov5m": ("yolov5m.yaml", "yolov5m-slimneck.yaml"), "yolov5l": ("yolov5l.yaml", "yolov5l-slimneck.yaml"),
         "yolov5x": ("yolov5x.yaml", "yolov5x-slimneck.yaml"),
         "yolov7-tiny": ("yolov7-tiny.yaml", "yolov7-tiny-slimneck.yaml"),
         "yolov7": ("yolov7.yaml", "yolov7-slimneck.yaml")}
BACKENDS = ("eager", "channels_last", "compile", "torchscript", "onnxruntime", "onnxruntime-int8", "openvino",
            "openvino-int8")
INT8_BACKENDS = ("onnxruntime-int8", "openvino-int8")
EXPORTED_ONLY = ("openvino",) + INT8_BACKENDS  # deploy form only: measured on the "all rewrites" row
CALIBRATION_IMAGES = 32  # random images: a randomly initialised model's INT8 ranges, for timing only
FUSED, ALL = "fused", "all rewrites"


@dataclass
class Variant:
    """One model at one rewrite level: ``rewrites`` are the deploy rewrites applied to the fused model."""

    model_name: str
    level: str
    rewrites: tuple[str, ...]
    model: nn.Module
    fused: nn.Module

    @property
    def label(self) -> str:
        return f"{self.model_name}, {self.level}"

    @property
    def detailed(self) -> bool:
        """False for the two rows every batch size measures (fused, all rewrites)."""
        return self.level not in (FUSED, ALL)


@dataclass
class Timing:
    """Per-round times (seconds) of each build of one variant on one backend, or why it could not run."""

    builds: list[list[float]] = field(default_factory=list)
    error: str | None = None

    @property
    def median_ms(self) -> float:
        """The geometric mean of the builds' median times (what ``latency_ratio`` compares)."""
        return typical_latency(self.builds) * 1000

    @property
    def build_spread(self) -> float:
        """Slowest over fastest build median: how far apart builds of the same model run."""
        medians = [statistics.median(rounds) for rounds in self.builds]
        return max(medians) / min(medians)


def build_variants(cfgs: list[str], names: list[str], rewrites: list[str]) -> list[Variant]:
    """Fused models of ``cfgs``; for each: no rewrite, each rewrite alone and all but that one (when the rewrite
    changes the model), and all of them."""
    variants = []
    for cfg, name in zip(cfgs, names):
        torch.manual_seed(0)
        fused = DetectionModel(cfg).eval().fuse()
        variants.append(Variant(name, FUSED, (), fused, fused))
        _, changes = apply_rewrites(fused, rewrites)
        active = [rewrite for rewrite in rewrites if changes[rewrite]]
        for rewrite in active:
            variants.append(Variant(name, f"only {rewrite}", (rewrite,), apply_rewrites(fused, [rewrite])[0], fused))
        if len(active) > 1:
            for rewrite in active:
                others = tuple(r for r in active if r != rewrite)
                variants.append(Variant(name, f"all but {rewrite}", others, apply_rewrites(fused, list(others))[0],
                                        fused))
        variants.append(Variant(name, ALL, tuple(active), apply_rewrites(fused, active)[0], fused))
    return variants


def _eager_runner(model: nn.Module, images: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(images)
    return run


class _DecodedOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def _checked(run: Callable[[], object], variant: Variant, images: torch.Tensor) -> Callable[[], object]:
    """``run`` after checking that its decoded output matches the eager model's (else ValueError)."""
    output = run()
    output = output[0] if isinstance(output, (tuple, list)) else output
    output = torch.as_tensor(output).float()
    with torch.inference_mode():
        reference = variant.model(images)[0].float()
    if output.shape != reference.shape or not torch.allclose(output, reference, rtol=1e-3, atol=1e-2):
        difference = (output - reference).abs().max().item() if output.shape == reference.shape else "shape"
        raise ValueError(f"output differs from eager PyTorch (max abs difference {difference})")
    return run


def make_runner(backend: str, variant: Variant, images: torch.Tensor, threads: int, workdir: Path
                ) -> Callable[[], object] | None:
    """A no-argument callable that runs one forward of ``variant`` on ``backend`` (its output checked against
    eager PyTorch); None where the variant's rewrites make no difference on that backend (ONNX export keeps only
    ``for_onnx`` rewrites)."""
    if backend == "eager":
        return _eager_runner(copy.deepcopy(variant.model), images)
    if backend == "channels_last":
        model = copy.deepcopy(variant.model).to(memory_format=torch.channels_last)
        return _eager_runner(model, images.contiguous(memory_format=torch.channels_last))
    if backend == "compile":
        # The reference head's grid cache breaks the graph, so its convs compile one by one (one entry per shape).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = torch.compile(copy.deepcopy(variant.model).to(memory_format=torch.channels_last))
        run = _eager_runner(compiled, images.contiguous(memory_format=torch.channels_last))
        return _checked(run, variant, images)  # compiles now, not while timed
    if backend == "torchscript":
        inputs = images.contiguous(memory_format=torch.channels_last)
        model = _DecodedOnly(copy.deepcopy(variant.model).to(memory_format=torch.channels_last)).eval()
        torch.jit.enable_onednn_fusion(True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.freeze(torch.jit.trace(model, inputs))
            for _ in range(3):  # the profiling executor specialises and fuses during the first runs
                scripted(inputs)

        def run():
            with torch.no_grad():
                return scripted(inputs)
        return _checked(run, variant, images)
    if backend in EXPORTED_ONLY:
        return _exported_runner(backend, variant, images, threads, workdir)
    if backend == "onnxruntime":
        from engine.infer.backends import OnnxBackend
        from engine.infer.export import export_onnx

        onnx_rewrites = [name for name in variant.rewrites if DEPLOY_REWRITES[name].for_onnx]
        if variant.level == ALL:
            model = apply_rewrites(variant.fused, onnx_rewrites)[0]  # what export.py writes
        elif len(onnx_rewrites) == len(variant.rewrites):
            model = variant.model
        else:
            return None  # the same graph as another row
        path = workdir / f"{variant.label.replace(', ', '_').replace(' ', '-')}_{images.shape[0]}.onnx"
        if not path.is_file():  # exported once; every build opens its own session
            export_onnx(model, path, list(images.shape[-2:]), images.shape[0], optimize=False)
        # Idle ORT workers would otherwise spin and steal the cores from the next session in the round.
        session = OnnxBackend(path, "cpu", threads=threads, spin=False).session
        feed = {session.get_inputs()[0].name: images.numpy()}
        return _checked(lambda: session.run(None, feed), variant, images)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _exported_runner(backend: str, variant: Variant, images: torch.Tensor, threads: int, workdir: Path
                     ) -> Callable[[], object] | None:
    """OpenVINO fp32 / INT8 (NNCF, as export.py --int8 writes it) or ONNX Runtime INT8 (static QDQ quantization of
    the convs, per-channel weights) of the deploy form (the graph export.py writes), fixed input shape. INT8 outputs
    are not checked against eager PyTorch: quantized outputs differ by design (their accuracy is measured with
    val.py on trained models)."""
    from engine.infer.backends import OnnxBackend, OpenVinoBackend
    from engine.infer.export import export_onnx, export_openvino

    if variant.level != ALL:
        return None
    stem = f"{variant.model_name}_{images.shape[0]}_{backend}"
    path, xml = workdir / f"{stem}.onnx", workdir / stem / f"{stem}.xml"
    calibration = torch.rand(CALIBRATION_IMAGES, *images.shape[1:], generator=torch.Generator().manual_seed(1))
    if not path.is_file():  # exported once; every build compiles the same file again
        onnx_rewrites = [name for name in variant.rewrites if DEPLOY_REWRITES[name].for_onnx]
        model = apply_rewrites(variant.fused, onnx_rewrites)[0]
        export_onnx(model, path, list(images.shape[-2:]), images.shape[0], optimize=False)
    if backend == "onnxruntime-int8":
        session = OnnxBackend(_onnxruntime_int8(path, calibration), "cpu", threads=threads, spin=False).session
        feed = {session.get_inputs()[0].name: images.numpy()}
        return lambda: session.run(None, feed)
    if not xml.is_file():
        export_openvino(path, xml.parent, int8_calibration=calibration if backend in INT8_BACKENDS else None)
    model = OpenVinoBackend(xml, threads=threads)
    run = lambda: model.compiled(images.numpy())  # noqa: E731
    return run if backend in INT8_BACKENDS else _checked(lambda: torch.from_numpy(run()[0]), variant, images)


def _onnxruntime_int8(path: Path, calibration: torch.Tensor) -> Path:
    """ONNX Runtime's static quantization (QDQ, uint8 activations, int8 per-channel weights) of the convs only, so
    the head's decoding stays in float, as in export.py's NNCF quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": image[None].numpy()} for image in calibration])

        def get_next(self):
            return next(self.items, None)

    import onnx

    output = path.with_name(path.stem + "_int8.onnx")
    if output.is_file():
        return output
    quantize_static(str(path), str(output), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    quantized = onnx.load(str(output))
    del quantized.metadata_props[:]  # export.py's metadata, which OnnxBackend reads, instead of the quantizer's
    quantized.metadata_props.extend(onnx.load(str(path)).metadata_props)
    onnx.save(quantized, str(output))
    return output


def run_benchmark(variants: list[Variant], backends: list[str], batch: int, imgsz: int, threads: int, rounds: int,
                  warmup: int, workdir: Path, builds: int = 3
                  ) -> tuple[dict[tuple[str, str], Timing], dict[str, float]]:
    """Time ``builds`` separate builds of every (backend, variant) for one batch size, all interleaved; returns
    ({(backend, label): Timing}, {backend: minor page faults per forward, warm-up included}). Rows that a backend
    does not distinguish are left out (``compile`` and ``torchscript`` build only the fused and all-rewrites rows)."""
    images = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    results, faults = {}, {}
    for backend in backends:  # one backend at a time: runtimes' thread pools do not compete within a round
        runners = {}
        for variant in variants:
            key = (backend, variant.label)
            if backend in ("compile", "torchscript", *EXPORTED_ONLY) and variant.detailed:
                continue
            try:
                built = [make_runner(backend, variant, images, threads, workdir) for _ in range(builds)]
            except Exception as error:  # report any backend failure (torch.compile, tracing, export) and go on
                message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                results[key] = Timing(error=message[:160])
                logger.warning("%s / %s failed: %s", backend, variant.label, message[:300])
                continue
            if built[0] is not None:
                runners.update({(key, index): runner for index, runner in enumerate(built)})
        before = minor_page_faults()
        times = interleaved_timings(runners, rounds, warmup)
        for key, index in runners:
            results.setdefault(key, Timing()).builds.append(times[key, index])
        if before is not None and runners:
            faults[backend] = (minor_page_faults() - before) / ((rounds + warmup) * len(runners))
        runners.clear()
        gc.collect()
    return results, faults


def format_table(variants: list[Variant], backends: list[str], results: dict[tuple[str, str], Timing]) -> str:
    """Median ms per variant (rows) and backend (columns); '-' where not measured."""
    rows = [v for v in variants if any((b, v.label) in results for b in backends)]
    width = max(len(v.label) for v in rows) + 2
    lines = [f"{'variant':<{width}}" + "".join(f"{b:>15}" for b in backends)]
    for variant in rows:
        cells = []
        for backend in backends:
            timing = results.get((backend, variant.label))
            if timing is None:
                cells.append(f"{'-':>15}")
            elif timing.error:
                cells.append(f"{'failed':>15}")
            else:
                cells.append(f"{timing.median_ms:>12.1f} ms")
        lines.append(f"{variant.label:<{width}}" + "".join(cells))
    return "\n".join(lines)


def format_ratios(names: list[str], backends: list[str], results: dict[tuple[str, str], Timing],
                  flop_ratio: float) -> str:
    """slim / base per backend and level, with the 95 % interval over builds (``latency_ratio``), and how far
    apart builds of one model ran (the noise floor a single build per model would hide)."""
    base, slim = names
    lines = [f"{slim} / {base} time ratio [95 % interval over builds]   (FLOP ratio {flop_ratio:.3f}; build spread: "
             "slowest / fastest build of the same model, base and slim)"]
    for backend in backends:
        cells = []
        for level in (FUSED, ALL):
            a, b = results.get((backend, f"{slim}, {level}")), results.get((backend, f"{base}, {level}"))
            if a and b and not a.error and not b.error:
                ratio = latency_ratio(b.builds, a.builds)
                cells.append(f"{level}: {ratio.estimate:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] "
                             f"(spread {b.build_spread:.3f} / {a.build_spread:.3f})")
        lines.append(f"  {backend:<14} " + ("   ".join(cells) if cells else "-"))
    return "\n".join(lines)


def _conv_label(conv: nn.Conv2d) -> str:
    kind = "dw " if conv.groups > 1 and conv.groups == conv.in_channels else ""
    stride = f"/s{conv.stride[0]}" if conv.stride[0] > 1 else ""
    return f"{kind}{conv.kernel_size[0]}x{conv.kernel_size[1]}{stride}"


def _profile_labels(model: nn.Module) -> dict[nn.Module, str]:
    """The modules the profile times, each with its row label. A Conv (conv + activation) is timed as a whole;
    a bare nn.Conv2d only where no Conv wraps it (the head's output convs, the deploy modules' merged convs)."""
    labels: dict[nn.Module, str] = {}
    for parent in model.modules():
        for child in parent.children():
            if isinstance(child, Conv):
                labels[child] = f"Conv {_conv_label(child.conv)}"
            elif isinstance(child, nn.Conv2d) and not isinstance(parent, Conv):
                owner = "Detect" if isinstance(parent, nn.ModuleList) else type(parent).__name__
                labels[child] = f"{owner} conv {_conv_label(child)}"
            elif not isinstance(child, _UNHOOKED) and not isinstance(child, nn.Conv2d):
                labels[child] = type(child).__name__
    return labels


_UNHOOKED = (nn.ModuleList, nn.Sequential, nn.Identity, nn.SiLU, nn.LeakyReLU, nn.ReLU, nn.Hardswish)


class _ModuleTimer:
    """Forward hooks that add each timed module's exclusive wall time to a per-forward table (see module_profile)."""

    def __init__(self, model: nn.Module):
        self.labels = _profile_labels(model)
        self.stack: list[list[float]] = []
        self.current: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()
        self.handles = [hook for module in self.labels
                        for hook in (module.register_forward_pre_hook(self.before),
                                     module.register_forward_hook(self.after))]

    def before(self, module: nn.Module, inputs) -> None:
        self.stack.append([time.perf_counter(), 0.0])

    def after(self, module: nn.Module, inputs, output) -> None:
        start, inner = self.stack.pop()
        total = time.perf_counter() - start
        if self.stack:
            self.stack[-1][1] += total
        label = self.labels[module]
        self.current[label] += total - inner
        self.calls[label] += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def module_profile(models: dict[str, nn.Module], images: torch.Tensor, rounds: int = 10
                   ) -> dict[str, list[tuple[str, float, int]]]:
    """Per model: (module kind, exclusive ms per forward, calls per forward), slowest first.

    The models run interleaved (one forward each per round, shuffled), so their rows are comparable; each kind's
    time is its median over ``rounds`` forwards. The top-level model is not hooked: what it adds (the layer loop)
    is the gap to the total. The GSConv rows are its own work: the concatenation of its two halves and, unless
    folded, the shuffle; the Detect rows are the decoding, "Detect conv" its 1x1 convs; a deploy module's row
    excludes its merged conv (its own "... conv" row).
    """
    timers = {name: _ModuleTimer(model) for name, model in models.items()}
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    order = list(models)
    rng = random.Random(0)
    try:
        for name in order:
            models[name](images)
            timers[name].calls.clear()
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                timers[name].current.clear()
                models[name](images)
                per_round[name].append(dict(timers[name].current))
    finally:
        for timer in timers.values():
            timer.remove()
    result = {}
    for name, timer in timers.items():
        rows = [(label, statistics.median(r.get(label, 0.0) for r in per_round[name]) * 1000,
                 timer.calls[label] // rounds) for label in timer.calls]
        result[name] = sorted(rows, key=lambda row: -row[1])
    return result


def format_profile(variants: list[Variant], images: torch.Tensor, channels_last: bool) -> str:
    models = {}
    for variant in variants:
        if not variant.detailed:
            models[variant.label] = (copy.deepcopy(variant.model).to(memory_format=torch.channels_last)
                                     if channels_last else variant.model)
    inputs = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    lines = []
    for label, rows in module_profile(models, inputs).items():
        total = sum(row[1] for row in rows)
        lines.append(f"{label}: {total:.1f} ms in timed modules")
        for kind, ms, count in rows:
            lines.append(f"    {kind:<32}{ms:>8.1f} ms {100 * ms / total:>6.1f} %   x{count}")
    return "\n".join(lines)


def openvino_profile(variants: list[Variant], backend: str, images: torch.Tensor, threads: int, workdir: Path,
                     builds: int = 3, rounds: int = 10) -> dict[str, tuple[collections.Counter, collections.Counter]]:
    """Per model ("all rewrites" row), where OpenVINO spends a forward: (ms per YAML layer index, -1 for nodes
    outside the layers; ms per (node type, kernel)), from its per-node counters (``PERF_COUNT``): the median over
    ``rounds`` forwards of each of ``builds`` compilations, then the geometric mean over the builds (a layer of one
    build can run 20 % off another build's, as whole models do). The PyTorch profile cannot see inside an exported
    model; this shows which layers and kernels an INT8 or fp32 IR's time goes to. All builds run interleaved, one
    forward each per round."""
    import openvino

    core = openvino.Core()
    requests = {}
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    for variant in (v for v in variants if v.level == ALL):
        _exported_runner(backend, variant, images, threads, workdir)  # exports the IR once (cached in workdir)
        stem = f"{variant.model_name}_{images.shape[0]}_{backend}"
        for build in range(builds):
            requests[variant.model_name, build] = core.compile_model(str(workdir / stem / f"{stem}.xml"), "CPU",
                                                                     config).create_infer_request()
    feed = images.numpy()
    seen: dict[tuple[str, int], list[tuple[collections.Counter, collections.Counter]]] = {key: [] for key in requests}
    order = list(requests)
    for key in order:
        requests[key].infer({0: feed})
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            requests[key].infer({0: feed})
            by_layer, by_kind = collections.Counter(), collections.Counter()
            for node in requests[key].profiling_info:
                ms = node.real_time.total_seconds() * 1000
                layer = re.search(r"/layers\.(\d+)/", node.node_name)
                by_layer[int(layer.group(1)) if layer else -1] += ms
                by_kind[f"{node.node_type} {node.exec_type}"] += ms
            seen[key].append((by_layer, by_kind))
    profile = {}
    for name in dict.fromkeys(name for name, _ in requests):
        per_build = [[_median_counter([forward[part] for forward in seen[name, build]]) for build in range(builds)]
                     for part in (0, 1)]
        profile[name] = tuple(_geometric_mean_counter(counters) for counters in per_build)
    return profile


def _geometric_mean_counter(counters: list[collections.Counter]) -> collections.Counter:
    keys = set().union(*counters)
    return collections.Counter({key: statistics.geometric_mean(max(counter[key], 1e-6) for counter in counters)
                                for key in keys})


def _median_counter(counters: list[collections.Counter]) -> collections.Counter:
    keys = set().union(*counters)
    return collections.Counter({key: statistics.median(counter[key] for counter in counters) for key in keys})


def format_openvino_profile(variants: list[Variant], backend: str, images: torch.Tensor, threads: int,
                            workdir: Path, builds: int) -> str:
    profile = openvino_profile(variants, backend, images, threads, workdir, builds)
    names = list(profile)
    modules = {variant.model_name: [record.module_name for record in variant.fused.records] for variant in variants}
    lines = ["layer  " + "".join(f"{name:>34}" for name in names)]
    layers = sorted(set().union(*(by_layer for by_layer, _ in profile.values())))
    for layer in layers:
        cells = []
        for name in names:
            module = modules[name][layer] if 0 <= layer < len(modules[name]) else "(outside the layers)"
            cells.append(f"{module:>20} {profile[name][0][layer]:>9.2f} ms")
        lines.append(f"{layer:>5}  " + "".join(f"{cell:>34}" for cell in cells))
    lines.append("total  " + "".join(f"{sum(profile[name][0].values()):>31.2f} ms" for name in names))
    kinds = sorted(set().union(*(by_kind for _, by_kind in profile.values())),
                   key=lambda kind: -sum(profile[name][1][kind] for name in names))
    lines.append("by node type and kernel:")
    for kind in kinds:
        if any(profile[name][1][kind] >= 0.01 for name in names):
            lines.append(f"  {kind:<40}" + "".join(f"{profile[name][1][kind]:>12.2f} ms" for name in names))
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPU latency of a baseline vs its slim-neck version.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pair", choices=sorted(PAIRS), default="yolov5s", help="baseline and slim-neck of one size")
    group.add_argument("--cfgs", nargs=2, metavar=("BASE", "SLIM"), help="any two model YAMLs")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--runs", type=int, default=30, help="timed rounds at batch 1 (fewer at larger batches)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--builds", type=int, default=3,
                        help="separate builds of every model (weights copied, exports compiled again), timed side by "
                        "side: builds of one model differ by several per cent, so ratios need more than one")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--rewrites", nargs="*", default=list(DEPLOY_REWRITES), choices=list(DEPLOY_REWRITES),
                        help="deploy rewrites to measure (each alone and all together)")
    parser.add_argument("--detail-batches", nargs="*", type=int, default=[1],
                        help="batch sizes that also time each rewrite alone and all-but-one (others: fused and all)")
    parser.add_argument("--profile", action="store_true", help="also print a per-module time profile (batch 1)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's default malloc thresholds (by default freed memory is retained, see "
                             "engine.torch_utils.retain_freed_memory)")
    return parser.parse_args(argv)


def rounds_for(batch: int, runs: int) -> int:
    """Rounds at ``batch``: ``runs`` at batch 1, fewer for larger batches (each takes longer), at least 10."""
    return max(10, round(runs / batch ** 0.5))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    retained = False if options.glibc_malloc else retain_freed_memory()
    cfgs = list(options.cfgs) if options.cfgs else list(PAIRS[options.pair])
    names = [Path(cfg).stem for cfg in cfgs]
    if names[0] == names[1]:
        names = ["base", "slim"]
    flops = [count_gflops(DetectionModel(cfg), options.imgsz) for cfg in cfgs]
    variants = build_variants(cfgs, names, options.rewrites)
    print(f"torch {torch.__version__}, {options.threads} threads, {options.imgsz}x{options.imgsz}, fp32, CPU "
          f"({os.cpu_count()} cores), load average before: {load_average()}")
    print(f"GFLOPs: {names[0]} {flops[0]:.2f}, {names[1]} {flops[1]:.2f} (ratio {flops[1] / flops[0]:.3f})")
    print("malloc: " + ("freed memory retained (retain_freed_memory)" if retained else "C library defaults"))
    with tempfile.TemporaryDirectory() as workdir:
        for batch in options.batch:
            rounds = rounds_for(batch, options.runs)
            started = time.perf_counter()
            measured = variants if batch in options.detail_batches else [v for v in variants if not v.detailed]
            results, faults = run_benchmark(measured, options.backends, batch, options.imgsz, options.threads,
                                            rounds, options.warmup, Path(workdir), options.builds)
            print(f"\nbatch {batch}: {options.builds} builds per variant, geometric mean of their medians over "
                  f"{rounds} interleaved rounds "
                  f"({time.perf_counter() - started:.0f} s, load average after: {load_average()})")
            print(format_table(measured, options.backends, results))
            print(format_ratios(names, options.backends, results, flops[1] / flops[0]))
            if faults:
                print("minor page faults per forward: "
                      + ", ".join(f"{backend} {count:.0f}" for backend, count in faults.items()))
            for (backend, label), timing in results.items():
                if timing.error:
                    print(f"  {backend} / {label} failed: {timing.error}")
        if options.profile:
            images = torch.rand(1, 3, options.imgsz, options.imgsz)
            for channels_last in (False, True):
                print(f"\nper-module profile, batch 1, {'channels_last' if channels_last else 'NCHW'} "
                      "(exclusive wall time per forward, median of 10 interleaved forwards)")
                print(format_profile(variants, images, channels_last))
            for backend in [b for b in options.backends if b in ("openvino", "openvino-int8")]:
                print(f"\n{backend} per-layer profile, batch 1 (OpenVINO's own per-node counters, ms per forward: "
                      f"median of 10 interleaved forwards, geometric mean over {options.builds} builds)")
                print(format_openvino_profile(variants, backend, images, options.threads, Path(workdir),
                                              options.builds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
