"""The bad-input corpus: every case is one `lmforge` command that must fail cleanly.

A case is ``C(id, argv, needle, *setups, code=2, ...)``:

- ``argv``: a string (split like a shell does) or a list; placeholders ``{lm}``, ``{clf}``, ``{lora}``,
  ``{lstm}``, ``{int8}`` (run dirs, see conftest.py), ``{corpus}``, ``{labels}``, ``{tiny}``, ``{student}`` (files)
  and ``{tmp}`` (the case's own empty folder) are filled in by the test.
- ``needle``: what the error line must name (a field, flag, file or path); a tuple = any one of them.
  Wording is free, the form should be ``field: expected ..., got ...``.
- ``setups``: functions run on the case's copies before the command (they damage a run dir, write a
  bad recipe ...); what they leave is the "before" state that must stay byte-identical.
- ``proc``: run as a real subprocess (argv may hold bytes: raw invalid UTF-8); ``user="nobody"``: run it
  as uid 65534, for whom ``{tmp}`` is read-only.
- ``env``: environment variables for the command (``LMFORGE_API_KEY``).
- ``absent``: paths outside ``{tmp}`` that must not exist afterwards (``--out /proc/...``).
- ``progress_ok``: the error can only be found after some work, whose progress lines may be on stdout (and
  its progress bar on stderr).
- ``form``: a bad value: the error line must read ``NEEDLE: expected ..., got ...`` (the issue's form).
- ``file_limit``: (proc) the largest file the process may write, in bytes: a larger write fails mid-way as on
  a full disk (EFBIG rather than ENOSPC, hence ``code=(1, 2)``); ``may_change``: files it may legitimately
  have rewritten before that (a resume's config.yaml).

The expectation is the same for all (test_badinput.py): exit ``code``; stderr is one-line
``lmforge: warning: `` lines then exactly one ``lmforge: error: `` line holding the needle, under
1000 characters; no traceback; nothing on stdout; every file of every run dir involved is
byte-identical afterwards and no new file or folder is left in ``{tmp}``.
"""

from __future__ import annotations

import json
import shlex
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDERS = ("lm", "clf", "lora", "lstm", "int8", "corpus", "labels", "tiny", "student", "tmp")
RUNS = ("lm", "clf", "lora", "lstm", "int8")


def fill(s, paths: dict):
    """Replace the ``{name}`` placeholders of one argv item (str or bytes) by paths."""
    if isinstance(s, bytes):
        for k in PLACEHOLDERS:
            if k in paths:
                s = s.replace(b"{" + k.encode() + b"}", bytes(Path(paths[k])))
        return s
    for k in PLACEHOLDERS:
        if k in paths:
            s = s.replace("{" + k + "}", str(paths[k]))
    return s


@dataclass
class Case:
    id: str
    argv: list
    needle: tuple[str, ...]
    setups: tuple[Callable, ...] = ()
    code: int | tuple[int, ...] = 2  # a tuple: any of these
    proc: bool = False
    user: str | None = None
    absent: tuple[str, ...] = ()
    progress_ok: bool = False  # stdout may hold progress lines such as "training a 300-token BPE tokenizer on ..."
    form: bool = False  # the error reads "NEEDLE: expected ..., got ..."
    file_limit: int | None = None  # proc: RLIMIT_FSIZE in bytes (a write beyond it fails with EFBIG, like a full disk)
    may_change: tuple[str, ...] = ()  # files below {tmp} the command may rewrite (valid work done before a write failed)
    env: dict[str, str] = field(default_factory=dict)  # environment variables set for the command
    targets: tuple[str, ...] = field(default=())  # the placeholder text of what setups touch

    @property
    def verb(self) -> str:
        words = [a if isinstance(a, str) else a.decode("utf-8", "replace") for a in self.argv]
        words = [a for a in words if not a.startswith("-")]
        return words[0] if words else "(none)"

    def uses(self, name: str) -> bool:
        text = " ".join(a if isinstance(a, str) else a.decode("utf-8", "replace") for a in self.argv)
        return "{" + name + "}" in text + " ".join(self.targets) + " ".join(self.needle)


CASES: list[Case] = []


def C(id: str, argv, needle, *setups, **kw) -> Case:
    if isinstance(argv, str):
        argv = shlex.split(argv)
    needle = (needle,) if isinstance(needle, str) else tuple(needle)
    targets = tuple(t for s in setups for t in getattr(s, "targets", ()))
    case = Case(id, list(argv), needle, tuple(setups), targets=targets, **kw)
    assert all(c.id != id for c in CASES), f"duplicate case id {id}"
    CASES.append(case)
    return case


# ----------------------------------------------------------------------------- setups
def _setup(fn, *targets):
    fn.targets = targets
    return fn


def write(target: str, data: str | bytes):
    """Write ``data`` to ``target`` (a placeholder path such as ``{lm}/config.yaml``)."""
    def setup(p):
        path = Path(fill(target, p))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return _setup(setup, target)


def append(target: str, data: bytes):
    def setup(p):
        with open(fill(target, p), "ab") as f:
            f.write(data)
    return _setup(setup, target)


def remove(target: str):
    def setup(p):
        Path(fill(target, p)).unlink()
    return _setup(setup, target)


def truncate(target: str, keep: int):
    def setup(p):
        path = Path(fill(target, p))
        path.write_bytes(path.read_bytes()[:keep])
    return _setup(setup, target)


def mkdir(target: str, mode: int = 0o755):
    def setup(p):
        path = Path(fill(target, p))
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    return _setup(setup, target)


def copy_file(src: str, dst: str):
    def setup(p):
        Path(fill(dst, p)).write_bytes(Path(fill(src, p)).read_bytes())
    return _setup(setup, src, dst)


def edit_yaml(target: str, edit: Callable[[dict, dict], None]):
    """Load a YAML file, ``edit(data, paths)`` it in place, write it back."""
    def setup(p):
        import yaml

        path = Path(fill(target, p))
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
        edit(d, p)
        path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return _setup(setup, target)


def state_payload(run: str, edit: Callable[[typing.Any], typing.Any]):
    """Rewrite the lmforge metadata of ``run``/train_state.safetensors: ``edit(payload)`` returns the new
    payload (a dict / list is JSON-encoded, a str is stored as is, None drops the metadata)."""
    def setup(p):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = Path(fill(run, p)) / "train_state.safetensors"
        with safe_open(str(path), framework="pt") as f:
            payload = json.loads(f.metadata()["lmforge"])
        tensors = load_file(str(path))
        new = edit(payload)
        save_file(tensors, str(path), metadata=None if new is None else {"lmforge": new if isinstance(new, str) else json.dumps(new)})
    return _setup(setup, run)


def state_tensors(run: str, edit: Callable[[dict], dict]):
    """Rewrite the tensors of ``run``/train_state.safetensors (its metadata kept)."""
    def setup(p):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = Path(fill(run, p)) / "train_state.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        save_file(edit(load_file(str(path))), str(path), metadata=meta)
    return _setup(setup, run)


def meta_set(**kv):
    def edit(payload):
        payload["meta"].update(kv)
        return payload
    return edit


def meta_drop(key):
    def edit(payload):
        payload["meta"].pop(key)
        return payload
    return edit


def payload_drop(key):
    def edit(payload):
        payload.pop(key)
        return payload
    return edit


def bigger_tokenizer(run: str):
    """Replace ``run``/tokenizer.json by one of 1000 tokens: more than its checkpoint's vocabulary (300)."""
    def setup(p):
        from lmforge.tokenizer import train_tokenizer

        text = Path(p["corpus"]).read_text(encoding="utf-8") if "corpus" in p else "the king and queen\n" * 50
        train_tokenizer([text * 3, "x y z " * 50, "".join(map(chr, range(0x4E00, 0x4FFF)))], 1000,
                        min_frequency=1).save(Path(fill(run, p)) / "tokenizer.json")
    return _setup(setup, run)


def labelled(name: str, text: str | bytes):
    return write("{tmp}/" + name, text)


# A YAML alias bomb inside one field: small on disk, a ~4 MB value once expanded (9^6 leaves).
BOMB = "model:\n  name:\n    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"    - &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcde", "bcdef"))

NEW = ("pretrain --config {tiny} --data.path {corpus} --data.vocab_size=300 --model.block_size=32 --train.max_steps=2 "
       "--train.batch_size=4 --train.eval_interval=0 --train.eval_batches=1 --out {tmp}/new")
RESUME = "pretrain --resume {lm} --train.max_steps=8"  # the run finished at step 6: an accepted bad value trains on
FT = ("finetune --finetune.data {labels} --base {lm} --train.max_steps=2 --train.batch_size=8 --train.eval_interval=0 "
      "--out {tmp}/new")
FT_RESUME = "finetune --resume {clf} --train.max_steps=6"
GEN = "generate {lm} --prompt hi --max-new-tokens 3"
DISTILL = "compress --method distill --teacher {lm} --student-config {student} --repeats 1 --max-batches 1 --out {tmp}/new"
PRUNE = "compress {lm} --method prune --repeats 1 --max-batches 1 --out {tmp}/new"
INT8 = "compress {lm} --method int8 --repeats 1 --max-batches 1"
SERVE = "serve {lm} --port 0"


def fields_of(sections, typ):
    from lmforge.config import option_specs

    return [name for name, t, _, _ in option_specs() if name.split(".")[0] in sections and t is typ]


NONFINITE = {"nan": "nan", "inf": "inf", "-inf": "-inf", "1e309": "1e309"}
