"""The HTML page of ``lmforge explain``: each text's tokens shaded by their attribution (red: for the explained
class, blue: against it; the darkest is the text's largest score), its prediction, the method's figures and
a bar chart of the strongest tokens (an inline PNG). One self-contained file: no script, no style sheet or
font from the network, so it opens offline."""

from __future__ import annotations

import base64
import html
import io

STYLE = """body{font-family:system-ui,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei',sans-serif;margin:2em;max-width:60em}
.tok{padding:0.1em 0.05em;border-radius:0.2em;white-space:pre-wrap}.sp{color:#888;font-size:0.8em}
.card{border:1px solid #ddd;border-radius:0.5em;padding:1em;margin:1em 0}.meta{color:#444;font-size:0.9em}
table{border-collapse:collapse}td,th{padding:0.2em 0.6em;border-bottom:1px solid #eee;text-align:left}"""


def _shade(score: float, top: float) -> str:
    a = 0.0 if top <= 0 else min(1.0, abs(score) / top) * 0.85
    rgb = "220,38,38" if score > 0 else "37,99,235"
    return f"background:rgba({rgb},{a:.3f})"


def _bars_png(pieces: list[str], scores: list[float], n: int = 12) -> str | None:
    """A horizontal bar chart of the ``n`` largest |scores| as a data: URI, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    order = sorted(range(len(scores)), key=lambda i: -abs(scores[i]))[:n][::-1]
    if not order:
        return None
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist if any(k in f.name for k in ("CJK", "Hei", "Song", "Ming"))]
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(order) + 0.8), dpi=100)
    ax.barh(range(len(order)), [scores[i] for i in order], color=["#dc2626" if scores[i] > 0 else "#2563eb" for i in order])
    ax.set_yticks(range(len(order)), [pieces[i].strip() or repr(pieces[i]) for i in order],
                  fontfamily=cjk[:1] + ["DejaVu Sans"] if cjk else None)
    ax.set_xlabel("attribution")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def token_spans(e) -> str:
    """An explanation's tokens as shaded HTML spans (classes ``tok`` and ``sp`` for the specials)."""
    top = max((abs(s) for s in e.scores), default=0.0)
    return "".join(
        f'<span class="tok sp" title="{html.escape(p)}">{html.escape(p)}</span>' if sp else
        f'<span class="tok" style="{_shade(s, top)}" title="{s:+.4f}">{html.escape(p)}</span>'
        for p, s, sp in zip(e.pieces, e.scores, e.special))


def render(explanations, label_names: list[str], run_dir: str) -> str:
    """The page for a list of :class:`~lmforge.tools.explain.attribution.Explanation`."""
    cards = []
    for e in explanations:
        toks = token_spans(e)
        pred = max(range(len(e.probs)), key=lambda k: e.probs[k])
        probs = "".join(f"<tr><td>{html.escape(n)}</td><td>{p:.4f}</td></tr>" for n, p in zip(label_names, e.probs))
        extra = ""
        if e.method == "ig":
            x = e.extra
            extra = (f" &middot; {x['steps']} steps, convergence delta {x['delta']:.2e} "
                     f"({'within' if x['converged'] else 'over'} tolerance) &middot; sum of scores {sum(e.scores):+.4f} "
                     f"= p(text) - p(baseline) {e.probs[e.target] - x['baseline_prob']:+.4f}")
        png = _bars_png(e.pieces, e.scores)
        img = f'<img alt="strongest tokens" src="{png}">' if png else ""
        cards.append(f"""<div class="card"><p class="meta">predicted <b>{html.escape(label_names[pred])}</b>
({e.probs[pred]:.4f}); explained class <b>{html.escape(label_names[e.target])}</b>; method <b>{e.method}</b>{extra}</p>
<p lang="">{toks}</p><table><tr><th>class</th><th>probability</th></tr>{probs}</table>{img}</div>""")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lmforge explain: {html.escape(run_dir)}</title><style>{STYLE}</style></head>
<body><h1>Why the model decided</h1><p class="meta">run <code>{html.escape(run_dir)}</code>. Red tokens push the
explained class up, blue ones down; hover a token for its score.</p>{''.join(cards)}</body></html>
"""
