"""Shared test helpers: a small generated corpus and subprocess runners for the CLI."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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
