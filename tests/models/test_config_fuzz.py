"""Fuzzing the model-config parser: every malformed YAML is a ConfigError naming the file and the layer or key,
within a memory limit and a time limit (bounds are checked before anything is allocated)."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from models.parse import MAX_PARAMETERS, MAX_REPEATS
from models.registry import MAX_CHANNELS, ConfigError
from models.yolo import DetectionModel
from helpers import REPO

MEMORY_GB = 4.0


@pytest.mark.parametrize("base, count, seed", [("yolov5n-slimneck.yaml", 250, 0), ("yolov7-tiny-slimneck.yaml", 150, 1)])
def test_mutated_configs_raise_config_errors_only(tmp_path, base, count, seed):
    # In a child process under RLIMIT_AS, so a config that allocates without bound fails the test instead of the
    # machine; the timeout catches one that never returns.
    result = subprocess.run([sys.executable, str(REPO / "tests" / "config_fuzz.py"), base, str(count), str(seed),
                             str(tmp_path), str(MEMORY_GB)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcomes["raw"] == [], "raw exceptions: " + "\n".join(outcomes["raw"])
    assert outcomes["unnamed"] == [], "errors that do not name the file and layer/key: " + "\n".join(outcomes["unnamed"])
    assert outcomes["config_errors"] + outcomes["built"] == count
    assert outcomes["config_errors"] >= count * 0.8  # the mutants really are broken, mostly
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1 << 20)
    assert peak_gb < MEMORY_GB


def write(tmp_path: Path, base: str, old: str, new: str) -> Path:
    from models.parse import resolve_cfg_path

    text = resolve_cfg_path(base).read_text()
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


# Each case: (the line edited, the replacement, words the error must contain). The bounds are named in the error.
BROKEN = [
    ("depth_multiple: 0.33", "depth_multiple: 1.0e+6", ["depth_multiple", "(0, 10]", "1000000.0"]),
    ("depth_multiple: 0.33", "depth_multiple: 1e6", ["depth_multiple", "'1e6'"]),  # YAML 1.1 reads 1e6 as text
    ("depth_multiple: 0.33", "depth_multiple: [0.33]", ["depth_multiple", "[0.33]"]),
    ("width_multiple: 0.25", "width_multiple: abc", ["width_multiple", "'abc'"]),
    ("width_multiple: 0.25", "width_multiple: .nan", ["width_multiple", "nan"]),
    ("nc: 80", "nc: true", ["nc:", "integer from 1 to"]),
    ("nc: 80", "nc: -3", ["nc:", "-3"]),
    ("  - [10, 13, 16, 30, 33, 23]", "  - [10, 13, 16]", ["anchors", "w, h pixel pairs"]),
    ("  - [10, 13, 16, 30, 33, 23]", "  - [-10, 13, 16, 30, 33, 23]", ["anchors"]),
    ("[-1, 3, C3, [128]]", "[-1, 1000000, C3, [128]]", ["layer 2 (C3)", f"1 to {MAX_REPEATS}"]),
    ("[-1, 3, C3, [128]]", "[-1, 3, C3, ['abc']]", ["layer 2 (C3)", "'abc'"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [1e9, 3, 2]]", ["layer 1 (Conv)", f"be 1 to {MAX_CHANNELS}"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, [3], 2]]", ["layer 1 (Conv)"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, 0, 2]]", ["layer 1 (Conv)", "size of 0"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [8000, 301, 2]]", ["layer 1 (Conv)", f"{MAX_PARAMETERS:,}"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, 3, .inf]]", ["layer 1 (Conv)", "stride of inf"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[5, 1, Conv, [128, 3, 2]]", ["layer 1 (Conv)", "points forward"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, \"__import__('os')\", [128, 3, 2]]", ["layer 1", "unknown module"]),
    ("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, !!python/object/apply:os.system ['id']]", ["not valid YAML"]),
]


@pytest.mark.parametrize("old, new, words", BROKEN, ids=[case[1] for case in BROKEN])
def test_each_kind_of_bad_value_is_named(tmp_path, old, new, words):
    path = write(tmp_path, "yolov5n-slimneck.yaml", old, new)
    with pytest.raises(ConfigError) as caught:
        DetectionModel(path)
    message = str(caught.value)
    assert str(path) in message and all(word in message for word in words), message


def test_models_cli_prints_one_line_and_exits_2(tmp_path):
    path = write(tmp_path, "yolov5n-slimneck.yaml", "depth_multiple: 0.33", "depth_multiple: 1e6")
    result = subprocess.run([sys.executable, "-m", "models", "--cfg", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "depth_multiple" in result.stderr
