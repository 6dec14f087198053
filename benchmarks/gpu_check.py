"""One prepared script for a lent GPU: check the CUDA paths end to end, then time the slim-neck pair on the GPU.

    python benchmarks/gpu_check.py                      # on a CUDA machine, about 3-5 minutes
    python benchmarks/gpu_check.py --device cpu --quick  # a dry run of the same steps on the CPU (no AMP, no fp16)

Steps (each reported PASS / FAIL / SKIP, the script goes on after a failure and exits 1 if any failed):

1. a small shapes dataset is generated (no download);
2. ``train.py`` trains yolov5n-slimneck for 2 epochs on the device: AMP (autocast + GradScaler) on CUDA; the
   losses must be finite and the checkpoint float32;
3. ``val.py`` scores best.pt in float32 and with ``--half``: the two mAP50-95 must agree within 0.02;
4. ``detect.py --half`` and ``export.py --half --device cuda`` (ONNX in float16) run;
5. DDP with NCCL: ``torchrun`` with 2 processes when the machine has 2 GPUs or more (NCCL cannot put two ranks on
   one GPU; otherwise SKIP);
6. latency of yolov5s vs yolov5s-slimneck (random weights), fused + deploy rewrites, fp16 (fp32 on the CPU),
   channels_last, batch 1 and 32: interleaved rounds (synchronized after each forward), median per model, and
   the slim/base ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from data.shapes import generate_dataset  # noqa: E402
from engine.torch_utils import interleaved_timings  # noqa: E402
from models.deploy import optimize_for_inference  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, step: str, status: str, detail: str = "") -> None:
        self.rows.append((step, status, detail))
        print(f"[{status}] {step}{': ' + detail if detail else ''}", flush=True)

    @property
    def failed(self) -> bool:
        return any(status == "FAIL" for _, status, _ in self.rows)


def command(args: list[str], timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a project command from the repository root; its output is kept for the report."""
    print("$", " ".join(args), flush=True)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def tail(result: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def check_training(report: Report, data: Path, out: Path, device: str, imgsz: int, epochs: int) -> Path | None:
    result = command([sys.executable, "train.py", "--cfg", "yolov5n-slimneck.yaml", "--data", str(data / "data.yaml"),
                      "--epochs", str(epochs), "--imgsz", str(imgsz), "--batch-size", "16", "--device", device,
                      "--workers", "4", "--project", str(out), "--name", "train", "--exist-ok", "--noplots",
                      "--quiet"])
    best = out / "train" / "weights" / "best.pt"
    step = f"train.py on {device}{' (AMP)' if device != 'cpu' else ''}"
    if result.returncode or not best.is_file():
        report.add(step, "FAIL", tail(result))
        return None
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    dtypes = {tensor.dtype for tensor in checkpoint["model"].values() if tensor.is_floating_point()}
    rows = (out / "train" / "results.csv").read_text().strip().splitlines()[1:]
    losses = [float(value) for row in rows for value in row.split(",")[1:4]]
    finite = all(loss == loss and abs(loss) != float("inf") for loss in losses)
    status = "PASS" if dtypes == {torch.float32} and finite else "FAIL"
    report.add(step, status, f"{len(rows)} epochs, train losses {rows[-1].split(',')[1:4]}, "
               f"checkpoint dtypes {sorted(map(str, dtypes))}")
    return best


def check_inference(report: Report, best: Path, data: Path, out: Path, device: str, imgsz: int, half: bool) -> None:
    import val

    scores = {}
    for use_half in (False, True) if half else (False,):
        summary = val.run(data=data / "data.yaml", weights=[best], imgsz=imgsz, batch_size=32, device=device,
                          workers=4, half=use_half, project=out, name=f"val-half{int(use_half)}", exist_ok=True,
                          noplots=True, progress=False)
        scores[use_half] = summary["map"]
    if half:
        difference = abs(scores[True] - scores[False])
        report.add("val.py fp32 vs --half", "PASS" if difference <= 0.02 else "FAIL",
                   f"mAP50-95 {scores[False]:.4f} vs {scores[True]:.4f} (difference {difference:.4f})")
    else:
        report.add("val.py fp32", "PASS", f"mAP50-95 {scores[False]:.4f} (--half needs CUDA: not checked)")

    half_flag = ["--half"] if half else []
    result = command([sys.executable, "detect.py", "--weights", str(best), "--source", str(data / "images" / "val"),
                      "--imgsz", str(imgsz), "--device", device, "--project", str(out), "--name", "detect",
                      "--exist-ok", *half_flag])
    report.add(f"detect.py{' --half' if half else ''}", "FAIL" if result.returncode else "PASS",
               tail(result, 2 if not result.returncode else 15))

    onnx_path = out / "best.onnx"
    result = command([sys.executable, "export.py", "--weights", str(best), "--include", "onnx", "--imgsz", str(imgsz),
                      "--device", "cuda" if half else "cpu", "--output", str(onnx_path), *half_flag])
    report.add(f"export.py{' --half' if half else ''}", "FAIL" if result.returncode else "PASS",
               tail(result, 3 if not result.returncode else 15))


def check_ddp(report: Report, data: Path, out: Path, imgsz: int) -> None:
    if torch.cuda.device_count() < 2:
        report.add("DDP (NCCL, 2 processes)", "SKIP", f"{torch.cuda.device_count()} GPU(s); NCCL needs one GPU per rank")
        return
    result = command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py", "--cfg",
                      "yolov5n.yaml", "--data", str(data / "data.yaml"), "--epochs", "1", "--imgsz", str(imgsz),
                      "--batch-size", "32", "--device", "0,1", "--workers", "2", "--project", str(out), "--name", "ddp",
                      "--exist-ok", "--noplots", "--quiet"])
    ok = result.returncode == 0 and "backend nccl" in result.stderr
    report.add("DDP (NCCL, 2 processes)", "PASS" if ok else "FAIL", tail(result, 3 if ok else 20))


def latency(report: Report, device: torch.device, half: bool, imgsz: int, batches: list[int], runs: int) -> None:
    dtype = torch.float16 if half else torch.float32
    cfgs = ("yolov5s.yaml", "yolov5s-slimneck.yaml")
    models = {}
    for cfg in cfgs:
        model = DetectionModel(cfg).fuse().eval()
        models[cfg] = optimize_for_inference(model).to(device, dtype).to(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    lines = [f"latency, {'CUDA ' + torch.cuda.get_device_name(device) if cuda else 'CPU'}, {str(dtype)[6:]}, "
             f"channels_last, {imgsz}x{imgsz}, fused + deploy rewrites, median of {runs} interleaved rounds"]
    for batch in batches:
        images = torch.rand(batch, 3, imgsz, imgsz, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)

        def runner(model: torch.nn.Module):
            def run():
                model(images)
                if cuda:
                    torch.cuda.synchronize(device)  # the timer reads the clock when the kernels have finished
            return run

        with torch.inference_mode():
            times = interleaved_timings({cfg: runner(models[cfg]) for cfg in cfgs}, runs, warmup=10)
        base, slim = (statistics.median(times[cfg]) * 1000 for cfg in cfgs)
        lines.append(f"  batch {batch:>3}: yolov5s {base:8.2f} ms   yolov5s-slimneck {slim:8.2f} ms   "
                     f"slim/base {slim / base:.3f}   ({1000 * batch / slim:.0f} vs {1000 * batch / base:.0f} img/s)")
    report.add("latency yolov5s vs yolov5s-slimneck", "PASS", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="0", help="CUDA device index (default 0), or cpu for a dry run")
    parser.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for a CPU dry run)")
    options = parser.parse_args(argv)

    cuda = options.device != "cpu"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device visible to torch; run with --device cpu for a dry run", file=sys.stderr)
        return 2
    device = torch.device(f"cuda:{options.device}" if cuda and options.device.isdigit() else options.device)
    out = Path(options.out) if options.out else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name(device) if cuda else 'CPU dry run'}; work folder {out}", flush=True)
    imgsz = 128 if options.quick else 320
    report = Report()
    data = generate_dataset(out / "shapes", num_train=32 if options.quick else 256, num_val=16 if options.quick else 64,
                            image_size=256 if options.quick else 320, seed=0)
    report.add("dataset", "PASS", str(data))
    best = check_training(report, data, out, options.device, imgsz, epochs=1 if options.quick else 2)
    if best is not None:
        check_inference(report, best, data, out, options.device, imgsz, half=cuda)
    if cuda:
        check_ddp(report, data, out, imgsz)
    else:
        report.add("DDP (NCCL, 2 processes)", "SKIP", "CPU dry run (gloo DDP is covered by the test suite)")
    try:
        latency(report, device, half=cuda, imgsz=320 if options.quick else 640,
                batches=[1, 2] if options.quick else [1, 32], runs=5 if options.quick else 50)
    except Exception as error:  # report and go on: the summary below must still print
        report.add("latency yolov5s vs yolov5s-slimneck", "FAIL", f"{type(error).__name__}: {error}")

    print("\nsummary")
    for step, status, _ in report.rows:
        print(f"  {status:<4}  {step}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
