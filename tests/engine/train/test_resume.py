"""A run killed with SIGKILL at any point and resumed with --resume equals the uninterrupted run.

SIGKILL is what a crash, an out-of-memory kill or a pre-empted cloud machine does: no handler runs, so all that
survives is what the trainer wrote at the end of the last finished epoch. The resumed run must reproduce the
uninterrupted one's results.csv and final weights, whatever --workers either of them used.
"""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data.shapes import generate_dataset
from engine.train.trainer import Trainer, TrainOptions
from helpers import REPO as ROOT

EPOCHS = 3
SETTINGS = dict(cfg="yolov5n-slimneck.yaml", epochs=EPOCHS, batch_size=4, imgsz=64, device="cpu", seed=3,
                noplots=True, quiet=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    folder = generate_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4, image_size=256, seed=2)
    return folder / "data.yaml"


# Every run here uses one thread: float sums over another thread count differ in the last bits.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted run (workers 0)."""
    project = tmp_path_factory.mktemp("reference")
    result = subprocess.run(train_command(tiny_data, project, 0), cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return project / "run"


def train_command(data: Path, project: Path, workers: int) -> list[str]:
    command = [sys.executable, "train.py", "--data", str(data), "--project", str(project), "--name", "run",
               "--workers", str(workers), "--cfg", SETTINGS["cfg"], "--epochs", str(EPOCHS),
               "--batch-size", str(SETTINGS["batch_size"]), "--imgsz", str(SETTINGS["imgsz"]), "--device", "cpu",
               "--seed", str(SETTINGS["seed"]), "--noplots", "--quiet"]
    return command


def finished_epochs(run: Path) -> int:
    results = run / "results.csv"
    return max(0, len(results.read_text().splitlines()) - 1) if results.exists() else 0


def start_and_kill(command: list[str], run: Path, after_epochs: int, delay: float) -> None:
    """Start ``command``, wait until ``after_epochs`` epochs are in results.csv and a last.pt exists, wait ``delay``
    seconds more, SIGKILL it."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ONE_THREAD,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while ((finished_epochs(run) < after_epochs or not (run / "weights" / "last.pt").exists())
               and process.poll() is None and time.monotonic() < deadline):
            time.sleep(0.02)
        time.sleep(delay)
        assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
        os.killpg(process.pid, signal.SIGKILL)  # the loader's worker processes die with it
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def results_rows(run: Path) -> list[list[float]]:
    rows = list(csv.reader((run / "results.csv").open()))
    return [[float(value) for value in row] for row in rows[1:]]


def assert_same_run(resumed: Path, reference: Path, rel: float = 1e-6) -> None:
    got, expected = results_rows(resumed), results_rows(reference)
    assert [row[0] for row in got] == [float(epoch) for epoch in range(EPOCHS)]
    for epoch, (row, expected_row) in enumerate(zip(got, expected)):
        assert row == pytest.approx(expected_row, rel=rel, abs=1e-9), f"results.csv differs in epoch {epoch}"
    for name in ("last.pt", "best.pt"):
        final = torch.load(resumed / "weights" / name, weights_only=True)
        wanted = torch.load(reference / "weights" / name, weights_only=True)
        assert final["epoch"] == wanted["epoch"]
        for key, value in wanted["model"].items():
            torch.testing.assert_close(final["model"][key], value, msg=f"{name}: {key} differs after resume")
    assert not list((resumed / "weights").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("workers, resume_workers", [(0, 0), (2, 2), (2, 0)])
def test_sigkill_at_any_point_then_resume_equals_the_uninterrupted_run(tiny_data, reference, tmp_path, workers,
                                                                       resume_workers):
    chance = random.Random(workers * 10 + resume_workers)
    project = tmp_path / "killed"
    run = project / "run"
    # Killed after 1 or 2 epochs are saved, at a random moment of the next epoch (training, validation, the
    # checkpoint write) or, when that moment comes late, while the run finishes (final validation, stripping).
    start_and_kill(train_command(tiny_data, project, workers), run, chance.choice([1, 2]), chance.uniform(0, 1.0))
    saved = torch.load(run / "weights" / "last.pt", weights_only=True)
    resume = [sys.executable, "train.py", "--resume", str(run), "--workers", str(resume_workers), "--quiet"]
    result = subprocess.run(resume, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    if saved["optimizer"] is None:
        # On a fast machine the kill can land after the run finished and stripped its checkpoints, before the
        # process exited: the run is complete, and a resume is refused with the reason.
        assert result.returncode != 0 and "already finished training" in result.stderr, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"Resuming {run / 'weights' / 'last.pt'}: {saved['epoch'] + 1} of {EPOCHS} epochs done" in result.stderr
    assert_same_run(run, reference)


@pytest.mark.torch_threads(1)
def test_resume_drops_results_rows_and_temporary_files_a_kill_left(tiny_data, tmp_path, monkeypatch):
    # A kill after an epoch's results row was written but before its last.pt, and one during a checkpoint write.
    # The reference runs in this process too: one torch thread here is not quite a subprocess's
    # OMP_NUM_THREADS=1 (oneDNN's channels_last kernels round differently), and three epochs amplify that.
    Trainer(TrainOptions(data=str(tiny_data), project=str(tmp_path), name="reference", workers=0, **SETTINGS)).run()
    monkeypatch.setattr(Trainer, "_strip_checkpoints", lambda self: None)
    run = tmp_path / "run"
    Trainer(TrainOptions(data=str(tiny_data), project=str(tmp_path), name="run", workers=0,
                         **{**SETTINGS, "epochs": 1})).run()
    checkpoint = torch.load(run / "weights" / "last.pt", weights_only=True)
    checkpoint["options"]["epochs"] = EPOCHS  # as if the run had been started for EPOCHS epochs
    torch.save(checkpoint, run / "weights" / "last.pt")
    with (run / "results.csv").open("a") as handle:
        handle.write((run / "results.csv").read_text().splitlines()[1].replace("0,", "1,", 1) + "\n")
    (run / "weights" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    monkeypatch.undo()
    Trainer(TrainOptions(resume=str(run), workers=0)).run()
    assert_same_run(run, tmp_path / "reference")


def test_augmentation_changes_between_epochs_and_not_with_the_workers(tiny_data):
    from engine.data.config import load_data_config
    from engine.data.loader import create_dataloader
    from engine.train.trainer import load_hyp

    files = load_data_config(tiny_data)["train"]

    def first_batch(workers: int, epoch: int) -> torch.Tensor:
        loader, _ = create_dataloader(files, 64, 4, 32, hyp=load_hyp("hyp.scratch-low.yaml"), augment=True,
                                      workers=workers, shuffle=False, seed=5)  # the same images each epoch
        trainer = Trainer.__new__(Trainer)  # only _seed_epoch, which reads the options and the rank
        trainer.options, trainer.rank = TrainOptions(seed=5), -1
        trainer._seed_epoch(loader, epoch)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(0, 1), first_batch(2, 1))  # the same epoch, with or without worker processes
    assert not torch.equal(first_batch(0, 1), first_batch(0, 2))  # each epoch augments the same images anew
