"""The bad-input corpus (issue 14): each case of badinput_cases.py is a real `lmforge` command, run in this
process through ``lmforge.__main__.main(argv)`` (an exception escaping main() is a traceback) or, for a few,
as a child process. Every case must:

- exit with its code (2 unless the case says otherwise);
- print on stderr only one-line ``lmforge: warning: ...`` lines, then exactly one ``lmforge: error: ...``
  line (last, under 1000 characters) naming the case's needle (a field, flag, file or path), for a bad
  value in the form ``FIELD: expected ..., got ...``;
- print no traceback, and nothing on stdout (no partial output before the error);
- leave every run dir and file it was given byte-identical (sha256 before and after), and leave no new
  file or folder in its folder (no half-made run dir for a failed ``--out``).

Run dirs are made once per session (conftest.py); a case that may write works on copies in its own folder.
Set LMFORGE_BADINPUT_REPORT=FILE to append one JSON line per case (id, problems) for a summary table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import REPO, env1, tree_digest

from badinput import cases_tools, cases_train  # noqa: F401 - importing them registers their cases
from badinput.badinput_cases import CASES, RUNS, Case, fill
from lmforge.__main__ import main

READ_ONLY_VERBS = {"generate", "evaluate", "predict", "serve", "data"}  # without setups they get the shared run dirs
MAX_ERROR_LINE = 1000
CASE_TIMEOUT_S = 120
PROGRESS = re.compile(r"training a \d+-token BPE tokenizer on .* \.\.\.$|step \d+: ")  # progress_ok: on stdout
PROGRESS_BAR = re.compile(r"\s*$|\s*train: |step \d+: ")  # progress_ok: tqdm's bar and its log lines on stderr


class ServerStarted(Exception):
    """Raised instead of serving: a bad serve argument got as far as starting uvicorn."""


def _refuse_to_serve(self, *args, **kwargs):
    for sock in kwargs.get("sockets") or ():
        sock.close()
    raise ServerStarted("lmforge serve accepted the arguments and started the server")


def snapshot(folder: Path) -> tuple[dict[str, str], set[str]]:
    """(sha256 of every file, every folder) below ``folder``."""
    if not folder.exists():
        return {}, set()
    if folder.is_file():
        import hashlib

        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}, set()
    return tree_digest(folder), {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir()}


def compare(before, after, where: str, may_change: tuple[str, ...] = ()) -> list[str]:
    (files0, dirs0), (files1, dirs1) = before, after
    out = []
    changed = sorted(k for k in files0 if k in files1 and files0[k] != files1[k] and k not in may_change)
    gone = sorted(set(files0) - set(files1)) + sorted(dirs0 - dirs1)
    new = sorted(set(files1) - set(files0)) + sorted(d + "/" for d in dirs1 - dirs0)
    if changed:
        out.append(f"{where}: changed {', '.join(changed[:4])}")
    if gone:
        out.append(f"{where}: removed {', '.join(gone[:4])}")
    if new:
        out.append(f"{where}: new {', '.join(new[:4])}{' ...' if len(new) > 4 else ''}")
    return out


def prepare(case: Case, fx: dict, ws: Path) -> dict:
    """The placeholder -> path map of ``case``: its own folder, copies of the run dirs it may write (or
    damage), the shared ones otherwise; then its setups."""
    paths = {"tmp": ws}
    copy = bool(case.setups) or case.verb not in READ_ONLY_VERBS or case.user is not None
    for name in ("corpus", "labels", "tiny", "student", *RUNS):
        if not case.uses(name):
            continue
        if name in RUNS and copy:
            paths[name] = ws / name
            shutil.copytree(fx[name], paths[name], symlinks=True)
        elif case.user is not None and name != "tiny":  # another user cannot read the session's folder
            paths[name] = ws / Path(fx[name]).name
            shutil.copy(fx[name], paths[name])
        else:
            paths[name] = Path(fx[name])
    for setup in case.setups:
        setup(paths)
    return paths


def run_in_process(argv: list[str], capfd, monkeypatch, env: dict) -> tuple[int | None, str, str, str | None]:
    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        import uvicorn
    except ImportError:  # serve then fails on its missing extra, before any server
        pass
    else:
        monkeypatch.setattr(uvicorn.Server, "run", _refuse_to_serve)

    def timeout(signum, frame):
        raise TimeoutError(f"no answer within {CASE_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(CASE_TIMEOUT_S)
    code, escaped = None, None
    try:
        code = main(argv)
    except BaseException as e:  # noqa: BLE001 - anything escaping main() is a traceback for the user
        escaped = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        torch.set_num_threads(1)  # serve --threads / train.num_threads must not leak into the next case
    out, err = capfd.readouterr()
    return code, out, err, escaped


def run_process(argv: list, cwd: Path, user: str | None, file_limit: int | None = None, extra_env: dict | None = None
                ) -> tuple[int | None, str, str, str | None]:
    env, prefix, limit = {**env1(), **(extra_env or {})}, [], None
    if "LMFORGE_API_KEY" not in (extra_env or {}):  # the user's own key never reaches a case
        env.pop("LMFORGE_API_KEY", None)
    if user is not None:  # setpriv: a Python preexec_fn that drops root here can no longer exec the interpreter
        env.update(HOME=str(cwd), LMFORGE_CACHE=str(cwd / "cache"))
        prefix = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
    if file_limit is not None:  # Python ignores SIGXFSZ: the write fails with EFBIG

        def limit():
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    args = [os.fsencode(a) if isinstance(a, str) else a for a in argv]
    try:
        p = subprocess.run([*prefix, sys.executable, "-m", "lmforge", *args], capture_output=True, env=env, cwd=cwd,
                           timeout=CASE_TIMEOUT_S, check=False, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return None, "", "", f"no answer within {CASE_TIMEOUT_S} s"
    return (p.returncode, p.stdout.decode("utf-8", "backslashreplace"), p.stderr.decode("utf-8", "backslashreplace"),
            None)


def check_output(case: Case, code, out: str, err: str, escaped, needles: tuple[str, ...]) -> list[str]:
    """What is wrong with one run's exit code and output (empty: nothing)."""
    problems = []
    if escaped:
        problems.append(f"exception escaped main(): {escaped}")
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    if code not in codes:
        problems.append(f"exit {code}, expected {' or '.join(map(str, codes))}")
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("lmforge: error: ")]
    others = [line for line in lines if not line.startswith(("lmforge: error: ", "lmforge: warning: "))
              and not (case.progress_ok and PROGRESS_BAR.match(line))]
    if "Traceback" in err or "Traceback" in out:
        problems.append("a traceback was printed")
    if len(errors) != 1:
        problems.append(f"{len(errors)} 'lmforge: error:' lines on stderr")
    elif lines[-1].strip() != errors[0].strip():
        problems.append("the error line is not the last line of stderr")
    if others:
        problems.append(f"{len(others)} other stderr line(s), first {others[0][:100]!r}")
    if errors:
        line = errors[-1]
        if len(line) > MAX_ERROR_LINE:
            problems.append(f"error line of {len(line):,} characters")
        if not any(n in line for n in needles):
            problems.append(f"error line does not name {' or '.join(map(repr, needles))}")
        elif case.form and not any(re.search(re.escape(n) + r"\S*: expected .*got", line) for n in needles):
            problems.append(f"error line is not of the form '{needles[0]}: expected ..., got ...'")
    shown = [line for line in out.splitlines() if line.strip() and not (case.progress_ok and PROGRESS.match(line))]
    if shown:
        problems.append(f"stdout: {chr(10).join(shown)[:100]!r}")
    return problems


def _others_can_enter(path: Path) -> bool:
    """Whether a user who is neither owner nor group can reach ``path`` (every folder above it o+x)."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fixtures, tmp_path_factory, capfd, monkeypatch):
    if case.user is not None:
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            pytest.skip("running as another user needs root and setpriv")
        if not _others_can_enter(REPO / "src" / "lmforge"):
            pytest.skip(f"uid 65534 cannot reach {REPO}/src (a checkout in a private folder, e.g. one from mktemp -d)")
        ws = Path(tempfile.mkdtemp(prefix="lmforge-badinput-", dir="/tmp"))
    else:
        ws = tmp_path_factory.mktemp("case")
    try:
        paths = prepare(case, fixtures, ws)
        argv = [fill(a, paths) for a in case.argv]
        needles = tuple(fill(n, paths) for n in case.needle)
        if case.user is not None:  # everything readable by the other user, {tmp} itself read-only to them
            for p in [ws, *ws.rglob("*")]:
                readable = stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if p.is_dir() else 0)
                p.chmod(p.stat().st_mode | readable)
        shared = {f"{{{k}}}": Path(v) for k, v in paths.items() if k != "tmp" and not Path(v).is_relative_to(ws)}
        watched = {"{tmp}": ws, **shared}
        before = {k: snapshot(p) for k, p in watched.items()}
        if case.proc:
            code, out, err, escaped = run_process(argv, ws, case.user, case.file_limit, case.env)
        else:
            monkeypatch.chdir(ws)  # a stray relative write lands in the case's folder, where it is seen
            code, out, err, escaped = run_in_process(argv, capfd, monkeypatch, case.env)
        problems = check_output(case, code, out, err, escaped, needles)
        for k, p in watched.items():
            problems += compare(before[k], snapshot(p), k, case.may_change if k == "{tmp}" else ())
        problems += [f"{a} exists afterwards" for a in case.absent if os.path.lexists(a)]
    finally:
        if case.user is not None:
            shutil.rmtree(ws, ignore_errors=True)
    last = err.strip().splitlines()[-1][:300] if err.strip() else ""
    report = os.environ.get("LMFORGE_BADINPUT_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": case.id, "problems": problems, "stderr_last": last}, ensure_ascii=False) + "\n")
    assert not problems, f"{case.id}: " + " | ".join(problems) + f" | stderr ends {last!r}"


def test_the_checks_catch_what_they_must():
    """The checks themselves: a command that worked, a traceback, partial output, a touched file all fail."""
    case = Case("x", ["pretrain"], ("train.lr",), form=True)
    good = "lmforge: warning: w\nlmforge: error: train.lr: expected a finite number > 0, got nan\n"
    assert check_output(case, 2, "", good, None, case.needle) == []
    assert check_output(case, 0, "done\n", "", None, case.needle)  # accepted
    assert check_output(case, None, "", "", "ValueError: Invalid learning rate: nan", case.needle)  # escaped main()
    assert check_output(case, 2, "hi", good, None, case.needle)  # partial output on stdout
    assert check_output(case, 2, "", "Traceback (most recent call last):\n" + good, None, case.needle)
    assert check_output(case, 2, "", good + "lmforge: error: again\n", None, case.needle)  # two error lines
    assert check_output(case, 2, "", "lmforge: error: train.lr is bad\n", None, case.needle)  # not the form
    assert check_output(case, 2, "", "lmforge: error: model.dropout: expected ..., got 2\n", None, case.needle)
    assert check_output(case, 2, "", "lmforge: error: train.lr: expected x, got " + "y" * 2000 + "\n", None, case.needle)
    before = ({"model.safetensors": "a"}, set())
    assert compare(before, before, "{lm}") == []
    assert compare(before, ({"model.safetensors": "b"}, set()), "{lm}")  # changed
    assert compare(before, ({"model.safetensors": "a", "new/config.yaml": "c"}, {"new"}), "{tmp}")  # half-made run dir
    assert compare(before, ({}, set()), "{lm}")  # removed


def test_the_corpus_is_large_and_covers_every_verb():
    assert len(CASES) >= 200
    verbs = Counter(c.verb for c in CASES)
    for verb in ("data", "tokenizer", "pretrain", "finetune", "generate", "evaluate", "predict", "export", "compress",
                 "report", "serve"):
        assert verbs[verb] >= 5, (verb, verbs)
    assert sum(c.proc for c in CASES) >= 3 and any(c.user for c in CASES)
    assert any("--resume" in c.argv for c in CASES if c.verb == "pretrain")
    assert any("--resume" in c.argv for c in CASES if c.verb == "finetune")


def test_the_shared_run_dirs_are_untouched(fixtures):
    """Runs last: no case wrote into the session's run dirs (cases that may write get copies)."""
    for name in RUNS:
        assert tree_digest(fixtures[name]) == fixtures["digest"][name], name


def test_repo_holds_no_stray_run_files():
    assert not (REPO / "config.yaml").exists() and not (REPO / "new").exists()
