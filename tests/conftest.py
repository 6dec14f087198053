"""Shared test settings."""
from __future__ import annotations

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
