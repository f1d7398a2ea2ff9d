"""Shared test helpers: the tiny configs, generated corpora and labelled sets every area uses, and
subprocess runners for the CLI. Fixtures built from them live in the conftest.py of each test folder."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "gpt-tiny.yaml")  # the repo's tiny GPT recipe (1 layer, 2 heads, 32 wide)

# The tiny model shapes the unit tests build: 2 layers, 2 heads, 32 wide. Family defaults on top.
TINY_MODEL = dict(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
TINY_FAMILY = {"gpt": {}, "bert": dict(norm_eps=1e-12), "electra": dict(vocab_size=300, block_size=32, norm_eps=1e-12)}

WORDS = ("the king and queen walk to the castle at night while the people sing of bread and rain "
         "春天 来了 我们 一起 去 北京 看 花").split()


def make_corpus(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A ~25 KB mixed English / Chinese text with learnable structure (a few fixed phrases)."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        n = rng.randint(4, 12)
        words = [WORDS[(i + j * 3) % len(WORDS)] if rng.random() < 0.7 else rng.choice(WORDS) for j in range(n)]
        out.append(" ".join(words) + ("。" if i % 3 == 0 else "."))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def tiny_config(name: str = "gpt", **kw):
    """A tiny :class:`lmforge.config.ModelConfig` of family ``name``; keyword arguments override any field."""
    from lmforge.config import ModelConfig

    return ModelConfig(**{**TINY_MODEL, "name": name, **TINY_FAMILY.get(name, {}), **kw})


def perturb(model, seed: int = 0, scale: float = 0.1) -> None:
    """Add seeded noise to every parameter (biases and norm gains too), so a wrong key map or code path cannot hide."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_labelled(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A two-class .tsv: positive iff the sentence mentions 'bread' or 'sing', learnable from a few tokens."""
    rng = random.Random(seed)
    words = "the king and queen walk to the castle at night while people rain".split()
    rows = ["text\tlabel"]
    for i in range(n):
        ws = [rng.choice(words) for _ in range(rng.randint(4, 9))]
        pos = i % 2 == 0
        if pos:
            ws.insert(rng.randint(0, len(ws)), rng.choice(["bread", "sing"]))
        rows.append(" ".join(ws) + f"\t{'positive' if pos else 'negative'}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


LEXICON = {"我": "I", "你": "you", "他": "he", "喜欢": "like", "看": "see", "吃": "eat", "猫": "cats", "狗": "dogs",
           "书": "books", "米饭": "rice", "今天": "today", "明天": "tomorrow", "北京": "Beijing", "去": "go to"}
RECIPE = """task: translate
model: {name: %(name)s, n_layer: 1, decoder_layers: 1, n_head: 2, n_embd: 32, block_size: 32}
data: {vocab_size: 300}
translate: {data: %(data)s, source_column: zh, target_column: en, eval_sentences: 16, beam: 2, batch_tokens: %(bt)d}
train: {max_steps: %(steps)d, batch_size: 16, lr: 1.0e-2, warmup_steps: 5, schedule: inverse_sqrt, eval_interval: 20,
        save_interval: 10, log_interval: 5, keep_best: bleu}
"""


def make_pairs(path: Path, n: int = 300, seed: int = 0) -> Path:
    """zh<TAB>en pairs: word-for-word translations of random 2-5 word sentences (learnable in a few steps)."""
    rng = random.Random(seed)
    words = list(LEXICON)
    rows = ["zh\ten"]
    for _ in range(n):
        ws = [rng.choice(words) for _ in range(rng.randint(2, 5))]
        rows.append("".join(ws) + "。\t" + " ".join(LEXICON[w] for w in ws) + " .")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def translation_recipe(folder, data, name="seq2seq", steps=40, bt=0) -> str:
    """A tiny translation recipe file (task translate, 1 + 1 blocks, width 32) on the pair file ``data``."""
    path = folder / f"{name}-{steps}-{bt}.yaml"
    path.write_text(RECIPE % {"name": name, "data": data, "steps": steps, "bt": bt}, encoding="utf-8")
    return str(path)


def pretrain_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    """``lmforge pretrain`` of the tiny GPT recipe on ``corpus`` into ``out``, one thread; ``extra`` flags last."""
    return ["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.num_threads=1", "--out", str(out), *extra]


def env1() -> dict:
    """Environment for child processes: one thread, no tokenizer parallelism, same cache."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def lmforge(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m lmforge ARGS`` in a child process."""
    p = subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True,
                       timeout=timeout, env=env1(), cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"lmforge {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (to show nothing was damaged)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_errors(main, cases: list[tuple[list[str], str]], folder: Path, capsys) -> None:
    """Each ``(argv, needle)``: ``main(argv)`` exits 2 with one stderr line holding ``needle``, and
    ``folder`` holds the same entries as before (no output, no temporary folder left behind)."""
    before = sorted(p.name for p in folder.iterdir())
    for argv, needle in cases:
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("lmforge: error: ") and needle in err[0], (argv, err)
        assert sorted(p.name for p in folder.iterdir()) == before, argv
