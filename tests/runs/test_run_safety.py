"""No command loses a user's weights: resume refuses what it cannot continue, --out refuses folders that are
not its own, a failed resume writes nothing, stale temp files are cleaned, a damaged training state is
refused in one line, and a write that fails (read-only, not a file, a full disk) says so in one line and
leaves every saved file as it was."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, env1, make_corpus, pretrain_argv, tree_digest
from safetensors.torch import load_file, save_file

from lmforge.__main__ import main

STATE, WEIGHTS = "train_state.safetensors", "model.safetensors"


def pretrain_args(corpus, out, *extra):
    return pretrain_argv(corpus, out, "--train.max_steps=20", "--train.save_interval=10", "--train.eval_interval=0", *extra)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny run stopped at step 10 of 20 (a checkpoint there), and the corpus it was trained on."""
    tmp = tmp_path_factory.mktemp("safety")
    corpus = make_corpus(tmp / "corpus.txt")
    assert main(pretrain_args(corpus, tmp / "run", "--train.max_steps=10")) == 0
    return tmp, corpus, tmp / "run"


@pytest.fixture
def run(made, tmp_path):
    """A fresh copy of the step-10 run for one test to damage."""
    copy = tmp_path / "run"
    shutil.copytree(made[2], copy)
    return copy


def one_line(capsys, argv, needle, code=2):
    """``main(argv)`` exits ``code`` with one error line holding ``needle``, last (a progress bar may come first)."""
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("lmforge: error: ")]
    assert got == code and errors == err[-1:] and needle in err[-1] and "Traceback" not in "".join(err), (argv, got, err)
    return err[-1]


# ----------------------------------------------------------------------------- 1. resume without a state
def test_resume_refuses_weights_without_a_training_state(run, capsys):
    (run / STATE).unlink()
    before = tree_digest(run)
    line = one_line(capsys, ["pretrain", "--resume", run, "--train.max_steps=20"], "train_state.safetensors: missing")
    assert "overwrite" in line and "--out" in line
    assert tree_digest(run) == before  # the trained weights are untouched


def test_resume_refuses_a_checkpoint_without_its_tokenizer(run, capsys):
    (run / "tokenizer.json").unlink()
    before = tree_digest(run)
    one_line(capsys, ["pretrain", "--resume", run, "--train.max_steps=20"], "tokenizer.json: missing")
    assert tree_digest(run) == before


# ----------------------------------------------------------------------------- 2. --out that is not a new run
@pytest.mark.parametrize("verb", ["pretrain", "finetune"])
def test_out_refuses_a_folder_that_holds_other_files(made, tmp_path, capsys, verb):
    _, corpus, _ = made
    out = tmp_path / "mine"
    out.mkdir()
    (out / WEIGHTS).write_bytes(b"someone's weights")
    (out / "notes.txt").write_text("keep me")
    before = tree_digest(out)
    argv = (pretrain_args(corpus, out) if verb == "pretrain" else
            ["finetune", "--finetune.data", corpus, "--out", out])  # refused before the data is even read
    one_line(capsys, argv, "not empty and not an lmforge run")
    assert tree_digest(out) == before


def test_out_may_be_an_empty_folder(made, tmp_path, capsys):
    _, corpus, _ = made
    (tmp_path / "empty").mkdir()
    assert main(pretrain_args(corpus, tmp_path / "empty", "--train.max_steps=2")) == 0
    assert (tmp_path / "empty" / WEIGHTS).is_file()


# ----------------------------------------------------------------------------- 3. a failed resume writes nothing
def _rewrite_state(run, change):
    """Re-save the training state with ``change(payload)`` applied to its JSON metadata."""
    from safetensors import safe_open

    with safe_open(str(run / STATE), framework="pt") as f:
        payload = json.loads(f.metadata()["lmforge"])
    tensors = load_file(run / STATE)
    payload = change(payload)
    save_file(tensors, run / STATE, {"lmforge": payload if isinstance(payload, str) else json.dumps(payload)})


def _set(path, value):
    def change(payload):
        node = payload
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return payload
    return change


BAD_STATES = {
    "truncated": lambda run: (run / STATE).write_bytes((run / STATE).read_bytes()[:-1000]),
    "garbage": lambda run: (run / STATE).write_bytes(b"\x00" * 64),
    "empty": lambda run: (run / STATE).write_bytes(b""),
    "no-meta": lambda run: _rewrite_state(run, _set(["meta"], KeyError)),
    "no-optimizer": lambda run: _rewrite_state(run, _set(["optimizer"], KeyError)),
    "step-negative": lambda run: _rewrite_state(run, _set(["meta", "step"], -1)),
    "step-string": lambda run: _rewrite_state(run, _set(["meta", "step"], "10")),
    "step-float": lambda run: _rewrite_state(run, _set(["meta", "step"], 1.5)),
    "step-bool": lambda run: _rewrite_state(run, _set(["meta", "step"], True)),
    "tokens-missing": lambda run: _rewrite_state(run, _set(["meta", "tokens"], KeyError)),
    "param-groups-not-a-list": lambda run: _rewrite_state(run, _set(["optimizer", "param_groups"], {"a": 1})),
    "payload-not-json": lambda run: _rewrite_state(run, lambda p: "{not json"),
    "payload-a-list": lambda run: _rewrite_state(run, lambda p: [1, 2]),
}


@pytest.mark.parametrize("damage", sorted(BAD_STATES))
def test_a_damaged_training_state_is_refused_and_nothing_is_written(run, capsys, damage):
    BAD_STATES[damage](run)
    before = tree_digest(run)
    one_line(capsys, ["pretrain", "--resume", run, "--train.max_steps=20", "--train.lr=1e-3"], STATE)
    assert tree_digest(run) == before  # config.yaml keeps its old overrides too


@pytest.mark.parametrize("damage", ["empty-config", "config-a-list", "model-override-mismatch", "optimizer-mismatch"])
def test_a_resume_that_fails_later_leaves_config_yaml_as_it_was(run, capsys, damage):
    argv = ["pretrain", "--resume", run, "--train.max_steps=20"]
    if damage == "empty-config":
        (run / "config.yaml").write_text("")
        needle = "config.yaml: empty"
    elif damage == "config-a-list":
        (run / "config.yaml").write_text("- 1\n- 2\n")
        needle = "config.yaml: not a mapping"
    elif damage == "model-override-mismatch":  # the checkpoint has 2 layers: caught when it is loaded, not before
        argv.append("--model.n_layer=3")
        needle = STATE
    else:
        argv.append("--train.optimizer=muon")  # the saved AdamW state does not fit Muon's parameter groups
        needle = "optimizer"
    before = tree_digest(run)
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert got == 2 and len(err) == 1 and err[0].startswith("lmforge: error: "), err
    assert needle in err[0] or damage == "optimizer-mismatch", err
    assert tree_digest(run) == before


def test_a_resume_records_its_overrides_once_it_has_loaded(run, capsys):
    assert main(["pretrain", "--resume", str(run), "--train.max_steps=12"]) == 0
    assert "max_steps: 12" in (run / "config.yaml").read_text()


# ----------------------------------------------------------------------------- 4. temp files of killed writes
def test_resume_removes_the_temp_files_of_killed_writes_and_nothing_else(run, capsys):
    stale = [run / ".model.safetensors.abc_1234.tmp", run / ".train_state.safetensors.Zz9_8765.tmp",
             run / ".config.yaml.q1w2e3r4.tmp", run / "data" / ".train.bin.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = [run / ".my-notes.tmp", run / "notes.tmp", run / "data" / ".hidden"]
    for p in keep:
        p.write_bytes(b"the user's")
    assert main(["pretrain", "--resume", str(run), "--train.max_steps=12"]) == 0
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"the user's" for p in keep)


# ----------------------------------------------------------------------------- 12. metrics.jsonl
def test_resume_skips_metrics_lines_that_are_not_utf8_or_json(run, capsys):
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "split": "train", "loss": 1.0, "note": "\xff\xfe"}\n{"step": 4, "spl')
    assert main(["pretrain", "--resume", str(run), "--train.max_steps=12"]) == 0
    from lmforge.runs.files import read_metrics

    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 12
    (run / "metrics.jsonl").read_text(encoding="utf-8")  # rewritten clean on resume


# ----------------------------------------------------------------------------- 11. unwritable outputs
def test_unwritable_outputs_are_one_line_errors(made, tmp_path, capsys):
    _, corpus, run_dir = made
    before = tree_digest(run_dir)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = [
        (pretrain_args(corpus, "/proc/lmforge-run"), "/proc/lmforge-run"),
        (["tokenizer", "train", "--data", corpus, "--vocab-size", "300", "--out", "/proc/lmforge-tok"], "/proc/lmforge-tok"),
        (["evaluate", run_dir, "--max-batches", "1", "--json", folder], "is a folder"),
        (["evaluate", run_dir, "--max-batches", "1", "--json", "/proc/lmforge.json"], "/proc/lmforge.json"),
        (["evaluate", run_dir, "--max-batches", "1", "--json", "/dev/null"], "not a regular file"),
        (["export", run_dir, "--format", "onnx", "--out", "/proc/lmforge-onnx"], "/proc/lmforge-onnx"),
        (["compress", run_dir, "--method", "int8", "--repeats", "1", "--out", "/proc/lmforge-int8"], "/proc/lmforge-int8"),
        (["report", "compress", run_dir, "--out", folder], ""),
    ]
    for argv, needle in cases:
        one_line(capsys, argv, needle)
    assert tree_digest(run_dir) == before
    assert list(folder.iterdir()) == []


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(run, capsys, monkeypatch):
    """ENOSPC at the next checkpoint: one line, exit 1, 'nothing already saved was lost', the step-10 files
    byte-identical; once there is room again the same run resumes to the end."""
    import lmforge.fileio as fileio

    before = {k: v for k, v in tree_digest(run).items() if k in (STATE, WEIGHTS)}
    real = fileio.os.fsync

    def full(fd):  # the disk fills up while the step-20 checkpoint is written
        if ".train_state.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(fileio.os, "fsync", full)
    line = one_line(capsys, ["pretrain", "--resume", run, "--train.max_steps=20"], "no space left", code=1)
    assert "nothing already saved was lost" in line and STATE in line
    assert {k: v for k, v in tree_digest(run).items() if k in (STATE, WEIGHTS)} == before
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(fileio.os, "fsync", real)
    assert main(["pretrain", "--resume", str(run), "--train.max_steps=20"]) == 0
    assert "20 steps" in capsys.readouterr().out


def test_a_failed_metrics_append_leaves_no_torn_line(tmp_path, monkeypatch):
    import lmforge.runs.files as ckpt

    ckpt.append_metrics(tmp_path, {"step": 1})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real = ckpt.os.write

    def half(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "write", half)
    with pytest.raises(ckpt.WriteError) as e:
        ckpt.append_metrics(tmp_path, {"step": 2, "loss": 1.0})
    assert e.value.exit_code == 1
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
@pytest.mark.parametrize("fs", ["full", "read-only"])
def test_a_real_full_or_read_only_file_system(made, tmp_path, fs):
    """A real process on a real file system: a 200 KB tmpfs that the run's checkpoints overflow, and the
    run dir on a file system remounted read-only. One line, no traceback; the saved files are intact."""
    _, corpus, run_dir = made
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    py = f"{sys.executable} -m lmforge"
    if fs == "full":
        size, before_cmd = "300k", ""
        cmd = f"{py} {' '.join(pretrain_args(corpus, mnt / 'run', '--train.max_steps=20'))}"
    else:
        size, before_cmd = "20m", f"cp -r {run_dir} {mnt}/run && mount -o remount,ro {mnt} && "
        cmd = f"{py} pretrain --resume {mnt}/run --train.max_steps=20"
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && {before_cmd}{cmd}; code=$?; "
              f"ls -a {mnt}/run > {tmp_path}/listing 2>&1; sha256sum {mnt}/run/*.safetensors > {tmp_path}/sums 2>&1; "
              "exit $code")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env1(), cwd=REPO,
                       timeout=300)
    lines = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr and lines and lines[-1].startswith("lmforge: error: "), p.stderr
    listing = (tmp_path / "listing").read_text()
    assert ".tmp" not in listing, listing
    if fs == "full":
        assert p.returncode == 1 and "no space left" in lines[-1] and "nothing already saved was lost" in lines[-1]
    else:
        assert p.returncode == 2 and "read-only file system" in lines[-1], lines
        sums = {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in (tmp_path / "sums").read_text().splitlines()}
        orig = tree_digest(run_dir)
        assert sums == {k: orig[k] for k in (STATE, WEIGHTS)}


def test_atomic_writes_give_files_the_usual_mode_and_keep_a_replaced_files(tmp_path):
    import os

    from lmforge.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0600
        (tmp_path / "new.txt").chmod(0o640)
        atomic_write_text(tmp_path / "new.txt", "y")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_tokenizer_train_never_overwrites_a_tokenizer_or_a_run(made, tmp_path, capsys):
    _, corpus, run_dir = made
    before = tree_digest(run_dir)
    one_line(capsys, ["tokenizer", "train", "--data", corpus, "--vocab-size", "300", "--out", run_dir], "already holds a run")
    assert tree_digest(run_dir) == before  # the run's weights keep the tokenizer they were trained with
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 0
    capsys.readouterr()
    first = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    one_line(capsys, ["tokenizer", "train", "--data", corpus, "--vocab-size", "400", "--out", tmp_path / "tok"],
             "already holds tokenizer.json")
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == first
