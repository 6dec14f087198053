"""Shared test settings."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def torch_thread_limit(request):
    """A module with ``pytestmark = pytest.mark.torch_threads(n)`` runs (fixtures included) with n intra-op threads.

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP threads
    slows them down many times over. The previous setting is restored afterwards.
    """
    marker = request.node.get_closest_marker("torch_threads")
    if marker is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(marker.args[0]))
    yield
    torch.set_num_threads(previous)


# Tests marked `isolated` run in a fresh interpreter of their own (fixtures included), and the parent only reports
# the outcome. OpenVINO and NNCF need this: loaded into the long pytest process next to ONNX Runtime and the many
# training runs of other tests, they corrupted its heap (segfaults later in unrelated tests, at varying places).
CHILD_FLAG = "SLIMNECK_ISOLATED_TEST"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("isolated") is None or os.environ.get(CHILD_FLAG):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", item.nodeid],
                           cwd=item.config.rootpath, env={**os.environ, CHILD_FLAG: "1"}, capture_output=True,
                           text=True)
    output = child.stdout + child.stderr
    skipped = re.search(r"^SKIPPED \[\d+\] (.+?):(\d+): (.*)$", output, re.MULTILINE)
    if child.returncode == 0 and skipped:
        outcome, longrepr = "skipped", (skipped[1], int(skipped[2]), skipped[3])
    elif child.returncode == 0 and re.search(r"\b1 passed\b", output):
        outcome, longrepr = "passed", None
    else:
        outcome, longrepr = "failed", f"isolated run exited {child.returncode}:\n{output[-6000:]}"
    duration = time.perf_counter() - started
    for when, result, text in (("setup", "passed", None), ("call", outcome, longrepr)):
        report = pytest.TestReport(item.nodeid, item.location, {name: 1 for name in item.keywords}, result, text,
                                   when, duration=duration if when == "call" else 0.0)
        item.ihook.pytest_runtest_logreport(report=report)
    # Finish the module and class fixtures the next test does not share (pytest's own teardown step, without the
    # per-test hooks, whose setup halves never ran here).
    teardown = pytest.CallInfo.from_call(lambda: item.session._setupstate.teardown_exact(nextitem), "teardown")
    item.ihook.pytest_runtest_logreport(report=item.ihook.pytest_runtest_makereport(item=item, call=teardown))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
