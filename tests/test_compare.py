"""compare.py: seeds, the two kinds of interval, and verdicts that only speak when the interval excludes zero."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import compare
from data.shapes import generate_dataset
from helpers import random_stats
from models.weights import build_checkpoint, save_checkpoint
from models.yolo import DetectionModel


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, image_size=256, seed=6) / "data.yaml"


def common(data: Path, project: Path) -> list[str]:
    return ["--data", str(data), "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--latency-runs", "3",
            "--latency-warmup", "1", "--bootstrap", "50", "--project", str(project), "--noplots", "--quiet",
            "--no-onnx"]


@pytest.mark.slow
def test_a_config_against_itself_differs_by_exactly_zero(tiny_data, tmp_path):
    assert compare.main(["--cfgs", "yolov5n.yaml", "yolov5n.yaml", "--seeds", "0", "1", "--epochs", "1",
                         *common(tiny_data, tmp_path)]) == 0
    report = json.loads((tmp_path / "exp" / "compare.json").read_text())
    # both copies were trained, in their own folders
    assert (tmp_path / "exp" / "yolov5n" / "seed1" / "done.json").is_file()
    assert (tmp_path / "exp" / "yolov5n-2" / "seed1" / "done.json").is_file()
    against = report["against_baseline"]["yolov5n.yaml"]
    for name in ("map50", "map"):
        assert against[name]["per_seed"] == [0.0, 0.0]
        assert against[name]["between_seeds"]["low"] == against[name]["between_seeds"]["high"] == 0.0
        assert all(interval["low"] == interval["high"] == 0.0 for interval in against[name]["within_run"])
    assert "mAP50-95 +0.000 (95 % CI +0.000 .. +0.000, 2 seeds" in report["verdicts"][0]
    assert "no significant difference" in report["verdicts"][0]
    rows = (tmp_path / "exp" / "compare.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 and (tmp_path / "exp" / "compare.png").is_file()


def test_given_weights_are_compared_with_bootstrap_intervals(tiny_data, tmp_path):
    paths = []
    for index, raise_objectness in enumerate((0.0, 4.0)):
        torch.manual_seed(index)
        model = DetectionModel("yolov5n.yaml", num_classes=6)
        with torch.no_grad():
            for conv in model.head.outputs:
                conv.bias.view(model.head.num_anchors, -1)[:, 4] += raise_objectness
        paths.append(tmp_path / f"model{index}.pt")
        save_checkpoint(paths[-1], build_checkpoint(model))
    assert compare.main(["--no-train", "--weights", *map(str, paths), *common(tiny_data, tmp_path)]) == 0
    report = json.loads((tmp_path / "exp" / "compare.json").read_text())
    runs = [config["runs"] for config in report["configs"]]
    assert [len(r) for r in runs] == [1, 1]
    bootstrap = runs[1][0]["bootstrap"]["map"]
    assert bootstrap["low"] <= runs[1][0]["map"] <= bootstrap["high"] and bootstrap["samples"] == 50
    assert "1 seed: training-to-training variation not measured" in report["verdicts"][0]
    assert compare.parse_options([]).val_pad == 0.0  # scored at --imgsz, the size the models were trained at
    builds = [config["latency_s_per_build_and_round"]["torch"] for config in report["configs"]]
    assert [len(b) for b in builds] == [3, 3] and all(len(rounds) == 3 for b in builds for rounds in b)
    assert "latency (torch)" in report["verdicts"][0] and "3 builds each" in report["verdicts"][0]


@pytest.mark.slow
def test_trained_weights_against_untrained_are_called_higher(tmp_path):
    """Real weights through --no-train --weights: 150 optimizer steps on 64 blocks images (augmentation and warm-up
    off so that a few steps learn something), scored on those same images, against the untrained initialisation."""
    from data.blocks import generate_dataset as generate_blocks
    from engine.train.trainer import Trainer, TrainOptions
    from fitting import write_fitting_hyp

    root = generate_blocks(tmp_path / "blocks", num_train=64, num_val=1, seed=2)
    data = root / "overfit.yaml"
    data.write_text((root / "data.yaml").read_text().replace("val: images/val", "val: images/train"))
    write_fitting_hyp(tmp_path / "hyp.yaml", lr0=0.02, warmup_epochs=0)
    torch.manual_seed(0)
    untrained = tmp_path / "untrained.pt"
    save_checkpoint(untrained, build_checkpoint(DetectionModel("yolov5n.yaml", num_classes=3)))
    Trainer(TrainOptions(data=str(data), cfg="yolov5n.yaml", hyp=str(tmp_path / "hyp.yaml"), epochs=150,
                         batch_size=64, imgsz=96, workers=0, cache="ram", project=str(tmp_path), name="trained",
                         noval=True, noplots=True, quiet=True, seed=0)).run()
    trained = tmp_path / "trained" / "weights" / "last.pt"
    options = ["--data", str(data), "--imgsz", "96", "--batch-size", "16", "--workers", "0", "--latency-runs", "2",
               "--latency-warmup", "1", "--bootstrap", "200", "--project", str(tmp_path / "compare"), "--quiet",
               "--no-onnx"]
    assert compare.main(["--no-train", "--weights", str(untrained), str(trained), *options]) == 0
    report = json.loads((tmp_path / "compare" / "exp" / "compare.json").read_text())
    trained_run = report["configs"][1]["runs"][0]
    assert trained_run["map50"] > 0.05 and report["configs"][0]["runs"][0]["map50"] < 0.01
    difference = report["against_baseline"]["trained/last.pt"]["map"]["within_run"][0]
    assert difference["low"] > 0, difference
    assert report["verdicts"][0].startswith("trained/last.pt vs untrained.pt: mAP50-95 +")
    assert "1 seed: training-to-training variation not measured" in report["verdicts"][0]
    assert "): higher" in report["verdicts"][0]


def test_a_clearly_better_model_is_called_higher():

    from engine.evaluate.stats import RankedDetections

    rng = np.random.default_rng(4)
    entries = []
    for label, quality in (("weak", 0.15), ("strong", 0.9)):
        stats = random_stats(rng, images=80, quality=quality)
        map50, map_ = RankedDetections(stats, 3).map(np.ones(80, int))  # every image once: the reported mAP
        entry = compare.Entry(label, model=None, params=1, gflops=1.0)
        entry.runs.append(compare.SeedRun(0, map50, map_, image_stats=stats))
        entries.append(entry)
    differences = compare.add_bootstrap_intervals(entries, num_classes=3, resamples=200)
    lines, report = compare.verdicts(entries, differences)
    assert report["strong"]["map"]["within_run"][0]["low"] > 0
    assert lines[0].startswith("strong vs weak: mAP50-95 +") and "): higher" in lines[0]


def test_parallel_devices_are_several_cuda_indices_only():
    assert compare.parallel_devices("0,1,2,3") == ["0", "1", "2", "3"]
    assert compare.parallel_devices("cuda:0,cuda:1") == ["0", "1"]
    for single in ("", "cpu", "0", "mps"):
        assert compare.parallel_devices(single) == [single]


def test_runs_on_several_devices_go_one_per_device_at_a_time(tmp_path):
    import threading
    import time

    lock, running, log = threading.Lock(), {}, []

    def fake_run(job, device, options):
        with lock:
            assert device not in running, f"device {device} got a second run while busy"
            running[device] = job
            log.append((job[1], device))
        time.sleep(0.02 * (1 + job[1] % 3))
        with lock:
            del running[device]
        return {"seed": job[1], "device": device}

    jobs = [("a.yaml", seed, tmp_path / f"seed{seed}") for seed in range(7)]
    options = compare.parse_options(["--device", "0,1,2"])
    summaries = compare.train_all(jobs, options, run_job=fake_run)
    assert [summary["seed"] for summary in summaries] == list(range(7))  # in job order, whoever ran them
    assert sorted(seed for seed, _ in log) == list(range(7)) and {device for _, device in log} == {"0", "1", "2"}

    def failing_run(job, device, options):
        if job[1] == 3:
            raise RuntimeError("training a.yaml seed 3 failed")
        return {"seed": job[1]}

    with pytest.raises(RuntimeError, match="seed 3 failed"):
        compare.train_all(jobs, options, run_job=failing_run)
