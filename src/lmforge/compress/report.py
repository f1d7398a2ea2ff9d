"""``lmforge report compress``: quality against latency for compressed runs and the runs they came from.

Each run's ``compression.json`` holds its figures and its original's, measured together. A classifier
is plotted as accuracy, a language model as validation perplexity (lower is better), against the
forward latency at batch 1 or 32; an arrow goes from each original (hollow) to its compressed run
(filled). An original compressed several times is drawn at each of its measurements (they were
taken next to each compressed run, so their spread shows the timing noise) and labelled once.
matplotlib is imported lazily, with the Agg backend (no display needed): ``pip install 'lmforge[plot]'``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from lmforge.errors import UserError
from lmforge.fileio import atomic_write_bytes


def read_reports(runs: list[str | Path]) -> list[dict]:
    """compression.json of each run (a UserError names a run that has none)."""
    out = []
    for run in runs:
        path = Path(run) / "compression.json"
        if not path.is_file():
            raise UserError(f"{run}: no compression.json (expected a run dir made by `lmforge compress`)")
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e.msg})") from None
    if not out:
        raise UserError("report compress: give at least one run dir made by `lmforge compress`")
    return out


def plot_compression(runs: list[str | Path], out: str | Path, batch: int = 1) -> Path:
    """Write a PNG of metric vs latency (batch ``batch``: 1 or 32) for ``runs`` and their originals."""
    reports = read_reports(runs)
    kinds = {"accuracy" if "accuracy" in r["metric"] else "perplexity" for r in reports}
    if len(kinds) > 1:
        raise UserError("report compress: mixes classifiers (accuracy) and language models (perplexity); plot them separately")
    metric = kinds.pop()
    if batch not in (1, 32):
        raise UserError(f"--batch {batch}: latencies are measured at batch 1 and 32")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("report compress needs matplotlib: pip install 'lmforge[plot]'") from None

    key = f"latency_ms_b{batch}"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    seen: dict[str, int] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in reports:
        src, o = r["source"], r["original"]
        first = src not in seen
        seen.setdefault(src, len(seen))
        c = colors[seen[src] % len(colors)]
        ax.scatter(o[key], o["metric"][metric], s=60, facecolors="none", edgecolors=c, linewidths=1.5, zorder=3)
        if first:
            ax.annotate(f"{Path(src).name} (original)", (o[key], o["metric"][metric]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8, color=c)
        x, y = r[key], r["metric"][metric]
        ax.annotate("", (x, y), (o[key], o["metric"][metric]), arrowprops={"arrowstyle": "->", "color": c, "alpha": 0.6})
        ax.scatter(x, y, s=60, color=c, zorder=3)
        ax.annotate(f"{Path(r['run_dir']).name}: {_what(r)}, {r['size_mb']:.2f} MB", (x, y), textcoords="offset points",
                    xytext=(6, -12), fontsize=8, color=c)
    setup = reports[0].get("setup", {})
    ax.set_xlabel(f"forward latency, batch {batch} x {setup.get('seq_len', '?')} tokens (ms, median)")
    ax.set_ylabel("accuracy (validation)" if metric == "accuracy" else "perplexity (validation, lower is better)")
    ax.set_title("Compression: quality vs latency (hollow: original, filled: compressed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _what(r: dict) -> str:
    if r["method"] != "prune":
        return r["method"]
    return f"prune {r.get('pruned', {}).get('structured') or 'unstructured'} {r.get('sparsity', 0):.2f}"
