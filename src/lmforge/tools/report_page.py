"""``lmforge report RUN [RUN ...] --out report.html``: the runs at a glance, in one self-contained HTML file.

For each run: its ``config.yaml``, the curves of its ``metrics.jsonl`` (train and validation loss, validation
accuracy, learning rate, throughput), its evaluation on ``split`` (:func:`lmforge.tools.evaluate.evaluate_run`:
accuracy, per-class precision / recall / F1 and the confusion matrix; loss and perplexity; BLEU), and its
worst errors: a text classifier's most confidently wrong examples with their integrated-gradients
explanation (when Captum is installed), an image run's worst-classified images and confusion matrix.
Several runs also get a comparison table and, when some were made by ``lmforge compress``, the
quality-versus-latency plot. Every image is inline (PNG as data: URIs); the page loads nothing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

from lmforge.errors import UserError
from lmforge.fileio import atomic_write_text
from lmforge.runs import files as ckpt
from lmforge.runs import loader

STYLE = """body{font-family:system-ui,'Noto Sans CJK SC','PingFang SC',sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;margin:0.5em 0}td,th{padding:0.2em 0.6em;border-bottom:1px solid #eee;text-align:left}
.run{border:1px solid #ddd;border-radius:0.5em;padding:1em 1.5em;margin:1.5em 0}pre{background:#f6f6f6;padding:0.8em;
overflow-x:auto}.tok{padding:0.1em 0.05em;border-radius:0.2em;white-space:pre-wrap}.sp{color:#888;font-size:0.8em}
.err{margin:0.6em 0}.meta{color:#555}img{max-width:100%}"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("lmforge report needs matplotlib: pip install 'lmforge[plot]'") from None
    return plt


def curves(records: list[dict]) -> str | None:
    """One PNG: train / val loss, val accuracy, learning rate and throughput against the step."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train and not val:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), dpi=90)
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation", ms=3)
    if any("accuracy" in r for r in val):
        a2 = ax.twinx()
        a2.plot([r["step"] for r in val if "accuracy" in r], [r["accuracy"] for r in val if "accuracy" in r], "s--",
                color="tab:green", ms=3, label="val accuracy")
        a2.set_ylabel("accuracy")
    ax.set(xlabel="step", ylabel="loss", title="loss")
    ax.legend(fontsize=8)
    axes[1].plot([r["step"] for r in train if "lr" in r], [r["lr"] for r in train if "lr" in r])
    axes[1].set(xlabel="step", title="learning rate")
    axes[2].plot([r["step"] for r in train if "tok_per_s" in r], [r["tok_per_s"] for r in train if "tok_per_s" in r])
    axes[2].set(xlabel="step", title="throughput (tokens or images / s)")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _table(header: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _evaluation(ev: dict) -> str:
    scalars = [[k, f"{v:.5g}" if isinstance(v, float) else v] for k, v in ev.items()
               if isinstance(v, (int, float, str)) and k not in ("run_dir",)]
    out = _table(["figure", "value"], scalars)
    if "per_class" in ev:
        out += "<h4>per class</h4>" + _table(["class", "precision", "recall", "F1", "support"],
                                               [[n, c["precision"], c["recall"], c["f1"], c["support"]]
                                                for n, c in ev["per_class"].items()])
    if "confusion" in ev:
        labels = ev.get("labels", [str(i) for i in range(len(ev["confusion"]))])
        out += "<h4>confusion (rows: true, columns: predicted)</h4>" + _table(
            ["", *labels], [[labels[i], *row] for i, row in enumerate(ev["confusion"])])
    return out


def _text_errors(run: Path, cfg, model, tok, split: str, n: int) -> str:
    """The ``n`` most confidently wrong texts of ``split``, with their IG explanation when Captum is there."""
    from lmforge.data.labelled import load_labelled
    from lmforge.tasks.classify import predict_proba

    ft = cfg.finetune
    d = load_labelled(ft.data, split, ft.text_column, ft.label_column, ft.label_names, tsv_quoting=ft.tsv_quoting)
    probs = predict_proba(model, tok, d.texts, cfg.classifier_max_length)
    wrong = [i for i in range(len(d.texts)) if int(probs[i].argmax()) != d.labels[i]]
    wrong.sort(key=lambda i: -float(probs[i].max()))
    if not wrong:
        return "<p>No errors on this split.</p>"
    try:
        import captum  # noqa: F401

        from lmforge.tools.explain.attribution import explain_text
        from lmforge.tools.explain.page import token_spans
    except ImportError:
        explain_text = None
    items = []
    for i in wrong[:n]:
        names = ft.label_names
        head = (f"true <b>{html.escape(names[d.labels[i]])}</b>, predicted <b>{html.escape(names[int(probs[i].argmax())])}"
                f"</b> ({float(probs[i].max()):.3f})")
        if explain_text is not None:
            e = explain_text(model.float(), tok, d.texts[i], cfg.classifier_max_length, "ig")
            body = token_spans(e)
        else:
            body = html.escape(d.texts[i])
        items.append(f'<div class="err"><span class="meta">{head}</span><br>{body}</div>')
    return (f"<p class='meta'>{len(wrong)} of {len(d.texts)} wrong; the {min(n, len(wrong))} most confident, "
            "tokens shaded by integrated gradients towards the predicted class (red for, blue against):</p>"
            + "".join(items))


def _run_section(run: Path, split: str, errors: int) -> tuple[str, dict]:
    from lmforge import tasks
    from lmforge.tools.evaluate import evaluate_run

    cfg = loader.read_run_config(run)
    task = tasks.of(cfg).name
    parts = [f"<h2>{html.escape(run.name)}</h2><p class='meta'>{html.escape(str(run))} &middot; task {task} &middot; "
             f"model {cfg.model.name}</p>"]
    records = ckpt.read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    png = curves(records)
    if png:
        parts.append(f'<img alt="training curves" src="{png}">')
    with tempfile.TemporaryDirectory() as tmp:
        ev = evaluate_run(run, split=split, plot=tmp if task == "image" else None)
        parts.append(f"<h3>evaluation ({html.escape(ev.get('data', split))})</h3>" + _evaluation(ev))
        for p in ev.get("plots", []):  # an image run's confusion matrix and worst images
            parts.append(f'<img alt="evaluation plot" src="{_file_uri(Path(p))}" style="max-width:48%">')
    if task == "classify" and errors:
        _, model, tok = loader.load_run(run)
        parts.append("<h3>worst errors</h3>" + _text_errors(run, cfg, model, tok, split, errors))
    parts.append(f"<details><summary>config.yaml</summary><pre>{html.escape((run / ckpt.CONFIG).read_text())}</pre></details>")
    size = (run / ckpt.WEIGHTS).stat().st_size / 1e6 if (run / ckpt.WEIGHTS).is_file() else float("nan")
    metric = next((k for k in ("accuracy", "bleu", "perplexity") if k in ev), None)
    row = {"run": run.name, "task": task, "model": cfg.model.name, "steps": records[-1]["step"] if records else "-",
           "size (MB)": f"{size:.2f}", "figure": metric or "-", "value": ev.get(metric, "-") if metric else "-"}
    return f'<div class="run">{"".join(parts)}</div>', row


def report(runs: list[str], out: str, split: str = "val", errors: int = 5) -> Path:
    """Write the report page of ``runs`` to ``out`` (an .html file); returns its path."""
    if not runs:
        raise UserError("report: give at least one run directory")
    if not str(out).endswith((".html", ".htm")):
        raise UserError(f"--out {out}: expected an .html file (lmforge report compress writes PNG plots)")
    dirs = [loader.require_run_dir(r) for r in runs]
    sections, rows = zip(*(_run_section(d, split, errors) for d in dirs))
    head = ""
    if len(dirs) > 1:
        head = "<h2>comparison</h2>" + _table(list(rows[0].keys()), [list(r.values()) for r in rows])
    compressed = [d for d in dirs if (d / "compression.json").is_file()]
    if compressed:
        from lmforge.tools.compress.report import plot_compression

        with tempfile.TemporaryDirectory() as tmp:
            png = plot_compression(compressed, Path(tmp) / "c.png")
            head += f'<h2>compression</h2><img alt="quality vs latency" src="{_file_uri(png)}">'
            rep = [json.loads((d / "compression.json").read_text()) for d in compressed]
            head += _table(["run", "method", "size (MB)", "params", "latency b1 (ms)"],
                           [[Path(r["run_dir"]).name, r["method"], r["size_mb"], r["params"], r["latency_ms_b1"]] for r in rep])
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lmforge report</title><style>{STYLE}</style></head>
<body><h1>lmforge report</h1><p class="meta">{len(dirs)} run(s), evaluated on their {html.escape(split)} split.</p>
{head}{''.join(sections)}</body></html>
"""
    path = Path(out)
    atomic_write_text(path, page)
    return path
