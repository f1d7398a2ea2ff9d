"""The CLI only parses (issue 15, item 6): compress's flag rules live in the Python API, serve's limit
flags are generated from the Limits dataclass, and both verbs' --help still list every flag."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lmforge.__main__ import LIMIT, build_parser, main
from lmforge.errors import UserError
from lmforge.tools.compress import compress, run
from lmforge.tools.compress.distill import distill
from lmforge.tools.serve.limits import Limits, option_specs

# today's spellings and defaults: outside scripts use them
SERVE_LIMIT_FLAGS = {"max_body_bytes": ("--max-body-bytes", 1 << 20), "max_prompt_tokens": ("--max-prompt-tokens", 1024),
                     "max_completion_tokens": ("--max-completion-tokens", 512), "max_inputs": ("--max-inputs", 64),
                     "timeout_s": ("--timeout", 30.0), "max_concurrent": ("--max-concurrent", 256),
                     "header_timeout_s": ("--header-timeout", 10.0), "keep_alive_s": ("--keep-alive", 5.0),
                     "max_connections": ("--max-connections", 1024), "max_beam": ("--max-beam", 8),
                     "max_image_bytes": ("--max-image-bytes", 1 << 20), "max_image_pixels": ("--max-image-pixels", 1 << 22)}
SERVE_FLAGS = [*(f for f, _ in SERVE_LIMIT_FLAGS.values()), "--host", "--port", "--api-key", "--batch-window-ms",
               "--max-batch", "--no-batching", "--workers", "--threads", "--log-level"]
COMPRESS_FLAGS = ["--method", "--out", "--sparsity", "--structured", "--recover-steps", "--recover-lr", "--gradual",
                  "--recover-distill", "--no-recover-distill", "--data", "--split", "--max-batches", "--repeats",
                  "--teacher", "--student-config", "--train.max_steps", "--model.n_layer", "--distill.temperature",
                  "--finetune.max_length"]


def _subparser(verb: str):
    return build_parser()._subparsers._group_actions[0].choices[verb]


def _help(verb: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb, flags", [("serve", SERVE_FLAGS), ("compress", COMPRESS_FLAGS)])
def test_help_lists_every_flag(verb, flags, capsys):
    out = _help(verb, capsys)
    for flag in flags:
        assert flag in out, flag
    for action in _subparser(verb)._actions:  # and every flag the parser has
        for flag in action.option_strings:
            assert flag in out, flag


def test_serve_limit_flags_are_the_limits_fields():
    fields = {f.name for f in dataclasses.fields(Limits)}
    actions = [a for a in _subparser("serve")._actions if a.dest.startswith(LIMIT)]
    assert {a.dest[len(LIMIT):] for a in actions} == fields == {name for name, *_ in option_specs()}
    assert fields == set(SERVE_LIMIT_FLAGS)  # a new field needs its flag here (and in docs/serve.md)
    for a in actions:
        name = a.dest[len(LIMIT):]
        flag, default = SERVE_LIMIT_FLAGS[name]
        assert a.option_strings == [flag] and a.default == default == getattr(Limits(), name), name
        assert a.type is type(default) and a.help and a.metavar == flag[2:].upper().replace("-", "_")


def test_serve_gives_the_parsed_limits_to_serve(monkeypatch):
    import lmforge.tools.serve

    seen = {}
    monkeypatch.setattr(lmforge.tools.serve, "serve", lambda run_dirs, **kw: seen.update(kw))
    assert main(["serve", "runs/x", "--timeout", "3", "--max-inputs", "7", "--keep-alive", "0.5"]) == 0
    assert seen["limits"] == Limits(timeout_s=3.0, max_inputs=7, keep_alive_s=0.5)
    assert main(["serve", "runs/x"]) == 0
    assert seen["limits"] == Limits()


def test_bad_limit_flag_is_a_one_line_error(capsys):
    assert main(["serve", "runs/x", "--header-timeout", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lmforge: error: --header-timeout: expected a finite number of seconds > 0, got 0.0"]


# (keyword arguments of run(), the needle of its error, the same call as CLI flags)
BAD = [
    ({"method": "distill", "run_dir": "R", "teacher": "T", "student_config": "S.yaml"}, "no positional RUN_DIR",
     ["R", "--method", "distill", "--teacher", "T", "--student-config", "S.yaml"]),
    ({"method": "distill", "student_config": "S.yaml"}, "--method distill takes --teacher RUN_DIR",
     ["--method", "distill", "--student-config", "S.yaml"]),
    ({"method": "distill", "teacher": "T"}, "--student-config FILE.yaml",
     ["--method", "distill", "--teacher", "T"]),
    ({"method": "distill", "teacher": "T", "student_config": "S.yaml", "sparsity": 0.5}, "apply to --method prune, not distill",
     ["--method", "distill", "--teacher", "T", "--student-config", "S.yaml", "--sparsity", "0.5"]),
    ({"method": "distill", "teacher": "T", "student_config": "S.yaml", "gradual": True}, "--gradual apply to --method prune",
     ["--method", "distill", "--teacher", "T", "--student-config", "S.yaml", "--gradual"]),
    ({"method": "distill", "teacher": "T", "student_config": "S.yaml", "recover_lr": 1e-4}, "--recover-lr and --gradual apply",
     ["--method", "distill", "--teacher", "T", "--student-config", "S.yaml", "--recover-lr", "1e-4"]),
    ({"method": "distill", "teacher": "T", "student_config": "S.yaml", "structured": "heads"}, "--structured",
     ["--method", "distill", "--teacher", "T", "--student-config", "S.yaml", "--structured", "heads"]),
    ({"method": "int8", "run_dir": "R", "teacher": "T"}, "apply to --method distill",
     ["R", "--method", "int8", "--teacher", "T"]),
    ({"method": "prune", "run_dir": "R", "sparsity": 0.5, "student_config": "S.yaml"}, "apply to --method distill",
     ["R", "--method", "prune", "--sparsity", "0.5", "--student-config", "S.yaml"]),
    ({"method": "int8", "run_dir": "R", "overrides": {"train.max_steps": "3"}}, "config overrides (--train.*, --distill.* ...)",
     ["R", "--method", "int8", "--train.max_steps=3"]),
    ({"method": "int8"}, "--method int8: give the run directory to compress", ["--method", "int8"]),
    ({"method": "prune"}, "--method prune: give the run directory to compress", ["--method", "prune"]),
    ({"method": "int8", "run_dir": "R", "sparsity": 0.5}, "apply to --method prune, not int8",
     ["R", "--method", "int8", "--sparsity", "0.5"]),
]


@pytest.mark.parametrize("kwargs, needle, argv", BAD, ids=[n for _, n, _ in BAD])
def test_compress_api_checks_flag_combinations_as_the_cli(kwargs, needle, argv, tmp_path, capsys):
    """From Python, the one-line UserError (exit code 2) the CLI prints, before anything is read or written."""
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        run(**kwargs, out=out)
    message = str(e.value)
    assert needle in message and "\n" not in message and getattr(e.value, "exit_code", 2) == 2
    assert main(["compress", *argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"lmforge: error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_compress_and_distill_check_their_own_required_arguments(tmp_path):
    out = tmp_path / "out"
    for call, needle in [(lambda: compress(None, "int8", out), "--method int8: give the run directory"),
                         (lambda: compress("", "prune", out, sparsity=0.5), "--method prune: give the run directory"),
                         (lambda: compress("R", "distill", out), "call distill(teacher, student_config, out)"),
                         (lambda: distill("T", None, out), "--student-config FILE.yaml"),
                         (lambda: distill(None, "S.yaml", out), "--teacher RUN_DIR"),
                         (lambda: run("fp4", "R", out=out), "unknown compression method")]:
        with pytest.raises(UserError, match=re.escape(needle)) as e:
            call()
        assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
