"""The `isolated` marker (tests/conftest.py): such a test runs in a child interpreter, whose outcome is reported."""
from __future__ import annotations

import os
import sys

import pytest


@pytest.mark.isolated
def test_an_isolated_test_runs_in_a_child_interpreter():
    assert os.environ.get("SLIMNECK_ISOLATED_TEST") == "1"


def test_other_tests_run_in_the_pytest_process():
    assert "SLIMNECK_ISOLATED_TEST" not in os.environ


@pytest.mark.isolated
def test_an_isolated_test_can_be_skipped():
    pytest.skip("skipped in the child, reported as skipped by the parent")


def test_the_pytest_process_has_not_loaded_openvino():
    """Every test that loads OpenVINO or NNCF is isolated (the modules before this one in the run included)."""
    assert "openvino" not in sys.modules and "nncf" not in sys.modules
