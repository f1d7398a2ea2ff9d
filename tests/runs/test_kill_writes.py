"""SIGKILL a real `lmforge pretrain` at every kind of write it makes, inside the write's window, then resume:
the same final weights as an uninterrupted run, bit for bit, and no temp file left behind.

The child is the real CLI with one hook: ``os.replace`` (how every atomic write lands) or ``os.write`` (how a
metrics line is appended) kills the process at the N-th call for a given file, after the temp file is fully
written but before it is renamed, or half-way through a metrics line. That is the moment a kill (an
out-of-memory killer, a pre-empted node) does the most harm; the atomic write must make it harmless.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import REPO, env1, lmforge, make_corpus, pretrain_argv
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

CHILD = r"""
import os, signal, sys
target, nth, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = [0]

def hit(path):
    if os.path.basename(str(path)) != target:
        return False
    seen[0] += 1
    return seen[0] == nth

real_replace, real_write = os.replace, os.write

def replace(src, dst, *a, **k):
    if mode == "replace" and hit(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written and fsync'ed, the target not yet replaced
    return real_replace(src, dst, *a, **k)

def write(fd, data):
    if mode == "append":
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if hit(path):
            real_write(fd, data[: len(data) // 2])  # half a metrics line reaches the file
            os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

os.replace, os.write = replace, write
from lmforge.__main__ import main
sys.exit(main(sys.argv[4:]))
"""

# (file, which of its writes, how): every kind of file a pretraining run writes
WRITES = {
    "config": ("config.yaml", 1, "replace"),
    "tokenizer": ("tokenizer.json", 1, "replace"),
    "shard-train": ("train.bin", 1, "replace"),
    "shard-meta": ("meta.json", 1, "replace"),
    "state": ("train_state.safetensors", 2, "replace"),
    "weights": ("model.safetensors", 2, "replace"),
    "metrics-append": ("metrics.jsonl", 4, "append"),
    "config-of-resume": ("config.yaml", 3, "replace"),  # the resume below records its config: killed there too
}


def args(corpus, out):
    return pretrain_argv(corpus, out, "--train.max_steps=60", "--train.seed=3", "--train.save_interval=20",
                         "--train.eval_interval=30", "--train.log_interval=10", "--model.dropout=0.1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("killw")
    corpus = make_corpus(tmp / "corpus.txt", lines=300)
    lmforge(*args(corpus, tmp / "ref"))
    return tmp, corpus, load_file(tmp / "ref" / "model.safetensors")


def killed(argv, target, nth, mode):
    p = subprocess.run([sys.executable, "-c", CHILD, target, str(nth), mode, *argv], env=env1(), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, f"the child was not killed at {target} #{nth}: exit {p.returncode}\n{p.stderr[-2000:]}"


def temps(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp"))


@pytest.mark.parametrize("kind", list(WRITES))
def test_sigkill_at_a_write_then_resume_gives_the_same_weights(reference, kind):
    tmp, corpus, ref = reference
    out = tmp / kind
    target, nth, mode = WRITES[kind]
    if kind == "config-of-resume":  # stopped by a save_interval kill, then killed again while the resume records its config
        killed(args(corpus, out), "train_state.safetensors", 2, "replace")
        killed(["pretrain", "--resume", str(out)], target, 1, mode)
    else:
        killed(args(corpus, out), target, nth, mode)
    if mode == "replace":
        assert temps(out), "the kill came before the temp file was written"  # the window was hit
    if (out / "config.yaml").exists():
        lmforge("pretrain", "--resume", str(out))
    else:  # killed while writing the run's first file: the same command starts it again
        lmforge(*args(corpus, out))
    assert temps(out) == []
    got = load_file(out / "model.safetensors")
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), (kind, k)
    from lmforge.runs.files import read_metrics

    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 60, steps  # no torn or repeated metrics lines
