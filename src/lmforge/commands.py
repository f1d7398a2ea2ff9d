"""The bodies of the CLI's verbs: each ``cmd_<verb>(args)`` calls the Python API with the parsed arguments and
prints the result. ``lmforge.__main__`` builds the parser and maps the verbs to these; neither checks more than
the parser does (the API checks its arguments, so the rules hold for Python callers too)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmforge.errors import UserError

LIMIT = "limit:"  # dest prefix of serve's limit flags: cmd_serve gives them to Limits(...) by field name


def cmd_data_list(args) -> None:
    from lmforge.data.registry import list_datasets

    for d in list_datasets():
        print(f"{d['name']:<16} {d.get('language', ''):<5} {d.get('description', '')}")


def cmd_data_get(args) -> None:
    from lmforge.data.registry import get

    if args.name == "digits":  # scikit-learn's, prepared locally (lmforge.data.images)
        from lmforge.data.images import registered_dir

        path = registered_dir("digits")
    else:
        path = get(args.name)
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    unit = {"labelled": "examples", "pairs": "pairs"}.get(meta.get("content"), "lines")
    splits = [f"{meta[s]['images']:,} {s} images" if "images" in meta[s] else
              f"{meta[s]['lines']:,} {s} {unit} ({meta[s]['chars']:,} chars)" for s in ("train", "val", "test") if s in meta]
    print(f"{args.name}: {', '.join(splits)} in {path}" if splits else str(path))


def cmd_tokenizer_train(args) -> None:
    from lmforge.tools.train_tokenizer import train_from_spec

    path = train_from_spec(args.data, args.vocab_size, args.out)
    print(path)


def cmd_pretrain(args) -> None:
    from lmforge.recipes.pretrain import pretrain

    s = pretrain(args.config, args.overrides, out=args.out, resume=args.resume)
    if s.pop("is_main", True):
        print(
            f"{s['run_dir']}: {s['steps']} steps, {s['tokens']:,} tokens, {s['seconds']:.1f} s, {s['params']:,} params; "
            f"val loss {s['val_loss']:.4f}" + (f", val perplexity {s['val_ppl']:.2f}" if s.get("val_ppl") else "")
            if s.get("val_loss") is not None
            else f"{s['run_dir']}: {s['steps']} steps"
        )


def cmd_finetune(args) -> None:
    from lmforge.recipes.finetune import finetune

    overrides = dict(args.overrides)
    if args.base:
        overrides["finetune.base"] = args.base
    if args.base_hf:
        overrides["finetune.base_hf"] = args.base_hf
    s = finetune(args.config, overrides, out=args.out, resume=args.resume)
    if s.pop("is_main", True):
        print(f"{s['run_dir']}: {s['steps']} steps, {s['seconds']:.1f} s; val loss {s['val_loss']:.4f}, "
              f"val accuracy {s['val_accuracy']:.4f}")


def cmd_train(args) -> None:
    from lmforge.recipes.train import train

    s = train(args.config, args.overrides, out=args.out, resume=args.resume)
    if not s.pop("is_main", True):
        return
    figures = [f"val loss {s['val_loss']:.4f}"] if s.get("val_loss") is not None else []
    figures += [f"val {k[4:]} {v:.4f}" for k, v in s.items() if k in ("val_accuracy", "val_bleu", "val_chrf") and v is not None]
    print(f"{s['run_dir']}: {s['steps']} steps, {s['seconds']:.1f} s" + ("; " + ", ".join(figures) if figures else ""))


def cmd_translate(args) -> None:
    from lmforge.tools.translate import translate_run

    lines = translate_run(args.run_dir, args.texts, input_file=args.input, output_file=args.output, beam=args.beam,
                          device=args.device, best=args.best)
    if args.output is None:
        for line in lines:
            print(line)


def cmd_generate(args) -> None:
    from lmforge.tools.generate import complete

    pieces = complete(  # checks the arguments and loads the run: nothing is written before that passed
        args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device,
    )
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")


def cmd_evaluate(args) -> None:
    from lmforge.tools.evaluate import evaluate_run

    if args.json is not None and not args.json.strip():  # checked before the evaluation, not silently skipped after it
        raise UserError(f"--json: expected a file name to write the result to, got {args.json!r}")
    result = evaluate_run(args.run_dir, data=args.data, split=args.split, max_batches=args.max_batches,
                          text_column=args.text_column, label_column=args.label_column, compile=args.compile,
                          source_column=args.source_column, target_column=args.target_column, beam=args.beam,
                          best=args.best, plot=str(Path(args.run_dir) / "plots") if args.plot is True else args.plot)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.json is not None:
        from lmforge.runs.files import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    print(text)


def cmd_explain(args) -> None:
    from lmforge.tools.explain import explain, faithfulness_run

    for flag in ("out", "json"):
        value = getattr(args, flag)
        if value is not None and not str(value).strip():
            raise UserError(f"--{flag}: expected a file name, got {value!r}")
    if args.faithfulness is not None or args.split is not None:
        if args.faithfulness is None or args.split is None or args.texts or args.out or args.target:
            raise UserError("explain: --faithfulness N goes with --split SPLIT (and --json OUT), without texts, --out "
                            "or --target")
        methods = [m.strip() for m in args.method.split(",")] if args.method else None
        result = faithfulness_run(args.run_dir, args.split, args.faithfulness, methods, args.data, args.json, args.seed)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    rows = explain(args.run_dir, args.texts, args.method or "ig", args.target, args.out, args.json)
    for r in rows:
        if "file" in r:  # an image
            print(f"{r['predicted']}\t{r['probabilities'][r['predicted']]:.4f}\t{r['method']}: {r['file']}")
            continue
        top = sorted((t for t in r["tokens"] if not t["special"]), key=lambda t: -t["score"])[:5]
        shown = ", ".join(f"{t['piece'].strip() or repr(t['piece'])} {t['score']:+.3f}" for t in top)
        print(f"{r['predicted']}\t{r['probabilities'][r['predicted']]:.4f}\t{r['method']}: {shown}")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)


def cmd_predict(args) -> None:
    from lmforge.tools.evaluate import predict_texts

    for label, prob, text in predict_texts(args.run_dir, args.texts, args.input, args.text_column, tsv_quoting=args.tsv_quoting):
        one_line = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")  # one result a line, 3 tab fields
        print(f"{label}\t{prob:.4f}\t{one_line}")


def cmd_export(args) -> None:
    from lmforge.tools.export import export_run

    s = export_run(args.run_dir, args.format, args.out)
    checked = (f"batch x seq {', '.join(f'{b}x{t}' for b, t in s['shapes_checked'])}" if "shapes_checked" in s
               else f"batch {', '.join(map(str, s['batches_checked']))}")
    print(f"{args.out}: {s['model']} -> {s.get('file') or s['hf_class']}; max |logit diff| vs PyTorch "
          f"{s['max_abs_diff']:.2g} ({s['runtime']}; {checked})")


def cmd_compress(args) -> None:
    from lmforge.tools.compress import run
    from lmforge.tools.compress.common import summary_line

    r = run(args.method, args.run_dir, out=args.out, teacher=args.teacher, student_config=args.student_config,
            overrides=args.overrides, sparsity=args.sparsity, structured=args.structured,
            recover_steps=args.recover_steps, recover_lr=args.recover_lr, gradual=args.gradual,
            recover_distill=args.recover_distill, data=args.data, split=args.split, max_batches=args.max_batches,
            repeats=args.repeats)
    print(summary_line(r))


def cmd_report(args) -> None:
    if args.runs[0] == "compress":
        from lmforge.tools.compress.report import plot_compression

        if len(args.runs) < 2:
            raise UserError("report compress: give at least one RUN (a run dir made by `lmforge compress`)")
        print(plot_compression(args.runs[1:], args.out, batch=args.batch))
        return
    from lmforge.tools.report_page import report

    if args.errors < 0:
        raise UserError(f"--errors {args.errors}: expected 0 or more")
    print(report(args.runs, args.out, split=args.split, errors=args.errors))


def cmd_serve(args) -> None:
    import os

    from lmforge.tools.serve import serve
    from lmforge.tools.serve.limits import Limits

    limits = Limits(**{k[len(LIMIT):]: v for k, v in vars(args).items() if k.startswith(LIMIT)})
    # an empty --api-key (or LMFORGE_API_KEY set but empty) is an error in serve(), never "no key"
    source = "--api-key" if args.api_key is not None else "LMFORGE_API_KEY"
    key = args.api_key if args.api_key is not None else os.environ.get("LMFORGE_API_KEY")
    serve(args.run_dirs, host=args.host, port=args.port, api_key=key, api_key_source=source,
          limits=limits, batching=not args.no_batching, batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
          workers=args.workers, threads=args.threads, log_level=args.log_level)
