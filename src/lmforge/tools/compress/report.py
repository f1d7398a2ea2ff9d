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
import math
from pathlib import Path

from lmforge.config.fields import show
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
            report = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text (expected the compression.json `lmforge compress` wrote)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e.msg})") from None
        _check_report(report, path)
        out.append(report)
    if not out:
        raise UserError("report compress: give at least one run dir made by `lmforge compress`")
    return out


def _check_report(r, path: Path) -> None:
    """What the plot reads from a compression.json, checked as untrusted input (one line naming the field)."""
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what} (expected the compression.json `lmforge compress` wrote)")

    if not isinstance(r, dict):
        raise bad(f"expected a JSON object, got {type(r).__name__}")
    for key in ("source", "run_dir", "method"):
        if not isinstance(r.get(key), str):
            raise bad(f"{key}: expected a string, got {show(r.get(key))}")
    for where, d in (("", r), ("original.", r.get("original"))):
        if not isinstance(d, dict):
            raise bad(f"{where[:-1]}: expected an object, got {show(d)}")
        big = r.get("setup", {}).get("batch", 32) if isinstance(r.get("setup"), dict) else 32  # images: 64
        for key in ("latency_ms_b1", f"latency_ms_b{big}"):
            if not number(d.get(key)):
                raise bad(f"{where}{key}: expected a finite number, got {show(d.get(key))}")
        m = d.get("metric")
        if not isinstance(m, dict) or not any(k in m for k in ("accuracy", "perplexity")):
            raise bad(f"{where}metric: expected an object with accuracy or perplexity, got {show(m)}")
        if not all(number(m[k]) for k in ("accuracy", "perplexity") if k in m):
            raise bad(f"{where}metric: expected finite numbers, got {show(m)}")
    if not number(r.get("size_mb")):
        raise bad(f"size_mb: expected a finite number, got {show(r.get('size_mb'))}")


def plot_compression(runs: list[str | Path], out: str | Path, batch: int = 1) -> Path:
    """Write a PNG of metric vs latency (batch ``batch``: 1 or 32) for ``runs`` and their originals."""
    reports = read_reports(runs)
    kinds = {"accuracy" if "accuracy" in r["metric"] else "perplexity" for r in reports}
    if len(kinds) > 1:
        raise UserError("report compress: mixes classifiers (accuracy) and language models (perplexity); plot them separately")
    metric = kinds.pop()
    missing = [r["run_dir"] for r in reports for d in (r, r["original"]) if f"latency_ms_b{batch}" not in d]
    if missing:
        raise UserError(f"--batch {batch}: {missing[0]} has no latency at batch {batch} (text runs are measured at batch 1 "
                        "and 32, image runs at 1 and 64)")
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
