"""Issue 14, items 9, 10 and 13: every bad number, bad text and bad label set gets its one line (exit 2),
before any work, from the CLI and from the Python API alike; errors echo a bounded amount. (Long lines:
test_long_lines.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY, env1, make_corpus, tree_digest

from lmforge.__main__ import main
from lmforge.errors import UserError


def one_line_error(capsys, argv, needle, stdout_empty=True):
    """``main(argv)`` exits 2 with exactly one stderr line, ``lmforge: error: ...`` holding ``needle``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lmforge: error: ") and needle in lines[0], (argv, err)
    assert "Traceback" not in err
    if stdout_empty:
        assert out == "", (argv, out)
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny trained GPT run (with its data/ shards) and a random-weight GPT classifier beside it."""
    from lmforge.config import FinetuneConfig, ModelConfig, RunConfig, save_config
    from lmforge.runs import files as ckpt
    from lmforge.tasks.classify import build_classifier
    from lmforge.tokenizer import Tokenizer

    tmp = tmp_path_factory.mktemp("validation")
    corpus = make_corpus(tmp / "corpus.txt")
    lm = tmp / "lm"
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--data.vocab_size=300",
                 "--model.block_size=32", "--train.max_steps=2", "--train.eval_batches=1", "--out", str(lm)]) == 0
    tok = Tokenizer.load(lm / "tokenizer.json")
    clf = tmp / "clf"
    clf.mkdir()
    ft = FinetuneConfig(labels="neg,pos", max_length=16)
    cfg = RunConfig(model=ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32), finetune=ft)
    torch.manual_seed(0)
    ckpt.atomic_write_text(clf / ckpt.CONFIG, save_config(cfg))
    tok.save(clf / ckpt.TOKENIZER)
    ckpt.save_tensors(clf / ckpt.WEIGHTS, build_classifier(cfg.model, ft, 2, tok.pad_id).state_dict())
    return {"corpus": corpus, "lm": lm, "clf": clf, "tmp": tmp}


# ----------------------------------------------------------------------------- item 9: config numbers
PRETRAIN_CASES = [
    ("--train.lr=nan", "train.lr: expected a finite number > 0, got nan"),
    ("--train.lr=inf", "train.lr: expected a finite number > 0, got inf"),
    ("--train.lr=-inf", "train.lr: expected a finite number > 0, got -inf"),
    ("--train.beta1=1.5", "train.beta1: expected a beta in [0, 1), got 1.5"),
    ("--train.beta2=nan", "train.beta2: expected a beta in [0, 1), got nan"),
    ("--train.weight_decay=nan", "train.weight_decay: expected a finite number >= 0, got nan"),
    ("--train.weight_decay=-0.1", "train.weight_decay: expected a finite number >= 0, got -0.1"),
    ("--train.grad_clip=inf", "train.grad_clip: expected a finite number >= 0, got inf"),
    ("--train.momentum=1", "train.momentum: expected a momentum in [0, 1), got 1.0"),
    ("--train.muon_momentum=nan", "train.muon_momentum: expected a momentum in [0, 1), got nan"),
    ("--train.muon_lr_scale=inf", "train.muon_lr_scale: expected a finite number > 0, got inf"),
    ("--train.gamma=nan", "train.gamma: expected a factor in (0, 1], got nan"),
    ("--train.gamma=0", "train.gamma: expected a factor in (0, 1], got 0.0"),
    ("--train.min_lr_ratio=nan", "train.min_lr_ratio: expected a fraction in [0, 1], got nan"),
    ("--train.ema_decay=nan", "train.ema_decay: expected a decay in [0, 1), got nan"),
    ("--train.seed=-1", "train.seed: expected an integer in [0, 4294967295], got -1"),
    (f"--train.seed={2**64}", "train.seed: expected an integer in [0, 4294967295]"),
    ("--train.num_threads=-1", "train.num_threads: expected an integer in [0, 4096], got -1"),
    ("--train.max_steps=0", "train.max_steps: expected an integer >= 1, got 0"),
    ("--train.warmup_steps=-1", "train.warmup_steps: expected an integer >= 0, got -1"),
    ("--train.grad_accum=3", "train.batch_size (16) must be divisible by train.grad_accum (3)"),
    ("--train.grad_accum=32", "train.batch_size (16) must be divisible by train.grad_accum (32)"),
    ("--model.vocab_size=3", "model.vocab_size: expected 0 (take the tokenizer's) or at least 261"),
    ("--model.vocab_size=-1", "model.vocab_size: expected an integer >= 0, got -1"),
    ("--model.dropout=nan", "model.dropout: expected a probability in [0, 1), got nan"),
    ("--model.rope_theta=inf", "model.rope_theta: expected a finite number > 0, got inf"),
    ("--model.norm_eps=nan", "model.norm_eps: expected a number in (0, 1), got nan"),
    ("--model.norm_eps=0", "model.norm_eps: expected a number in (0, 1), got 0.0"),
    ("--model.type_vocab_size=0", "model.type_vocab_size: expected an integer >= 1, got 0"),
    ("--model.n_layer=0", "model.n_layer: expected an integer >= 1, got 0"),
    (f"--model.n_embd={2**40}", "model.n_embd: expected an integer in [1, 2147483647], got 1099511627776"),
    ("--data.val_fraction=nan", "data.val_fraction: expected a fraction in (0, 1), got nan"),
    ("--data.mask_prob=inf", "data.mask_prob: expected a fraction in (0, 1), got inf"),
    (f"--data.vocab_size={2**40}", "data.vocab_size: expected an integer in [261, 4294967295]"),
]


@pytest.mark.parametrize("option, needle", PRETRAIN_CASES, ids=[c[0] for c in PRETRAIN_CASES])
def test_pretrain_bad_numbers_fail_at_config_time(runs, tmp_path, capsys, option, needle):
    out = tmp_path / "run"
    one_line_error(capsys, ["pretrain", "--config", TINY, "--data.path", str(runs["corpus"]), option, "--out", str(out)],
                   needle)
    assert not out.exists()  # nothing was written: no tokenizer trained, no half-made run dir


def test_fit_keeps_its_world_size_check():
    """The single-process batch / grad_accum check moved to the config; fit() still checks processes x accum."""
    from lmforge.config import TrainConfig
    from lmforge.training.distributed import DistInfo
    from lmforge.training.loop import fit

    cfg = TrainConfig(batch_size=8, grad_accum=2, device="cpu")
    with pytest.raises(UserError, match=r"processes \(3\)"):
        fit(torch.nn.Linear(2, 2), None, cfg, "/nonexistent", loss_fn=None, info=DistInfo(rank=0, world_size=3, local_rank=0))


@pytest.mark.parametrize("text, needle", [
    ("train: {lr: .nan}\n", "train.lr: expected a finite number > 0, got nan"),
    ("train: {lr: .inf}\n", "train.lr: expected a finite number > 0, got inf"),
    ("train: {beta1: 1.5}\n", "train.beta1: expected a beta in [0, 1), got 1.5"),
    ("train: {weight_decay: .nan}\n", "train.weight_decay: expected a finite number >= 0, got nan"),
    ("lora: {rank: 0}\n", "lora.rank: expected an integer >= 1, got 0"),
    ("lora: {alpha: .nan}\n", "lora.alpha: expected a finite number > 0, got nan"),
    ("lora: {dropout: 1.0}\n", "lora.dropout: expected a probability in [0, 1), got 1.0"),
    ("finetune: {layer_lr_decay: .nan}\n", "finetune.layer_lr_decay: expected a factor in (0, 1], got nan"),
    ("finetune: {head_dropout: .nan}\n", "finetune.head_dropout: expected a probability in [0, 1), got nan"),
    ("finetune: {dropout: .nan}\n", "finetune.dropout: expected a probability in [0, 1), or -1"),
    ("finetune: {max_length: 0}\n", "finetune.max_length: expected an integer >= 1, got 0"),
    ("finetune: {labels: pos}\n", "finetune.labels: expected at least two class names"),
    ("compress: {sparsity: .nan}\n", "compress.sparsity: expected a fraction in [0, 1), got nan"),
    ("distill: {temperature: .nan}\n", "distill.temperature: expected a finite number > 0, got nan"),
    ("distill: {alpha: .inf}\n", "distill.alpha: expected a weight in [0, 1], got inf"),
    ("distill: {hidden_weight: -1.0}\n", "distill.hidden_weight: expected a finite number >= 0, got -1.0"),
    ("train: {lr: 1" + "0" * 400 + "}\n", "train.lr: expected a finite number"),
    ("train: {max_steps: 1" + "0" * 5000 + "}\n", "invalid YAML"),
])
def test_recipe_numbers_are_checked_where_declared(tmp_path, text, needle):
    from lmforge.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert needle in str(e.value) and str(p) in str(e.value) and len(str(e.value)) < 500, str(e.value)[:300]


def test_every_numeric_field_refuses_nan_and_inf():
    """ALL int / float fields of all sections: nan and inf are refused, naming the field."""
    from lmforge.config import SECTIONS, RunConfig, _field_types, apply_overrides

    n = 0
    for section, cls in SECTIONS.items():
        for name, typ in _field_types(cls).items():
            if typ not in (int, float):
                continue
            for bad in ("nan", "inf", "-inf") if typ is float else (str(-(2**70)), str(2**70)):
                with pytest.raises(UserError, match=rf"{section}\.{name}: expected") as e:
                    apply_overrides(RunConfig(), {f"{section}.{name}": bad})
                assert "\n" not in str(e.value)
                n += 1
    assert n > 100


def test_a_yaml_alias_bomb_gives_a_short_line(tmp_path, capsys):
    levels = ['&a [' + ",".join(["lol"] * 9) + ']'] + [f"&{c} [" + ",".join([f"*{p}"] * 9) + "]"
                                                       for p, c in zip("abcdefg", "bcdefgh")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("train:\n  lr: [" + ", ".join(levels) + "]\n", encoding="utf-8")
    line = one_line_error(capsys, ["pretrain", "--config", str(bomb), "--out", str(tmp_path / "o")],
                          "train.lr: expected a number, got [")
    assert len(line) < 400  # was 39 MB: the value's repr is cut, never built whole


def test_error_lines_are_capped_and_one_line(tmp_path, capsys):
    from lmforge.__main__ import MAX_ERROR_CHARS

    line = one_line_error(capsys, ["pretrain", "--config", TINY, "--data.path", "x" * 100_000 + ".txt",
                                   "--out", str(tmp_path / "o")], "xxx")
    assert len(line) <= len("lmforge: error: ") + MAX_ERROR_CHARS and line.endswith("...")
    one_line_error(capsys, ["pretrain", "--config", TINY, "--data.path", "a\nb.txt", "--out", str(tmp_path / "o2")],
                   "a\\nb.txt")


# ----------------------------------------------------------------------------- item 9: CLI numbers
GENERATE_CASES = [
    (["--temperature", "nan"], "--temperature: expected a finite number >= 0, got nan"),
    (["--temperature", "inf"], "--temperature: expected a finite number >= 0, got inf"),
    (["--temperature", "-1"], "--temperature: expected a finite number >= 0, got -1.0"),
    (["--top-p", "1e-300"], "--top-p: expected a number in (0, 1] of at least 1.2e-38"),
    (["--top-p", "0"], "--top-p: expected a number in (0, 1], got 0.0"),
    (["--top-p", "nan"], "--top-p: expected a number in (0, 1], got nan"),
    (["--top-p", "1.5"], "--top-p: expected a number in (0, 1], got 1.5"),
    (["--top-k", "-1"], "--top-k: expected an integer >= 0, got -1"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 18446744073709551615], got -1"),
    (["--seed", str(2**64)], "--seed: expected an integer in [0, 18446744073709551615]"),
    (["--max-new-tokens", "0"], "--max-new-tokens: expected an integer >= 1, got 0"),
    (["--max-new-tokens", "-5"], "--max-new-tokens: expected an integer >= 1, got -5"),
]


@pytest.mark.parametrize("extra, needle", GENERATE_CASES, ids=[" ".join(c[0]) for c in GENERATE_CASES])
def test_generate_bad_numbers(runs, capsys, extra, needle):
    one_line_error(capsys, ["generate", str(runs["lm"]), "--prompt", "hi", *extra], needle)  # stdout stays empty


def test_generate_prints_the_prompt_only_after_its_checks(runs, capsys):
    one_line_error(capsys, ["generate", str(runs["tmp"] / "nowhere"), "--prompt", "hi"], "not found")  # was "hi" on stdout
    one_line_error(capsys, ["generate", str(runs["clf"]), "--prompt", "hi"], "causal language model")
    assert main(["generate", str(runs["lm"]), "--prompt", "hi", "--max-new-tokens", "3", "--seed", str(2**64 - 1)]) == 0
    assert capsys.readouterr().out.startswith("hi")


def test_tiny_temperatures_and_top_p_sample_greedily_instead_of_crashing(runs, capsys):
    """1e-300 passes ">= 0" but overflows float32 when the logits are divided by it (nan probabilities)."""
    from lmforge.tools.generate import sample_next

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    for t, kw in ((1e-300, {}), (1e-38, {"top_k": 2}), (1e-39, {"top_p": 0.5}), (1e-7, {"top_p": 1e-30})):
        assert sample_next(logits, t, **kw).tolist() == [1, 0]
    greedy = ["generate", str(runs["lm"]), "--prompt", "the", "--max-new-tokens", "4"]
    assert main([*greedy, "--temperature", "0"]) == 0
    expected = capsys.readouterr().out
    assert main([*greedy, "--temperature", "1e-300", "--top-k", "5"]) == 0
    assert capsys.readouterr().out == expected


def test_python_api_checks_name_the_flags(runs):
    from lmforge.models import build
    from lmforge.tools.compress import compress
    from lmforge.tools.evaluate import evaluate_run, predict_texts
    from lmforge.tools.generate import complete, generate

    for kw, needle in (({"temperature": math.nan}, "--temperature"), ({"top_p": 1e-300}, "--top-p"),
                       ({"seed": -1}, "--seed"), ({"max_new_tokens": 0}, "--max-new-tokens")):
        with pytest.raises(UserError, match=needle):
            complete(str(runs["lm"]), "hi", **kw)
    with pytest.raises(UserError, match="--prompt: not valid UTF-8"):
        complete(str(runs["lm"]), "\ud800")
    with pytest.raises(UserError, match="--max-batches: expected an integer >= 1, got 0"):
        evaluate_run(runs["lm"], max_batches=0)
    with pytest.raises(UserError, match="--recover-steps: expected an integer >= 0, got -1"):
        compress(runs["lm"], "prune", runs["tmp"] / "o", sparsity=0.5, recover_steps=-1)
    with pytest.raises(UserError, match="text 1 of 1: not valid UTF-8"):
        predict_texts(runs["clf"], ["\ud800"])
    model = build(__import__("lmforge.config", fromlist=["ModelConfig"]).ModelConfig(
        vocab_size=20, n_layer=1, n_head=1, n_embd=8, block_size=8))
    for kw in ({"temperature": math.nan}, {"top_p": 1e-300}, {"seed": 2**64}, {"temperature": math.inf}):
        with pytest.raises(ValueError):
            generate(model, [1], 3, **kw)


def test_evaluate_max_batches(runs, capsys):
    before = tree_digest(runs["lm"])
    for n in ("-1", "0"):
        one_line_error(capsys, ["evaluate", str(runs["lm"]), "--max-batches", n], f"--max-batches: expected an integer >= 1, got {n}")
    assert tree_digest(runs["lm"]) == before


@pytest.mark.parametrize("extra, needle", [
    (["--method", "prune", "--sparsity", "0.5", "--recover-steps", "-1"], "--recover-steps: expected an integer >= 0, got -1"),
    (["--method", "prune", "--sparsity", "nan"], "--sparsity: expected a fraction strictly between 0 and 1"),
    (["--method", "prune", "--sparsity", "inf"], "--sparsity: expected a fraction strictly between 0 and 1"),
    (["--method", "prune", "--sparsity", "0.5", "--recover-steps", "2", "--recover-lr", "nan"],
     "--recover-lr: expected a finite number > 0, got nan"),
    (["--method", "prune", "--sparsity", "0.5", "--recover-steps", "2", "--recover-lr", "0"],
     "--recover-lr: expected a finite number > 0, got 0.0"),
    (["--method", "int8", "--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
    (["--method", "int8", "--max-batches", "0"], "--max-batches: expected an integer >= 1, got 0"),
])
def test_compress_bad_numbers(runs, capsys, extra, needle):
    out = runs["tmp"] / "compressed"
    one_line_error(capsys, ["compress", str(runs["lm"]), "--out", str(out), *extra], needle)
    assert not out.exists() and not list(runs["tmp"].glob(".compressed*"))


def test_distill_bad_numbers_come_first(runs, capsys, tmp_path):
    for extra, needle in ((["--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
                          (["--max-batches", "-2"], "--max-batches: expected an integer >= 1, got -2")):
        one_line_error(capsys, ["compress", "--method", "distill", "--teacher", str(runs["lm"]), "--student-config", TINY,
                                "--out", str(tmp_path / "s"), *extra], needle)


def test_tokenizer_vocab_size_is_checked_before_the_data_is_read(tmp_path, capsys):
    for n in ("3", str(2**40)):
        one_line_error(capsys, ["tokenizer", "train", "--data", str(tmp_path / "missing.txt"), "--vocab-size", n,
                                "--out", str(tmp_path / "t")], f"--vocab-size: expected an integer >= 261 (256 bytes + 5 special tokens), got {n}")
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------- item 10: invalid UTF-8 in argv
BAD_ARGV = "\udcff\udcfe"  # what Python makes of the bytes ff fe in sys.argv (surrogateescape)


def test_invalid_utf8_prompt(runs, capsys):
    one_line_error(capsys, ["generate", str(runs["lm"]), "--prompt", BAD_ARGV],
                   "--prompt: not valid UTF-8 (byte 0xff at character 0)")
    one_line_error(capsys, ["generate", str(runs["lm"]), "--prompt", "ok \ud800"],
                   "--prompt: not valid UTF-8 (a lone surrogate U+D800 at character 3)")


def test_invalid_utf8_predict_texts(runs, capsys, tmp_path):
    one_line_error(capsys, ["predict", str(runs["clf"]), "fine", BAD_ARGV], "text 2 of 2: not valid UTF-8 (byte 0xff")
    one_line_error(capsys, ["predict", str(runs["clf"]), "\ud800"], "text 1 of 1: not valid UTF-8 (a lone surrogate U+D800")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"text": "x\\ud800"}\n', encoding="utf-8")
    one_line_error(capsys, ["predict", str(runs["clf"]), "--input", str(jsonl)], f"{jsonl}:2: 'text': not valid UTF-8")


def test_invalid_utf8_prompt_in_a_real_process(runs):
    """The real thing: bytes ff fe as an argv item (no Python string can carry them to a child)."""
    p = subprocess.run([sys.executable.encode(), b"-m", b"lmforge", b"generate", str(runs["lm"]).encode(), b"--prompt",
                        b"\xff\xfe"], capture_output=True, env=env1(), cwd=REPO, timeout=120)
    err = p.stderr.decode("utf-8", "replace").splitlines()
    assert p.returncode == 2 and len(err) == 1 and "--prompt: not valid UTF-8" in err[0] and p.stdout == b"", p.stderr


# ----------------------------------------------------------------------------- item 13
def test_a_one_label_training_set_is_refused(tmp_path, capsys):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},pos\n" for i in range(40)), encoding="utf-8")
    out = tmp_path / "run"
    line = one_line_error(capsys, ["finetune", "--finetune.data", str(data), "--model.name=lstm", "--model.n_layer=1",
                                   "--model.n_embd=16", "--train.max_steps=2", "--data.vocab_size=300", "--out", str(out)],
                          "only the label 'pos'")
    assert str(data) in line and "at least two" in line
    assert not out.exists() or not any(out.iterdir())


def test_interrupted_is_said_once(runs, tmp_path, capsys, monkeypatch):
    from lmforge.data import batches as pt

    real = pt.LMBatches.train_batch

    def interrupted(self, step, index, size):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, step, index, size)

    monkeypatch.setattr(pt.LMBatches, "train_batch", interrupted)
    out = tmp_path / "run"
    code = main(["pretrain", "--config", TINY, "--data.path", str(runs["corpus"]), "--data.vocab_size=300",
                 "--model.block_size=32", "--train.save_interval=1", "--out", str(out)])
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert code == 130 and len(said) == 1 and "the last checkpoint (step 2)" in said[0], err


def test_interrupted_outside_training_is_still_said(monkeypatch, capsys):
    import lmforge.tools.generate

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lmforge.tools.generate, "complete", stop)
    assert main(["generate", "somewhere", "--prompt", "x"]) == 130
    assert capsys.readouterr().err.splitlines() == ["lmforge: interrupted"]


def test_cli_cases_leave_runs_untouched(runs, capsys):
    """The LM and classifier run dirs are byte-identical after every bad input above was thrown at them."""
    lm, clf = tree_digest(runs["lm"]), tree_digest(runs["clf"])
    for argv, needle in ((["generate", str(runs["lm"]), "--prompt", "x", "--temperature", "nan"], "--temperature"),
                         (["predict", str(runs["clf"]), BAD_ARGV], "not valid UTF-8"),
                         (["evaluate", str(runs["clf"]), "--max-batches", "0"], "--max-batches")):
        one_line_error(capsys, argv, needle)
    assert tree_digest(runs["lm"]) == lm and tree_digest(runs["clf"]) == clf
    assert json.loads((runs["lm"] / "data" / "meta.json").read_text())["train_tokens"] > 0


def test_an_empty_data_name_is_never_the_current_folder(runs, tmp_path, capsys, monkeypatch):
    """Path("") is ".": `--data ""` trained a tokenizer on whatever .txt files the current folder held."""
    from lmforge.data.labelled import load_labelled
    from lmforge.data.text import load_text
    from lmforge.tools.evaluate import evaluate_run
    from lmforge.tools.train_tokenizer import train_from_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("private notes\n" * 50, encoding="utf-8")
    one_line_error(capsys, ["tokenizer", "train", "--data", "", "--vocab-size", "300", "--out", str(tmp_path / "t")],
                   "--data")
    before = tree_digest(runs["lm"])
    one_line_error(capsys, ["evaluate", str(runs["lm"]), "--data", ""], "--data")
    one_line_error(capsys, ["evaluate", str(runs["lm"]), "--json", ""], "--json")
    with pytest.raises(UserError, match="--data: expected a data set name"):  # the Python API too
        train_from_spec("", 300, tmp_path / "t")
    with pytest.raises(UserError, match="--data: expected a data set name"):
        evaluate_run(runs["lm"], data=" ")
    with pytest.raises(UserError, match="data.path '': expected a data set name"):
        load_text("")
    with pytest.raises(UserError, match="finetune.data '': expected a labelled data set name"):
        load_labelled("")
    assert tree_digest(runs["lm"]) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
