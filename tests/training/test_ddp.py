"""Two CPU processes under torchrun (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, env1, lmforge, make_corpus, pretrain_argv
from safetensors.torch import load_file

from lmforge.runs.files import load_train_state, read_metrics

pytestmark = pytest.mark.slow
# Same global batch, same data, same init: the only difference is the order of float additions in
# the gradient all-reduce, so the curves agree to ~1e-6 per step; 1e-4 absolute leaves room for drift.
LOSS_TOL = 1e-4


def args(corpus, out, steps=30, save_interval=10):
    return pretrain_argv(corpus, out, f"--train.max_steps={steps}", "--train.batch_size=8", "--train.log_interval=1",
                         f"--train.save_interval={save_interval}", "--train.eval_interval=10")


def torchrun(*argv, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmforge", *argv]
    p = subprocess.Popen(cmd, env=env1(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    if not wait:
        return p
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return out


def losses(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["split"], r["step"]): r["loss"] for r in recs}


def test_two_processes_match_one(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", lines=600)
    lmforge(*args(corpus, tmp_path / "single"))
    torchrun(*args(corpus, tmp_path / "ddp"))
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert a.keys() == b.keys() and len(a) == 33  # 30 train steps + 3 evaluations
    worst = max(abs(a[k] - b[k]) for k in a)
    print(f"max |loss difference| 1 vs 2 processes: {worst:.2e}")
    assert worst < LOSS_TOL, worst
    # only rank 0 wrote: one line per step, no duplicates
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 33

    # kill the 2-process run mid-way (whole process group) and resume it under torchrun again
    run = tmp_path / "ddp-killed"
    p = torchrun(*args(corpus, run), wait=False)
    t0 = time.time()
    while not (run / "train_state.safetensors").exists() or max([r["step"] for r in read_metrics(run)] or [0]) < 15:
        assert p.poll() is None and time.time() - t0 < 120
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    torchrun("pretrain", "--resume", str(run))
    ref, got = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(run / "model.safetensors")
    for k in ref:
        assert torch.equal(ref[k], got[k]), k

    # SIGTERM to torchrun (what a scheduler sends before it kills): the agent passes it to both ranks,
    # which stop after the same step with a checkpoint there; resumed under torchrun, bit-exact again
    run = tmp_path / "ddp-sigterm"
    p = torchrun(*args(corpus, run, save_interval=1000), wait=False)  # no periodic checkpoint before step 30
    t0 = time.time()
    while max([r["step"] for r in read_metrics(run)] if (run / "metrics.jsonl").exists() else [], default=0) < 12:
        assert p.poll() is None and time.time() - t0 < 120
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0, out
    step = load_train_state(run)["meta"]["step"]
    assert 12 <= step < 30, (step, out)
    assert out.count(f"the last checkpoint (step {step})") == 1, out  # rank 0 says so; both stopped there
    torchrun("pretrain", "--resume", str(run))
    got = load_file(run / "model.safetensors")
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
