"""What a classifier's test errors are made of: draw a seeded sample of them to read, then summarise the reading.

    .venv/bin/python benchmarks/error_audit.py sample RUN_DIR [--n 60] [--seed 1] > audit.tsv
    (read each row; put label, none or model in its `category` column)
    .venv/bin/python benchmarks/error_audit.py summary audit.tsv RUN_DIR [--target 0.887]

Categories, judged by reading the sentence alone:
  label  its content says the opposite of its label (chn-reviews: one line of a review whose overall verdict
         went the other way, e.g. the "cons" line of a positive review);
  none   it carries no sentiment of its own, or an evenly mixed one (a hotel's reply, a booking detail);
  model  it says what its label says, and the model got it wrong.

``summary`` re-runs the model on the split, checks that every audited row is still one of its errors, and
prints one JSON object: the share of each category, and from the ``model`` share the accuracy a model
would have that fixed those errors and kept the rest (the ceiling this data leaves), and the part of them
that must be fixed to reach ``--target``; also the accuracy by text length in tokens. Only ``model`` errors count as fixable: a classifier that got the
``label`` rows right would be reading something other than the sentence.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from pathlib import Path

CATEGORIES = ("label", "none", "model")
FIELDS = ["index", "label", "p_label", "category", "text"]


LENGTHS = (16, 32, 64, 128)  # token-count buckets for the accuracy by length


def errors(run_dir: str, data: str | None, split: str) -> tuple[list[dict], int, dict]:
    """The run's errors on ``split`` (index, gold label, its probability, text), the number of examples and
    the accuracy by length in tokens ({"<16": {"examples", "accuracy"}, ...})."""
    import torch

    from lmforge.data.labelled import load_labelled
    from lmforge.runs import loader
    from lmforge.tasks.classify import predict_proba

    torch.set_num_threads(1)
    cfg, model, tok = loader.load_run(run_dir, verb="audit")
    ft = cfg.finetune
    if not ft.labels:
        from lmforge.errors import UserError

        raise UserError(f"{run_dir}: not a classifier (no finetune.labels); an error audit needs one")
    d = load_labelled(data or ft.data, split, ft.text_column, ft.label_column, ft.label_names)
    probs = predict_proba(model, tok, d.texts, cfg.classifier_max_length)
    right = (probs.argmax(-1) == torch.tensor(d.labels)).tolist()
    out = [{"index": i, "label": ft.label_names[y], "p_label": round(float(probs[i, y]), 3), "text": d.texts[i]}
           for i, y in enumerate(d.labels) if not right[i]]
    lengths = [len(ids) for ids in tok.encode_batch(d.texts)]
    edges = [0, *LENGTHS, float("inf")]
    by_length = {}
    for lo, hi in zip(edges, edges[1:]):
        hits = [r for r, n in zip(right, lengths) if lo <= n < hi]
        name = f"<{hi}" if lo == 0 else f">={lo}" if hi == float("inf") else f"{lo}-{hi - 1}"
        by_length[name] = {"examples": len(hits), "accuracy": round(sum(hits) / len(hits), 4) if hits else None}
    return out, len(d), by_length


def sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    picked = random.Random(seed).sample(rows, min(n, len(rows)))
    return sorted(picked, key=lambda r: r["index"])


def write_tsv(rows: list[dict], out) -> None:
    w = csv.DictWriter(out, FIELDS, delimiter="\t", lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "category": r.get("category", ""), "text": " ".join(r["text"].split())})


def read_audit(path: str | Path) -> list[dict]:
    """The audited rows; a row without one of CATEGORIES is an error naming its line."""
    from lmforge.errors import UserError

    text = Path(path).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    if not rows or "category" not in rows[0] or "index" not in rows[0]:
        raise UserError(f"{path}: expected a TSV with the columns {', '.join(FIELDS)} (from `error_audit.py sample`)")
    for line, r in enumerate(rows, start=2):
        if r["category"] not in CATEGORIES:
            raise UserError(f"{path}:{line}: category {r['category']!r}: expected one of {', '.join(CATEGORIES)}")
        r["index"] = int(r["index"])
    return rows


def summarise(audit: list[dict], n_errors: int, n_examples: int, target: float) -> dict:
    """Category shares of the audited errors, and what they imply for the whole split."""
    n = len(audit)
    share = {c: sum(r["category"] == c for r in audit) / n for c in CATEGORIES}
    accuracy = 1 - n_errors / n_examples
    fixable = n_errors * share["model"]
    need = (target - accuracy) * n_examples  # errors to fix to reach the target
    return {
        "examples": n_examples, "errors": n_errors, "accuracy": round(accuracy, 4), "audited": n,
        "share": {c: round(v, 3) for c, v in share.items()},
        "counts": {c: sum(r["category"] == c for r in audit) for c in CATEGORIES},
        "ceiling_fixing_model_errors": round(accuracy + fixable / n_examples, 4),
        "target": target,
        "model_errors_to_fix_for_target": round(need / fixable, 3) if fixable else None,
    }


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="print a seeded sample of RUN_DIR's errors as TSV")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=60)
    s.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("summary", help="summarise an audited TSV against RUN_DIR's errors (JSON)")
    m.add_argument("audit")
    m.add_argument("run_dir")
    m.add_argument("--target", type=float, default=0.887)
    for p in (s, m):
        p.add_argument("--data", default=None, help="labelled set (default: the run's own)")
        p.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    rows, n_examples, by_length = errors(args.run_dir, args.data, args.split)
    if args.cmd == "sample":
        write_tsv(sample(rows, args.n, args.seed), sys.stdout)
        return None
    audit = read_audit(args.audit)
    wrong = {r["index"] for r in rows}
    stale = [r["index"] for r in audit if r["index"] not in wrong]
    if stale:
        from lmforge.errors import UserError

        raise UserError(f"{args.audit}: rows {stale[:5]} are not errors of {args.run_dir} on {args.split}: "
                        "audit a sample of this run's errors")
    out = {"benchmark": "error-audit", "run_dir": args.run_dir, "split": args.split,
           **summarise(audit, len(rows), n_examples, args.target), "accuracy_by_length": by_length}
    print(json.dumps(out, ensure_ascii=False))
    return out


if __name__ == "__main__":
    from lmforge.errors import UserError

    try:
        main()
    except UserError as e:
        print(f"error_audit: {e}", file=sys.stderr)
        sys.exit(2)
