"""Shared by the benchmarks: the host set-up, interleaved timing and peak memory of one step.

Host: ``bash scripts/host.sh bench NAME`` runs ``python -m bench.NAME`` with the pack importable as the package
``refguide`` (an import root with a ``refguide`` link to this checkout on PYTHONPATH). Every benchmark calls
:func:`configure_host` first and then imports the pack as ``refguide.*``, the one way benchmarks import it.

Peak memory: on CUDA, torch.cuda.max_memory_allocated around the step. On the CPU, the kernel's peak resident
set (VmHWM) is reset just before the step (`5` written to /proc/self/clear_refs) and read after it; the step's
peak is that minus the resident set before the step. Each configuration still runs in a fresh subprocess
(run_isolated) so that allocator caches of one configuration do not serve the other, with glibc told to map
every allocation above 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at
once and it tracks live memory instead of the allocator's free lists (repeatable within about 1%).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def configure_host(pytorch_attention: bool = False) -> None:
    """ComfyUI importable (first on sys.path), CPU mode unless REFGUIDE_DEVICE=cuda, the attention backend chosen;
    to be called before anything imports ``comfy`` or ``refguide``. The tiny stand-in models of tests/ are
    importable too (``refguide_testing``)."""
    root = os.environ.get("COMFYUI_ROOT")
    if not root or not os.path.isdir(os.path.join(root, "comfy")) or importlib.util.find_spec("refguide") is None:
        raise RuntimeError("Run the benchmarks with `bash scripts/host.sh bench NAME`.")
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    for path in (tests, root):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args

    if os.environ.get("REFGUIDE_DEVICE", "cpu") == "cpu":
        comfy.cli_args.args.cpu = True
    if pytorch_attention:
        comfy.cli_args.args.use_pytorch_cross_attention = True


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


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


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
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    before = _rss_bytes()
    step()
    return _peak_rss_bytes() - before


def run_isolated(module: str, *args: str) -> dict:
    """Run ``python -m module args`` in a fresh process and parse the JSON line it prints last."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="2")
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
