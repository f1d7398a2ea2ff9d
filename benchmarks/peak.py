"""Peak probe: matmul GFLOP/s in fp32 / bf16 / int8 and memory read GB/s, at a given thread count.

    .venv/bin/python benchmarks/peak.py [--threads 2] [--size 2048] [--repeats 5]

The other benchmarks state utilisation against these figures: MFU (model FLOP/s over the matmul
peak of the dtype) and the share of the memory-bandwidth bound (bytes a decode step must read over
the read bandwidth). Each run writes ``runs/bench/peak-<threads>.json``; :func:`peaks` reuses that
file when it is recent and from the same torch / CPU / thread count, else measures (~10-20 s).

- matmul: ``a @ b`` of two n x n matrices (2 n^3 FLOP), fp32 and bf16 (oneDNN), int8 with
  ``torch._int_mm`` (int8 x int8 -> int32, the kernel of lmforge's int8 layers);
- memory read: ``x.sum()`` over a 256 MB float32 tensor (well past any cache).

The JSON line's ``ratio`` is bf16 / fp32 matmul speed (what bf16 autocast can gain at most).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from _common import CACHE_DIR, LoadMonitor, emit, machine, set_threads, timed

MAX_AGE_S = 12 * 3600


def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s (GOP/s for int8) of an n x n x n matmul in ``dtype`` (fp32 | bf16 | int8), median of ``repeats``."""
    g = torch.Generator().manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
        f = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        a, b = torch.randn(n, n, generator=g).to(dt), torch.randn(n, n, generator=g).to(dt)
        f = lambda: a @ b  # noqa: E731
    with torch.inference_mode():
        sec = timed({dtype: f}, repeats, warmup=1)[dtype]
    return 2 * n**3 / sec / 1e9


def mem_read_gbps(mb: int = 256, repeats: int = 5) -> float:
    """GB/s of ``x.sum()`` over an ``mb`` MB float32 tensor, median of ``repeats``."""
    x = torch.ones(mb * 2**20 // 4)
    with torch.inference_mode():
        sec = timed({"sum": x.sum}, repeats, warmup=1)["sum"]
    return x.numel() * 4 / sec / 1e9


def measure(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """{fp32_gflops, bf16_gflops, int8_gops, mem_read_gbps} at ``threads`` threads."""
    set_threads(threads)
    return {"fp32_gflops": round(matmul_gflops("fp32", n, repeats), 1),
            "bf16_gflops": round(matmul_gflops("bf16", n, repeats), 1),
            "int8_gops": round(matmul_gflops("int8", n, repeats), 1),
            "mem_read_gbps": round(mem_read_gbps(repeats=repeats), 2)}


def peaks(threads: int, fresh: bool = False, n: int = 2048, repeats: int = 5, cache: bool = True) -> dict:
    """The peak figures at ``threads``: from ``runs/bench/peak-<threads>.json`` when it is recent and from
    this torch / CPU, else measured now (and cached unless ``cache`` is false). The dict has ``source``:
    "cache" or "measured"."""
    path = CACHE_DIR / f"peak-{threads}.json"
    me = machine(threads, repeats)
    if cache and not fresh and path.exists():
        try:
            old = json.loads(path.read_text())
            if (old["torch"], old["cpu"]) == (me["torch"], me["cpu"]) and time.time() - old["time"] < MAX_AGE_S:
                return {**old["peak"], "source": "cache"}
        except (ValueError, KeyError):
            pass
    figures = measure(threads, n, repeats)
    if cache:
        save(threads, figures)
    return {**figures, "source": "measured"}


def save(threads: int, figures: dict) -> None:
    me = machine(threads, 0)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / f"peak-{threads}.json").write_text(json.dumps(
        {"peak": figures, "torch": me["torch"], "cpu": me["cpu"], "time": time.time()}))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="matmul size n (n x n x n)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat, nothing cached (tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.repeats = 256, 1
    with LoadMonitor() as mon:
        figures = measure(args.threads, args.size, args.repeats)
    if not args.smoke:
        save(args.threads, figures)
    out = {"benchmark": "peak", **figures, "matmul_size": args.size,
           "ratios": {"bf16_vs_fp32": round(figures["bf16_gflops"] / figures["fp32_gflops"], 3),
                      "int8_vs_fp32": round(figures["int8_gops"] / figures["fp32_gflops"], 3)},
           "ratio": round(figures["bf16_gflops"] / figures["fp32_gflops"], 3),
           **machine(args.threads, args.repeats), **mon.report()}
    return emit(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
