"""Device selection, seeding, distributed-training helpers and the interleaved timer of the latency reports."""
from __future__ import annotations

import ctypes
import logging
import os
import random
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from models.errors import UsageError

logger = logging.getLogger(__name__)


def select_device(device: str = "") -> torch.device:
    """'' -> first CUDA device if any else CPU; 'cpu'; '0' or '0,1' (CUDA indices); 'mps'.

    Under torchrun each process takes the CUDA device of its LOCAL_RANK.
    """
    text = str(device).strip().lower().replace("cuda:", "")
    if text == "cpu" or (text == "" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if text == "mps":
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device!r} asks for CUDA, but torch.cuda.is_available() is False; "
                         "use --device cpu")
    indices = [int(i) for i in text.split(",") if i.strip()] or [0]
    for index in indices:
        if index >= torch.cuda.device_count():
            raise UsageError(f"CUDA device {index} requested, {torch.cuda.device_count()} available")
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    chosen = indices[local_rank] if 0 <= local_rank < len(indices) else indices[0]
    return torch.device(f"cuda:{chosen}")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timer measures it (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def distributed_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (-1, -1, 1) outside it."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return -1, -1, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world_size


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group: NCCL on CUDA, gloo on CPU."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    logger.info("DDP: rank %d/%d, backend %s, device %s", dist.get_rank(), dist.get_world_size(), backend, device)


@contextmanager
def rank_zero_first(rank: int) -> Iterator[None]:
    """Let rank 0 do something first (e.g. build a dataset cache) while the others wait."""
    if rank > 0:
        dist.barrier()
    yield
    if rank == 0:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)) else model


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the operating system.

    By default glibc serves large blocks (activation maps) with fresh mmaps and trims the top of its heap when
    enough is free, so each new buffer costs a page fault per 4 KiB. It raises both thresholds after large frees,
    so how often that happens depends on the process's allocation history: a process that alternates between
    models, like the interleaved latency benchmark, took over 11,000 page faults per yolov5s forward at 640 here
    (and under 200 with this call). This keeps blocks up to 32 MiB on the heap and never trims it: the process
    keeps its peak heap, as a caching allocator would. Process-wide; returns False where the C library has no
    glibc ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (None where ``getrusage`` is not available, as on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_timings(runners: dict, rounds: int, warmup: int, seed: int = 0) -> dict[object, list[float]]:
    """Time no-argument callables side by side: ``warmup`` untimed rounds, then ``rounds`` rounds that each run
    every runner once in a freshly shuffled order, so a change in machine load hits all of them alike. Returns
    the per-round seconds of each runner (a CUDA runner must synchronize before it returns)."""
    order = list(runners)
    rng = random.Random(seed)
    for _ in range(warmup):
        for key in order:
            runners[key]()
    times: dict[object, list[float]] = {key: [] for key in order}
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            runners[key]()
            times[key].append(time.perf_counter() - start)
    return times
