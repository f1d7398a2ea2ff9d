"""The README and docs/ say what is true: every command in them is tested, every link resolves, and
docs/config.md is what the config dataclasses generate.

- Quick ```sh blocks run as written in a scratch folder (here: training.md's and finetune.md's blocks on
  tiny files; tests/docs/test_readme.py runs the tour and compress.md's block, tests/tools/serve/test_serve_http.py
  serve.md's blocks). The README's ```python example runs too.
- Every other command (full recipes, benchmarks, runs of many minutes), in a ```sh block or as an
  inline `lmforge ...` span without placeholders, is parsed by the real CLI parser, and every file it
  names under configs/, benchmarks/ or scripts/ must exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, env1, make_corpus, make_labelled

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REGENERATE = "python -m lmforge.config.docs > docs/config.md"


# ----------------------------------------------------------------------------- reading the pages
def section(path: Path, heading: str) -> str:
    """The text of ``path`` under ``heading`` (a whole line such as ``## Objectives``), up to the next
    heading of the same or a higher level; ``#`` lines inside code blocks are not headings."""
    level, out, inside, fence = heading.split(" ", 1)[0], None, False, False
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        fence ^= line.startswith("```")
        is_heading = not fence and re.match(r"#+ ", line)
        if inside and is_heading and len(line.split(" ", 1)[0]) <= len(level):
            break
        if inside:
            out.append(line)
        elif line.rstrip("\n") == heading:
            inside, out = True, []
    assert out is not None, f"{path.name}: no heading {heading!r}"
    return "".join(out)


def code_blocks(text: str, lang: str = "sh") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def commands(block: str) -> list[str]:
    """A block's command lines: comments dropped (`  # ...`), ``\\``-continued lines joined."""
    cmds = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [c for c in cmds if c and not c.startswith("#")]


def inline_commands(text: str) -> list[str]:
    """Inline `lmforge ...` spans that are whole commands: with options and a path, and no RUN_DIR / FILE /
    <verb> placeholders (`lmforge compress --method prune` is a name in a sentence, not a command)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`(lmforge [^`]+)`", text)
    placeholder = r"<|\.\.\.|\||\b[A-Z][A-Z_]{1,}\b|\bN\b|\bP\b|--help"
    return [s for s in spans if " --" in s and "/" in s and not re.search(placeholder, s)]


def run_commands(cmds: list[str], cwd: Path, timeout: float = 300) -> dict[str, str]:
    """Run each command as written (a shell, `lmforge` on PATH); -> {command: stdout}."""
    env = env1()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    out = {}
    for cmd in cmds:
        p = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
        out[cmd] = p.stdout
    return out


def scratch(tmp: Path) -> Path:
    """A folder with the repo's configs/ and the tiny files the docs' quick examples name."""
    (tmp / "configs").symlink_to(REPO / "configs")
    for name in ("corpus.txt", "notes.txt"):
        make_corpus(tmp / name)
        with open(tmp / name, "a", encoding="utf-8") as f:
            f.write("people sing of bread\n" * 20)
    for name, seed in (("train.tsv", 0), ("test.tsv", 1), ("reviews.tsv", 0), ("reviews-test.tsv", 1)):
        make_labelled(tmp / name, n=200 if "test" not in name else 60, seed=seed)
    return tmp


# ----------------------------------------------------------------------------- generated page
def test_config_md_is_generated_from_the_dataclasses():
    from lmforge.config.docs import config_markdown

    page = REPO / "docs" / "config.md"
    assert page.exists(), f"docs/config.md is missing: run `{REGENERATE}`"
    assert page.read_text(encoding="utf-8") == config_markdown(), (
        f"docs/config.md is stale (a config field, default or help text changed): run `{REGENERATE}`")


def test_config_md_lists_every_field():
    from lmforge.config import option_specs
    from lmforge.config.docs import config_markdown

    text = config_markdown()
    assert all(f"| `{name}` |" in text for name, *_ in option_specs())


# ----------------------------------------------------------------------------- links
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{page.relative_to(REPO)}: broken links: {bad}"


# ----------------------------------------------------------------------------- every command parses
def check_command(cmd: str, makefile_targets: set[str]) -> str | None:
    """None if ``cmd`` is a valid lmforge / make / benchmark command whose named files exist, else why not."""
    from lmforge.__main__ import build_parser
    from lmforge.errors import UserError

    for path in re.findall(r"(?<![\w/.])((?:configs|benchmarks|scripts)/[\w./-]+)", cmd):
        if "*" not in path and not (REPO / path).exists():
            return f"{path}: no such file"
    argv = shlex.split(cmd.rstrip("&").strip(), comments=True)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv[:1] == ["nice"]:
        argv = argv[3:] if argv[1:2] == ["-n"] else argv[1:]
    if not argv:
        return "empty command"
    if argv[0] == "torchrun":
        argv = ["lmforge", *argv[argv.index("lmforge") + 1:]] if "-m" in argv and "lmforge" in argv else argv
    if argv[0] == "lmforge":
        try:
            args = build_parser().parse_args(argv[1:])
        except (SystemExit, UserError) as e:
            return f"the CLI refuses it: {e}"
        return None if hasattr(args, "func") else "no verb / action chosen"
    if argv[0] == "make":
        return None if set(argv[1:]) <= makefile_targets else f"no make target {argv[1:]}"
    if argv[0] in (".venv/bin/python", "python") and argv[1:2] and argv[1].endswith(".py"):
        return None if (REPO / argv[1]).exists() else f"{argv[1]}: no such script"
    if argv[0] in (".venv/bin/python", "python") and argv[1:3] == ["-m", "pytest"]:
        return None
    if argv[0] in ("curl", "source", "kill"):  # curl: serve.md's block, run by tests/test_serve_http.py
        return None
    return f"unknown kind of command {argv[0]!r} (teach tests/test_docs.py how to check it)"


def test_every_documented_command_parses():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    bad, seen = [], 0
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        cmds = [c for block in code_blocks(text) for c in commands(block)] + inline_commands(text)
        for cmd in cmds:
            seen += 1
            why = check_command(cmd, targets)
            if why:
                bad.append(f"{page.relative_to(REPO)}: {cmd}\n    {why}")
    assert not bad, "\n".join(bad)
    assert seen > 50


def test_every_named_repo_file_exists():
    """configs/..., benchmarks/... and scripts/... files named anywhere in the pages (prose, tables, code)."""
    bad = []
    for page in DOCS:
        for path in re.findall(r"(?<![\w/.])((?:configs|benchmarks|scripts)/[\w./*-]*\w)", page.read_text(encoding="utf-8")):
            if "*" not in path and not (REPO / path).exists():
                bad.append(f"{page.relative_to(REPO)}: {path}")
    assert not bad, f"no such file: {bad}"


# ----------------------------------------------------------------------------- quick blocks run
@pytest.mark.slow
def test_training_and_finetune_quick_blocks_run(tmp_path):
    cwd = scratch(tmp_path)
    training = commands(code_blocks(section(REPO / "docs" / "training.md", "## Data and tokenizer"))[1])
    finetune = commands(code_blocks(section(REPO / "docs" / "finetune.md", "## On your own data, in seconds"))[0])
    explain = commands(code_blocks(section(REPO / "docs" / "explain.md", "## A text, as a page"))[0])
    explain += commands(code_blocks(section(REPO / "docs" / "explain.md", "## Report"))[0])
    assert any("--resume" in c for c in training) and any("electra" in c for c in training)
    out = run_commands(training + finetune + explain, cwd)
    assert "<!DOCTYPE html>" in (cwd / "why.html").read_text(encoding="utf-8")
    assert json.loads((cwd / "why.json").read_text())[0]["target"] == "positive"
    assert {"ig", "occlusion", "random"} <= json.loads((cwd / "faithfulness.json").read_text()).keys()
    assert "comparison" in (cwd / "report.html").read_text(encoding="utf-8")
    runs = cwd / "runs"
    assert (runs / "tok-notes" / "tokenizer.json").exists()
    assert all((runs / r / "model.safetensors").exists() for r in ("notes-gpt", "notes-bert", "notes-electra",
                                                                   "notes-clf", "notes-lora"))
    assert "40 steps" in next(v for k, v in out.items() if "--resume" in k)
    ev = [json.loads(v) for k, v in out.items() if k.startswith("lmforge evaluate")]
    assert "loss" in ev[0] and "accuracy" in ev[1]
    predicted = [v for k, v in out.items() if k.startswith("lmforge predict")]
    assert len(predicted[0].splitlines()) == 2 and len(predicted[1].splitlines()) == 60


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    """The README's ```python block: pretrain -> finetune -> evaluate -> predict -> load_run, as written."""
    cwd = scratch(tmp_path)
    (code,) = code_blocks((REPO / "README.md").read_text(encoding="utf-8"), "python")
    for name in ("pretrain", "finetune", "evaluate", "predict", "load_run"):
        assert f"lmforge.{name}(" in code
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env1(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "test accuracy" in p.stdout and "parameters" in p.stdout
    assert (cwd / "runs" / "lm" / "model.safetensors").exists() and (cwd / "runs" / "clf" / "model.safetensors").exists()


@pytest.mark.slow
def test_images_quick_block_runs(tmp_path):
    """docs/images.md's digits block as written: train, evaluate --plot, predict (on a digit saved as PNG)."""
    from PIL import Image

    from lmforge.data.images import load_images

    cwd = scratch(tmp_path)
    Image.fromarray(load_images("digits", "test").images[0, 0].numpy()).save(cwd / "digit.png")
    cmds = commands(code_blocks(section(REPO / "docs" / "images.md", "## Quick start (digits, seconds)"))[0])
    out = run_commands(cmds, cwd)
    assert json.loads((cwd / "digits-test.json").read_text())["accuracy"] > 0.5
    assert sorted(p.name for p in (cwd / "runs" / "digits-cnn" / "plots").iterdir()) == ["confusion-test.png", "worst-test.png"]
    label, prob, name = out[cmds[-1]].strip().split("\t")
    assert label in "0123456789" and 0 < float(prob) <= 1 and name == "digit.png"


@pytest.mark.slow
def test_images_compress_block_runs(tmp_path):
    """docs/images.md's compress block as written: int8, channel pruning with recovery, distillation, evaluate."""
    cwd = scratch(tmp_path)
    cmds = commands(code_blocks(section(REPO / "docs" / "images.md", "## Compress"))[0])
    out = run_commands(cmds, cwd)
    runs = cwd / "runs"
    for name, method in (("digits-cnn-int8", "int8"), ("digits-cnn-pruned", "prune"), ("digits-cnn-small", "distill")):
        r = json.loads((runs / name / "compression.json").read_text())
        assert r["method"] == method and r["metric"]["accuracy"] > 0.3, (name, r["metric"])
    assert "accuracy" in out[cmds[-1]]
