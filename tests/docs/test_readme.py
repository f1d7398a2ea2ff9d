"""The README's tour runs as written (in a scratch folder, with the repo's configs/), then
docs/compress.md's block, which builds on the tour's runs/tour."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, env1

pytestmark = pytest.mark.data


def tour_commands(heading: str = "## A 5-minute tour", page: str = "README.md") -> list[str]:
    """The commands of the first ```sh block under ``heading`` of ``page`` (comments and `source` dropped)."""
    text = (REPO / page).read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    cmds = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [c for c in cmds if c and not c.startswith(("source ", "#"))]


def test_tour_runs_as_written(tmp_path):
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = env1()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    cmds = tour_commands()
    assert any(c.startswith("torchrun") for c in cmds) and any("--resume" in c for c in cmds)
    outputs = {}
    for cmd in cmds:
        p = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
        outputs[cmd] = p.stdout
    evaluation = json.loads(next(v for k, v in outputs.items() if k.startswith("lmforge evaluate")))
    assert evaluation["loss"] < evaluation["unigram_entropy"]
    assert next(v for k, v in outputs.items() if k.startswith("lmforge generate")).startswith("ROMEO:")
    assert "400 steps" in next(v for k, v in outputs.items() if "--resume" in k)
    assert (tmp_path / "runs" / "tour-ddp" / "model.safetensors").exists()

    for cmd in tour_commands("## After the tour", "docs/compress.md"):  # they build on the tour's runs/tour
        p = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
    runs = tmp_path / "runs"
    for name in ("tour-int8", "tour-p50", "tour-heads"):
        assert set(json.loads((runs / name / "compression.json").read_text())) >= {"size_mb", "params", "latency_ms_b1", "original"}
    assert (runs / "compress-tour.png").stat().st_size > 0
    assert (runs / "tour-onnx" / "model.onnx").exists() and (runs / "tour-hf" / "config.json").exists()
