"""``lmforge explain``: why a text classifier decided (token attributions, an HTML page, JSON), and how faithful
each attribution method is on a test split (ERASER's comprehensiveness / sufficiency against random).

Text classifiers for now (the other task families get theirs in their own issue): :mod:`.attribution`
computes the scores, :mod:`.faithfulness` measures them, :mod:`.page` draws them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmforge.errors import UserError
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tools.explain.attribution import METHODS, explain_text


def _classifier(run_dir, images: bool = False):
    from lmforge import tasks

    src = loader.require_run_dir(run_dir)
    cfg = loader.read_run_config(src)
    name = tasks.of(cfg).name
    if name not in (("classify", "image") if images else ("classify",)):
        raise UserError(f"{src}: a {name} run; lmforge explain covers text classifiers" + (" and image runs" if images
                        else "") + " so far (a run of `lmforge finetune` with finetune.labels" +
                        (", or of task image)" if images else ")"))
    cfg, model, tok = loader.load_run(src, verb="explain")
    if cfg.compress.quantize:
        raise UserError(f"{src}: int8-quantized; explain the float run it was made from ({cfg.compress.source or '?'})")
    return src, cfg, model.float(), tok


def _target(cfg, target: str | None) -> int | None:
    if target is None:
        return None
    names = cfg.finetune.label_names if cfg.finetune.labels else cfg.image.label_names
    if target not in names:
        raise UserError(f"--target {target!r}: not a class of this run (expected one of: {', '.join(names)})")
    return names.index(target)


def explain(run_dir, texts: list[str], method: str = "ig", target: str | None = None, out: str | None = None,
            json_out: str | None = None) -> list[dict]:
    """Attributions of ``method`` for each of ``texts`` (an image run: image files); writes the HTML page ``out``
    and / or ``json_out``."""
    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if not texts:
        raise UserError("explain: give the texts to explain (lmforge explain RUN \"some text\" ...) or --split SPLIT "
                        "--faithfulness N")
    if not out and not json_out:
        raise UserError("explain: give --out FILE.html and / or --json OUT.json for the result")
    if out and not str(out).endswith((".html", ".htm")):
        raise UserError(f"--out {out}: expected an .html file")
    src, cfg, model, tok = _classifier(run_dir, images=True)
    c = _target(cfg, target)
    if tok is None:  # an image run: the inputs are image files
        from lmforge.tools.explain.image import explain_images

        return explain_images(src, cfg, model, texts, method, c, out, json_out)
    found = [explain_text(model, tok, t, cfg.classifier_max_length, method, c) for t in texts]
    names = cfg.finetune.label_names
    rows = [{"text": e.text, "method": e.method, "target": names[e.target], "predicted": names[max(range(len(e.probs)),
             key=lambda k: e.probs[k])], "probabilities": dict(zip(names, e.probs)),
             "tokens": [{"piece": p, "id": i, "score": s, "special": sp}
                        for p, i, s, sp in zip(e.pieces, e.ids, e.scores, e.special)], **e.extra} for e in found]
    if out:
        from lmforge.tools.explain.page import render

        ckpt.atomic_write_text(Path(out), render(found, names, str(src)))
    if json_out:
        ckpt.atomic_write_text(Path(json_out), json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return rows


def faithfulness_run(run_dir, split: str, n: int, methods: list[str] | None = None, data: str | None = None,
                     json_out: str | None = None, seed: int = 0, progress: bool = True) -> dict:
    """ERASER figures of ``methods`` (default ig and occlusion) and random over ``n`` texts of ``split``
    (drawn with ``seed`` when the split has more)."""
    from lmforge.data.labelled import load_labelled
    from lmforge.tools.explain.faithfulness import faithfulness

    if n < 1:
        raise UserError(f"--faithfulness {n}: expected a number of examples >= 1")
    methods = [m for m in (methods or ["ig", "occlusion"]) if m != "random"] + ["random"]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UserError(f"--method {bad[0]}: expected one of {', '.join(METHODS)}")
    src, cfg, model, tok = _classifier(run_dir)
    ft = cfg.finetune
    d = load_labelled(data or ft.data, split, ft.text_column, ft.label_column, ft.label_names, tsv_quoting=ft.tsv_quoting)
    texts = list(d.texts)
    if len(texts) > n:
        texts = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), n))]
    result = {"run_dir": str(src), "data": f"{d.source} ({split})", **faithfulness(model, tok, texts,
              cfg.classifier_max_length, methods, seed, progress)}
    if json_out:
        ckpt.atomic_write_text(Path(json_out), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result
