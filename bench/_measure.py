"""Measurement helpers shared by the benchmarks: interleaved timing and peak memory of one step.

Peak memory: on CUDA, torch.cuda.max_memory_allocated around the step. On the CPU, each configuration runs
in a fresh subprocess and the step's peak is ru_maxrss (peak resident set) minus the resident set just
before the step, after the model is built and warmed up on a small input.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def median_times(functions: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so that machine load hits all alike."""
    for fn in functions.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def step_peak_bytes(step: Callable[[], object]) -> int:
    """Extra memory one call of ``step`` needs at its peak (see module docstring)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    earlier_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak <= earlier_peak:
        raise RuntimeError("the step stayed below an earlier peak of this process: measure it in a fresh process")
    return peak - before


def run_isolated(module: str, *args: str) -> dict:
    """Run ``python -m module args`` in a fresh process and parse the JSON line it prints last."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
