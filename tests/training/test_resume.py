"""Kill a real `lmforge pretrain` process with SIGKILL, resume it, and get the same weights bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, env1, lmforge, make_corpus, pretrain_argv
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def args(corpus, out):
    return pretrain_argv(corpus, out, "--train.max_steps=200", "--train.seed=7", "--train.save_interval=25",
                         "--model.dropout=0.1")


def kill_when(out, predicate, timeout=120.0):
    """Start a pretraining child and SIGKILL it as soon as ``predicate(out)`` holds."""
    p = subprocess.Popen([sys.executable, "-m", "lmforge", *args(CORPUS, out)], env=env1(), cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and not predicate(out):
        assert time.time() - t0 < timeout, "child never reached the kill point"
        time.sleep(0.01)
    assert p.poll() is None, "child finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def step_of(out):
    from lmforge.runs.files import read_metrics

    steps = [r["step"] for r in read_metrics(out) if r.get("split") == "train"]
    return steps[-1] if steps else 0


CORPUS = None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    global CORPUS
    tmp = tmp_path_factory.mktemp("resume")
    CORPUS = make_corpus(tmp / "corpus.txt", lines=600)
    lmforge(*args(CORPUS, tmp / "ref"))
    return tmp, load_file(tmp / "ref" / "model.safetensors")


@pytest.mark.parametrize("where", ["mid-training", "between-checkpoints", "before-training"])
def test_sigkill_then_resume_is_bit_exact(reference, where):
    tmp, ref = reference
    out = tmp / where
    if where == "mid-training":
        kill_when(out, lambda d: step_of(d) >= 45)
    elif where == "between-checkpoints":
        kill_when(out, lambda d: step_of(d) >= 161)  # last checkpoint: step 150
    else:  # killed while the tokenizer / token shards are being made, or just after
        kill_when(out, lambda d: (d / "config.yaml").exists())
    lmforge("pretrain", "--resume", str(out))
    got = load_file(out / "model.safetensors")
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_finishes_the_step_writes_a_checkpoint_and_resumes_bit_exact(reference, sig):
    """The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's) stops a run after its current step with a
    checkpoint there (not only at the last save_interval), exit 128 + signal; resuming from it gives the
    uninterrupted run's weights bit for bit."""
    from lmforge.runs.files import load_train_state

    tmp, ref = reference
    out = tmp / f"stopped-{sig.name}"
    argv = [*args(CORPUS, out), "--train.save_interval=1000"]  # no periodic checkpoint before the end (step 200)
    p = subprocess.Popen([sys.executable, "-m", "lmforge", *argv], env=env1(), cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if pytest ignores it
    t0 = time.time()
    while p.poll() is None and step_of(out) < 45:
        assert time.time() - t0 < 120, "child never reached step 45"
        time.sleep(0.01)
    assert p.poll() is None, "child finished before it could be interrupted"
    os.kill(p.pid, sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    step = load_train_state(out)["meta"]["step"]
    assert 45 <= step < 200, step  # written on the way out, at the step it stopped after
    assert "stopping after this step" in err and f"the last checkpoint (step {step})" in err and "Traceback" not in err
    lmforge("pretrain", "--resume", str(out))
    got = load_file(out / "model.safetensors")
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
