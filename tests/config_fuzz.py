"""Seeded mutants of a model YAML, for the fuzz test of the config parser (tests/test_config_fuzz.py).

Each mutant applies one to three edits of the kinds a hand-edited or hostile config has: unknown or injected
module names, numbers replaced by strings, lists, negatives, zeros, huge or non-finite values, dropped or
duplicated lines, forward or out-of-range ``from`` indices, YAML tags, absurd depth/width multiples, malformed
anchors and class counts, and broken YAML.
"""
from __future__ import annotations

import random
import re

INJECTIONS = ["__import__('os').system('touch /tmp/pwned')", "eval", "exec('1')", "os.system", "nn.Module",
              "torch.load", "lambda: 0", "Conv; import os", "../../etc/passwd", "C3\x00", "", "Conv2d", "nn.Conv2d",
              "nn.Sequential", "DetectionModel", "!!python/object/apply:os.system ['id']"]
BAD_VALUES = ["'abc'", "[1, 2]", "[]", "{}", "-1", "-64", "0", "1e9", "1e30", "999999999999", ".inf", ".nan",
              "null", "true", "1.5", "-0.5", "'64'", "[[64]]", "2**40", "!!binary aGVsbG8="]
MULTIPLES = ["1e6", "1e9", "-1", "0", "'x'", "[0.33]", ".inf", ".nan", "1e-9", "100", "null", "true", "-0.25"]
ANCHORS = ["[[10, 13, 16]]", "[[10, 13], [30, 61], [116, 90]]", "[[-10, 13, 16, 30, 33, 23]]", "[['a', 13]]",
           "0", "-3", "1000000", "[]", "[[]]", "'anchors'", "[[1e30, 1e30, 16, 30, 33, 23]] ",
           "[[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]", "[[.nan, 13, 16, 30, 33, 23]] "]
TAGS = ["!!python/object/apply:os.system ['id']", "!!python/name:os.system", "!!set {a, b}", "!!omap [a: 1]",
        "&a [1, *a]", "*undefined"]


def _layer_lines(lines: list[str]) -> list[int]:
    return [index for index, line in enumerate(lines) if line.lstrip().startswith("- [")]


def mutate(text: str, rng: random.Random) -> str:
    """One mutant of the YAML ``text``: one to three random edits."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        layers = _layer_lines(lines)
        kind = rng.randrange(11)
        if kind == 0 and layers:  # module name
            index = rng.choice(layers)
            lines[index] = re.sub(r"(\d+, )([A-Za-z_.]+)(, \[)", lambda m: m.group(1) + repr(rng.choice(INJECTIONS))
                                  + m.group(3), lines[index], count=1)
        elif kind == 1 and layers:  # a number inside the args or the repeats
            index = rng.choice(layers)
            numbers = list(re.finditer(r"(?<![\w.])-?\d+(?![\w.])", lines[index]))
            if numbers:
                match = rng.choice(numbers)
                lines[index] = lines[index][:match.start()] + rng.choice(BAD_VALUES) + lines[index][match.end():]
        elif kind == 2 and layers:  # drop a line
            del lines[rng.choice(layers)]
        elif kind == 3 and layers:  # duplicate a line
            index = rng.choice(layers)
            lines.insert(index, lines[index])
        elif kind == 4 and layers:  # 'from' forward or out of range
            index = rng.choice(layers)
            lines[index] = re.sub(r"- \[(-?\d+|\[[^\]]*\])", f"- [{rng.choice(['50', '-50', '24', '[-1, 99]', 'x'])}",
                                  lines[index], count=1)
        elif kind == 5:  # depth / width multiple
            key = rng.choice(["depth_multiple", "width_multiple"])
            lines = [f"{key}: {rng.choice(MULTIPLES)}" if line.startswith(key) else line for line in lines]
        elif kind == 6:  # anchors
            start = next((i for i, line in enumerate(lines) if line.startswith("anchors")), None)
            if start is not None:
                end = start + 1
                while end < len(lines) and lines[end].startswith("  -"):
                    end += 1
                lines[start:end] = [f"anchors: {rng.choice(ANCHORS)}"]
        elif kind == 7:  # number of classes
            lines = [f"nc: {rng.choice(BAD_VALUES)}" if line.startswith("nc:") else line for line in lines]
        elif kind == 8 and layers:  # a YAML tag in a layer
            index = rng.choice(layers)
            lines[index] = lines[index].replace("[", f"[{rng.choice(TAGS)} ", 1)
        elif kind == 9:  # drop or garble a top-level key
            keys = [i for i, line in enumerate(lines) if re.match(r"^[a-z_]+:", line)]
            if keys:
                index = rng.choice(keys)
                lines[index] = rng.choice(["", "backbone: 3", "head: {}", "nc", ": :", "head: [[1, 2]]"])
        elif layers:  # broken YAML
            index = rng.choice(layers)
            lines[index] = lines[index][: rng.randrange(len(lines[index]) + 1)]
    return "\n".join(lines) + "\n"


def mutants(text: str, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [mutate(text, rng) for _ in range(count)]


def build_all(base: str, count: int, seed: int, folder: str) -> dict:
    """Write ``count`` mutants of the config ``base`` to ``folder`` and build each; returns the outcomes."""
    from pathlib import Path

    from models.parse import resolve_cfg_path
    from models.registry import ConfigError
    from models.yolo import DetectionModel

    outcomes = {"built": 0, "config_errors": 0, "unnamed": [], "raw": []}
    for index, text in enumerate(mutants(resolve_cfg_path(base).read_text(), count, seed)):
        path = Path(folder) / f"mutant{index:03d}.yaml"
        path.write_text(text)
        try:
            DetectionModel(path)
            outcomes["built"] += 1
        except ConfigError as error:
            outcomes["config_errors"] += 1
            message = str(error)
            where = ("layer ", "nc:", "'nc'", "depth_multiple", "width_multiple", "anchors", "'backbone'", "'head'",
                     "not valid YAML", "must be a mapping", "activation")
            if str(path) not in message or not any(word in message for word in where) or "\n" in message.strip():
                outcomes["unnamed"].append(f"{path.name}: {message[:300]}")
        except Exception as error:  # noqa: BLE001  (what the test counts: anything but ConfigError)
            outcomes["raw"].append(f"{path.name}: {type(error).__name__}: {str(error)[:300]}")
    return outcomes


if __name__ == "__main__":
    # python tests/config_fuzz.py BASE COUNT SEED FOLDER MEMORY_GB: build the mutants under a memory limit, print JSON
    import json
    import resource
    import sys

    base, count, seed, folder, memory_gb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    limit = int(memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    print(json.dumps(build_all(base, count, seed, folder)))
