"""Helpers shared by the benchmarks: machine facts, an alternating median timer, a load check, the JSON line.

Every benchmark prints one JSON object as its last stdout line (``emit``); ``make bench`` collects
those lines and ``benchmarks/results.py`` turns them into RESULTS.md. Peers are timed in the same
process, alternately (``timed``), so that a change in the machine's load hits every variant alike;
``LoadMonitor`` measures how much CPU *other* processes used meanwhile, because another busy process
on one core halves 2-thread work here (see docs/results.md).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "runs" / "bench"  # runs/ is git-ignored: cached peak figures live here


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def timed(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, run alternately (same load for all), after ``warmup`` calls each.

    >>> sorted(timed({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1))
    ['a', 'b']
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _busy_jiffies() -> int | None:
    """CPU time (clock ticks) all processes spent busy since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


class LoadMonitor:
    """How many CPUs other processes kept busy while a benchmark ran.

    ``with LoadMonitor() as mon: ...`` then ``mon.report()``: ``foreign_cpus`` is the machine's busy
    CPU time minus this process's own, divided by the wall time (0 on an idle machine, ~1 when another
    process kept one core busy throughout); ``contended`` is true above 0.25 of a CPU.
    """

    def __enter__(self) -> "LoadMonitor":
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_jiffies(), _own_seconds()
        self.load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def __exit__(self, *exc) -> None:
        self.t1, self.busy1, self.own1 = time.perf_counter(), _busy_jiffies(), _own_seconds()

    def report(self) -> dict:
        wall = max(self.t1 - self.t0, 1e-9)
        foreign = None
        if self.busy0 is not None and self.busy1 is not None:
            busy = (self.busy1 - self.busy0) / os.sysconf("SC_CLK_TCK")
            foreign = round(max(0.0, busy - (self.own1 - self.own0)) / wall, 2)
        return {"foreign_cpus": foreign, "contended": foreign is not None and foreign > 0.25,
                "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "cpus": os.cpu_count()}


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine(threads: int, repeats: int) -> dict:
    """The fields every benchmark reports beside its figures."""
    return {"threads": threads, "repeats": repeats, "torch": torch.__version__, "cpu": cpu_model(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def emit(out: dict) -> dict:
    """Print ``out`` as one JSON line on stdout (the line ``make bench`` collects) and return it."""
    print(json.dumps(out), flush=True)
    return out


def quiet_warnings() -> None:
    """transformers and torch.ao print deprecation notices that would bury the JSON line."""
    import warnings

    warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if "OMP_NUM_THREADS" not in os.environ:  # children (compile workers) follow
        os.environ["OMP_NUM_THREADS"] = str(threads)

