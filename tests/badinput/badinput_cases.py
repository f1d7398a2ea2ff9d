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


def _fields(sections, typ):
    from lmforge.config import option_specs

    return [name for name, t, _, _ in option_specs() if name.split(".")[0] in sections and t is typ]


NONFINITE = {"nan": "nan", "inf": "inf", "-inf": "-inf", "1e309": "1e309"}

# ============================================================================= top level, data
C("cli-unknown-verb", "train --config x", "invalid choice")
C("cli-unknown-flag", "--bogus", "--bogus")
C("data-get-unknown", "data get no-such-set", "no-such-set")
C("data-get-empty-name", ["data", "get", ""], "data set")
C("data-get-path", "data get ../../etc/passwd", "../../etc/passwd")
C("data-get-surrogate", ["data", "get", "\udcff\udcfe"], "data set")
C("data-get-missing-name", "data get", "name")
C("data-list-extra-argument", "data list extra", "extra")
C("data-unknown-action", "data fetch x", "invalid choice")

# ============================================================================= tokenizer train
TOK = "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/tok"
C("tokenizer-vocab-size-word", TOK.replace("300", "ten"), "--vocab-size")
C("tokenizer-vocab-size-3", TOK.replace("300", "3"), ("--vocab-size", "vocab_size"))
C("tokenizer-vocab-size-0", TOK.replace("300", "0"), ("--vocab-size", "vocab_size"))
C("tokenizer-vocab-size-negative", TOK.replace("300", "-1"), ("--vocab-size", "vocab_size"))
C("tokenizer-vocab-size-1e309", TOK.replace("300", "1e309"), "--vocab-size")
C("tokenizer-vocab-size-huge", TOK.replace("300", "99999999999999999999"), ("--vocab-size", "vocab_size"))
C("tokenizer-data-missing", "tokenizer train --data {tmp}/missing.txt --vocab-size 300 --out {tmp}/tok", "missing.txt")
C("tokenizer-data-empty", "tokenizer train --data {tmp}/empty.txt --vocab-size 300 --out {tmp}/tok", "empty.txt",
  write("{tmp}/empty.txt", "  \n"))
C("tokenizer-data-binary", "tokenizer train --data {tmp}/blob.txt --vocab-size 300 --out {tmp}/tok", "UTF-8",
  write("{tmp}/blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20))
C("tokenizer-data-surrogate", ["tokenizer", "train", "--data", "\udcff\udcfe", "--vocab-size", "300", "--out", "{tmp}/tok"],
  "data")
C("tokenizer-out-is-a-file", "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/afile", "afile",
  write("{tmp}/afile", "mine\n"))
C("tokenizer-out-under-a-file", "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/afile/tok", "afile",
  write("{tmp}/afile", "mine\n"))
C("tokenizer-out-proc", "tokenizer train --data {corpus} --vocab-size 300 --out /proc/lmforge-badinput/tok",
  "/proc/lmforge-badinput", absent=("/proc/lmforge-badinput",))
C("tokenizer-out-sys", "tokenizer train --data {corpus} --vocab-size 300 --out /sys/lmforge-badinput",
  "/sys/lmforge-badinput", absent=("/sys/lmforge-badinput",))
C("tokenizer-data-empty-string", ["tokenizer", "train", "--data", "", "--vocab-size", "300", "--out", "{tmp}/tok"], "--data",
  copy_file("{corpus}", "{tmp}/notes.txt"))  # "" must not mean "the .txt files of the current folder"
C("tokenizer-missing-out", "tokenizer train --data {corpus} --vocab-size 300", "--out")

# ============================================================================= pretrain: a new run
# every float field of model / data / train: not finite (nan, inf, -inf, 1e309 = inf)
for _f in _fields(("model", "data", "train"), float):
    for _k, _v in NONFINITE.items():
        C(f"pretrain-{_f}-{_k}", NEW + f" --{_f}={_v}", _f, form=True)
# every integer field: not a number, and (counts) negative
for _f in _fields(("model", "data", "train"), int):
    C(f"pretrain-{_f}-inf", NEW + f" --{_f}=inf", _f, form=True)
    if _f != "train.seed":
        C(f"pretrain-{_f}-negative", NEW + f" --{_f}=-1", _f, form=True)
# out of range
for _f, _v in [("train.beta1", "1.5"), ("train.beta1", "-0.1"), ("train.beta2", "1.0"), ("train.momentum", "-0.5"),
               ("train.gamma", "0"), ("train.gamma", "-1"), ("train.lr", "0"), ("train.min_lr_ratio", "2"),
               ("train.ema_decay", "1"), ("train.muon_momentum", "1.5"), ("model.dropout", "2"), ("model.dropout", "1.0"),
               ("model.norm_eps", "0"), ("model.norm_eps", "-1"), ("model.rope_theta", "0"), ("data.val_fraction", "1.5"),
               ("data.mask_prob", "0"), ("data.vocab_size", "3"), ("train.max_steps", "0"), ("train.batch_size", "0"),
               ("train.grad_accum", "0"), ("train.log_interval", "0"), ("model.n_head", "0"), ("model.generator_layers", "0")]:
    C(f"pretrain-{_f}-{_v}", NEW + f" --{_f}={_v}", _f, form=True)
C("pretrain-train.seed-2**64", NEW + f" --train.seed={2**64}", "train.seed", form=True)
C("pretrain-train.seed-10**30", NEW + f" --train.seed={10**30}", "train.seed", form=True)
C("pretrain-train.max_steps-1.5", NEW + " --train.max_steps=1.5", "train.max_steps")
C("pretrain-train.lr-word", NEW + " --train.lr=fast", "train.lr")
C("pretrain-train.compile-maybe", NEW + " --train.compile=maybe", "train.compile")
C("pretrain-train.optimizer-lion", NEW + " --train.optimizer=lion", "train.optimizer")
C("pretrain-train.schedule-linear", NEW + " --train.schedule=linear", "train.schedule")
C("pretrain-train.dtype-fp8", NEW + " --train.dtype=fp8", "train.dtype")
C("pretrain-train.device-tpu", NEW + " --train.device=tpu", "train.device")
C("pretrain-train.device-cuda", NEW + " --train.device=cuda", "train.device")
C("pretrain-model.name-lstm", NEW + " --model.name=lstm", "model.name")
C("pretrain-model.name-t5", NEW + " --model.name=t5", "model.name")
C("pretrain-model.n_embd-indivisible", NEW + " --model.n_embd=65", "model.n_embd")
C("pretrain-model.layer_n_head-word", NEW + " --model.layer_n_head=x", "model.layer_n_head")
C("pretrain-data.objective-mlm-for-gpt", NEW + " --data.objective=mlm", "data.objective")
C("pretrain-unknown-option", NEW + " --train.nope=1", "--train.nope")
C("pretrain-option-without-key", NEW + " --model=2", "--model")
C("pretrain-resume-and-config", "pretrain --resume {lm} --config {tiny}", "--resume")
C("pretrain-no-out", "pretrain --config {tiny} --data.path {corpus}", "--out")
C("pretrain-no-data", "pretrain --config {tiny} --out {tmp}/new", "data.path")
# checked only after the tokenizer was trained (issue 14, item 9): must be caught before any work
C("pretrain-model.vocab_size-3", NEW + " --model.vocab_size=3", "model.vocab_size")
C("pretrain-grad_accum-indivisible", NEW + " --train.batch_size=4 --train.grad_accum=3", "train.grad_accum")
C("pretrain-grad_accum-above-batch", NEW + " --train.batch_size=2 --train.grad_accum=4", "train.grad_accum")
# (the train split's length is known once it is tokenized: the tokenizer's progress line may come first)
C("pretrain-block_size-above-data", NEW + " --model.block_size=100000", "model.block_size", progress_ok=True)
# recipes (YAML)
R = NEW.replace("--config {tiny}", "--config {tmp}/r.yaml")
for _id, _text, _needle in [
    ("syntax", "model: {n_layer: 2\n", "r.yaml"),
    ("tab-indent", "train:\n\tlr: 0.1\n", "r.yaml"),
    ("top-level-list", "- model\n- train\n", "r.yaml"),
    ("top-level-scalar", "just words\n", "r.yaml"),
    ("section-list", "train: [1, 2]\n", "train"),
    ("unknown-section", "training: {lr: 0.1}\n", "training"),
    ("unknown-key", "train: {learning_rate: 0.1}\n", "train.learning_rate"),
    ("wrong-type", "model: {n_layer: two}\n", "model.n_layer"),
    ("bool-word", "model: {bias: maybe}\n", "model.bias"),
    ("list-for-int", "train: {max_steps: [1, 2]}\n", "train.max_steps"),
    ("mapping-for-float", "train: {lr: {a: 1}}\n", "train.lr"),
    ("lr-nan", "train: {lr: .nan}\n", "train.lr"),
    ("lr-inf", "train: {lr: .inf}\n", "train.lr"),
    ("lr-overflow", "train: {lr: 1.0e+400}\n", "train.lr"),
    ("beta1-1.5", "train: {beta1: 1.5}\n", "train.beta1"),
    ("weight_decay-nan", "train: {weight_decay: .nan}\n", "train.weight_decay"),
    ("dropout-2", "model: {dropout: 2}\n", "model.dropout"),
    ("seed-2**64", f"train: {{seed: {2**64}}}\n", "train.seed"),
    ("max_steps-float", "train: {max_steps: 1.5}\n", "train.max_steps"),
    ("alias-bomb", BOMB, "model.name"),
]:
    C(f"pretrain-recipe-{_id}", R, _needle, write("{tmp}/r.yaml", _text))
C("pretrain-recipe-not-utf8", R, "r.yaml", write("{tmp}/r.yaml", b"model: {name: \xff\xfe}\n"))
C("pretrain-recipe-missing", R, "r.yaml")
C("pretrain-recipe-is-a-folder", R, "r.yaml", mkdir("{tmp}/r.yaml"))
# data
C("pretrain-data-missing", NEW.replace("{corpus}", "{tmp}/missing.txt"), "missing.txt")
C("pretrain-data-empty", NEW.replace("{corpus}", "{tmp}/empty.txt"), "empty.txt", write("{tmp}/empty.txt", "  \n"))
C("pretrain-data-binary", NEW.replace("{corpus}", "{tmp}/blob.txt"), "UTF-8",
  write("{tmp}/blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20))
C("pretrain-data-latin1", NEW.replace("{corpus}", "{tmp}/latin1.txt"), "UTF-8",
  write("{tmp}/latin1.txt", "café au lait ".encode("latin-1") * 10))
C("pretrain-data-folder-without-txt", NEW.replace("{corpus}", "{tmp}/notext"), ".txt", write("{tmp}/notext/a.csv", "x,y\n"))
C("pretrain-data-empty-between-commas", NEW.replace("{corpus}", "{corpus},,{corpus}"), "data.path")
C("pretrain-data-model-set", NEW.replace("{corpus}", "minilm-l6"), "minilm-l6")
C("pretrain-data-unknown-set", NEW.replace("{corpus}", "no-such-set"), "no-such-set")
C("pretrain-data-surrogate", NEW.replace("{corpus}", "\udcff\udcfe"), ("data.path", "data set"))
C("pretrain-data-tokenizer-missing", NEW + " --data.tokenizer={tmp}/nope.json", "nope.json")
C("pretrain-data-tokenizer-garbage", NEW + " --data.tokenizer={tmp}/tok.json", "tok.json", write("{tmp}/tok.json", "{not json"))
C("pretrain-data-tokenizer-foreign", NEW + " --data.tokenizer={tmp}/tok.json", "tok.json",
  write("{tmp}/tok.json", '{"hello": 1}'))
# --out
C("pretrain-out-holds-a-run", NEW.replace("{tmp}/new", "{lm}"), "already holds a run")
C("pretrain-out-not-empty-not-a-run", NEW.replace("{tmp}/new", "{tmp}/mine"), "mine",
  write("{tmp}/mine/model.safetensors", b"my own weights"), write("{tmp}/mine/notes.txt", "keep\n"))
C("pretrain-out-holds-other-files", NEW.replace("{tmp}/new", "{tmp}/mine"), "mine", write("{tmp}/mine/notes.txt", "keep\n"))
C("pretrain-out-is-a-file", NEW.replace("{tmp}/new", "{tmp}/afile"), "afile", write("{tmp}/afile", "mine\n"))
C("pretrain-out-under-a-file", NEW.replace("{tmp}/new", "{tmp}/afile/run"), "afile", write("{tmp}/afile", "mine\n"))
C("pretrain-out-proc", NEW.replace("{tmp}/new", "/proc/lmforge-badinput/run"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("pretrain-out-sys", NEW.replace("{tmp}/new", "/sys/lmforge-badinput"), "/sys/lmforge-badinput",
  absent=("/sys/lmforge-badinput",))
C("pretrain-out-empty-string", shlex.split(NEW.replace("--out {tmp}/new", "")) + ["--out", ""], "--out")

# ============================================================================= pretrain --resume
for _f, _v in [("train.lr", "nan"), ("train.lr", "inf"), ("train.lr", "-inf"), ("train.lr", "1e309"), ("train.beta1", "1.5"),
               ("train.weight_decay", "nan"), ("train.grad_clip", "inf"), ("train.ema_decay", "nan"),
               ("train.min_lr_ratio", "nan"), ("train.seed", str(2**64)), ("train.lr", "abc")]:
    C(f"resume-{_f}-{_v if len(_v) < 8 else '2**64'}", RESUME + f" --{_f}={_v}", _f, form=True)
C("resume-model-override-mismatch", RESUME + " --model.n_layer=3", ("model.n_layer", "train_state.safetensors", "config.yaml"))
C("resume-not-a-run", "pretrain --resume {tmp}", "not an lmforge run directory")
C("resume-missing", "pretrain --resume {tmp}/nowhere", "not found")
C("resume-a-file", "pretrain --resume {corpus}", "corpus.txt")
C("resume-compressed-run", "pretrain --resume {int8}", "cannot be resumed")
C("resume-a-fine-tuned-run", "pretrain --resume {clf}", ("finetune", "classifier"),
  copy_file("{corpus}", "{tmp}/notes.txt"))  # its data.path is empty: never the current folder's text
C("resume-empty-string", ["pretrain", "--resume", ""], "--resume")
# weights but no training state (issue 14, item 1): refuse, never train over model.safetensors
C("resume-train-state-missing", "pretrain --resume {lm}", "train_state.safetensors", remove("{lm}/train_state.safetensors"))
C("resume-train-state-missing-override", RESUME, "train_state.safetensors", remove("{lm}/train_state.safetensors"))
# a bad training state (issue 14, items 3 and 12): one line, and config.yaml is not rewritten first
_S = "{lm}/train_state.safetensors"
C("resume-train-state-garbage", "pretrain --resume {lm}", "train_state.safetensors", write(_S, b"garbage"))
C("resume-train-state-garbage-override", RESUME, "train_state.safetensors", write(_S, b"garbage"))
C("resume-train-state-empty", RESUME, "train_state.safetensors", write(_S, b""))
C("resume-train-state-truncated", RESUME, "train_state.safetensors", truncate(_S, 4000))
C("resume-train-state-no-metadata", RESUME, "train_state.safetensors", state_payload("{lm}", lambda p: None))
C("resume-train-state-metadata-not-json", RESUME, "train_state.safetensors", state_payload("{lm}", lambda p: "{not json"))
C("resume-train-state-metadata-list", RESUME, "train_state.safetensors", state_payload("{lm}", lambda p: [1, 2]))
C("resume-train-state-no-meta", RESUME, "train_state.safetensors", state_payload("{lm}", payload_drop("meta")))
C("resume-train-state-no-optimizer", RESUME, "train_state.safetensors", state_payload("{lm}", payload_drop("optimizer")))
C("resume-train-state-step-negative", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step=-1)))
C("resume-train-state-step-float", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step=2.5)))
C("resume-train-state-step-string", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step="6")))
C("resume-train-state-step-null", RESUME, ("train_state.safetensors", "step"), state_payload("{lm}", meta_set(step=None)))
C("resume-train-state-no-tokens", RESUME, ("train_state.safetensors", "tokens"), state_payload("{lm}", meta_drop("tokens")))
C("resume-train-state-optimizer-empty", RESUME, ("train_state.safetensors", "optimizer"),
  state_payload("{lm}", lambda p: {**p, "optimizer": {"param_groups": [], "state": {}}}))
C("resume-train-state-wrong-shape", RESUME, "train_state.safetensors",
  state_tensors("{lm}", lambda t: {**t, "model.transformer.wte.weight": t["model.transformer.wte.weight"][:10]}))
C("resume-train-state-foreign", RESUME, "train_state.safetensors",
  copy_file("{clf}/train_state.safetensors", "{lm}/train_state.safetensors"))
# other files of the run dir
C("resume-config-empty", RESUME, "config.yaml", write("{lm}/config.yaml", ""))
C("resume-config-syntax", RESUME, "config.yaml", write("{lm}/config.yaml", "model: {n_layer: 2\n"))
C("resume-config-list", RESUME, "config.yaml", write("{lm}/config.yaml", "- model\n- train\n"))
C("resume-config-unknown-key", RESUME, "model.n_lyer", edit_yaml("{lm}/config.yaml", lambda d, p: d["model"].update(n_lyer=2)))
C("resume-config-lr-nan", "pretrain --resume {lm}", "train.lr", edit_yaml("{lm}/config.yaml", lambda d, p: d["train"].update(lr=float("nan"))))
C("resume-config-not-utf8", RESUME, "config.yaml", write("{lm}/config.yaml", b"model:\n  name: \xff\xfe\n"))
C("resume-config-foreign-json", RESUME, "config.yaml", write("{lm}/config.yaml", '{"architectures": ["GPT2LMHeadModel"]}'))
C("resume-tokenizer-garbage", RESUME, "tokenizer.json", write("{lm}/tokenizer.json", "{not json"))
C("resume-tokenizer-empty", RESUME, "tokenizer.json", write("{lm}/tokenizer.json", ""))
C("resume-tokenizer-missing", RESUME, "tokenizer.json", remove("{lm}/tokenizer.json"))
C("resume-data-meta-garbage", RESUME, "meta.json", write("{lm}/data/meta.json", "{"))
C("resume-data-meta-foreign", RESUME, "meta.json", write("{lm}/data/meta.json", "[]"))
C("resume-data-train-bin-truncated", RESUME, "train.bin", truncate("{lm}/data/train.bin", 100))

# ============================================================================= finetune
for _f in _fields(("finetune",), float) + ["train.lr", "train.weight_decay"]:
    for _k, _v in NONFINITE.items():
        C(f"finetune-{_f}-{_k}", FT + f" --{_f}={_v}", _f, form=True)
for _f in _fields(("lora",), float):
    for _k, _v in NONFINITE.items():
        C(f"finetune-{_f}-{_k}", FT + f" --finetune.mode=lora --{_f}={_v}", _f, form=True)
for _f in _fields(("finetune", "lora"), int):
    C(f"finetune-{_f}-inf", FT + f" --{_f}=inf", _f, form=True)
    C(f"finetune-{_f}-negative", FT + f" --{_f}=-1", _f, form=True)
for _f, _v in [("finetune.head_dropout", "1"), ("finetune.dropout", "2"), ("finetune.layer_lr_decay", "0"),
               ("finetune.max_length", "0"), ("finetune.mode", "half"), ("finetune.pooling", "median"), ("lora.rank", "0"),
               ("lora.dropout", "1.5"), ("lora.alpha", "0")]:
    C(f"finetune-{_f}-{_v}", FT + f" --finetune.mode=lora --{_f}={_v}" if _f.startswith("lora") else FT + f" --{_f}={_v}", _f)
C("finetune-train.seed-2**64", FT + f" --train.seed={2**64}", "train.seed", form=True)
C("finetune-lora.targets-nothing", FT + " --finetune.mode=lora --lora.targets=nothing_here", "nothing_here")
C("finetune-lora.targets-empty", FT + " --finetune.mode=lora --lora.targets=", "lora.targets")
C("finetune-labels-one-given", FT + " --finetune.labels=positive", ("negative", "finetune.labels"))
C("finetune-text_column-missing", FT + " --finetune.text_column=review", "review")
C("finetune-no-data", "finetune --base {lm} --out {tmp}/new", "finetune.data")
C("finetune-resume-and-config", "finetune --resume {clf} --config {tiny}", "--resume")
# labelled files
def _ftf(name: str) -> str:
    return FT.replace("{labels}", "{tmp}/" + name)



for _name, _text, _needle in [
    ("one-label.tsv", "text\tlabel\n" + "".join(f"text number {i}\tpositive\n" for i in range(40)), "label"),
    ("empty-text.tsv", "text\tlabel\nhello\tpositive\n\tnegative\n", "empty"),
    ("no-label-column.tsv", "text\tstars\nhello\t5\n", "label"),
    ("three-fields.csv", "text,label\nok,pos\none, two,neg\n", "three-fields.csv:3"),
    ("bad-quoting.csv", 'text,label\nok,pos\n"open quote,neg\nmore,pos\n', "bad-quoting.csv:3"),
    ("bad-json.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x", "label": "b"\n', "bad-json.jsonl:2"),
    ("json-list.jsonl", '{"text": "ok", "label": "a"}\n["x", "b"]\n', "json-list.jsonl:2"),
    ("label-float.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x", "label": 1.5}\n', "label-float.jsonl:2"),
    ("label-null.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x", "label": null}\n', "label-null.jsonl:2"),
    ("text-number.jsonl", '{"text": 5, "label": "a"}\n', "text-number.jsonl:1"),
    ("empty.tsv", "", "empty.tsv"),
    ("header-only.tsv", "text\tlabel\n", "header-only.tsv"),
    ("tab-in-csv.csv", "text\tlabel\nok\tpos\n", "tab-in-csv.csv"),
    ("sheet.xlsx", "x", ".xlsx"),
]:
    C(f"finetune-data-{_name.rsplit('.', 1)[0]}", _ftf(_name), _needle, labelled(_name, _text))
C("finetune-data-not-utf8", _ftf("latin.tsv"), "latin.tsv", labelled("latin.tsv", b"text\tlabel\ncaf\xe9\tpos\nok\tneg\n"))
C("finetune-data-utf16", _ftf("u16.tsv"), "u16.tsv", labelled("u16.tsv", "text\tlabel\nok\tpos\n".encode("utf-16")))
C("finetune-data-missing", _ftf("nope.tsv"), "nope.tsv")
C("finetune-data-unknown-set", FT.replace("{labels}", "imdb"), "imdb")
C("finetune-data-text-set", FT.replace("{labels}", "minilm-l6"), "minilm-l6")
C("finetune-data-surrogate", FT.replace("{labels}", "\udcff\udcfe"), ("finetune.data", "data set"))
# starting points
C("finetune-base-missing", FT.replace("--base {lm}", "--base {tmp}/nowhere"), "nowhere")
C("finetune-base-not-a-run", FT.replace("--base {lm}", "--base {tmp}/notrun"), "notrun", write("{tmp}/notrun/x.txt", "x"))
C("finetune-base-is-a-classifier", FT.replace("--base {lm}", "--base {clf}"), ("--base", "finetune.base", "classifier"))
C("finetune-base-weights-truncated", FT, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("finetune-base-config-empty", FT, "config.yaml", write("{lm}/config.yaml", ""))
C("finetune-base-tokenizer-larger", FT, "smaller than the tokenizer", bigger_tokenizer("{lm}"))
C("finetune-base-empty-string", shlex.split(FT.replace("--base {lm}", "")) + ["--base", ""], "--base")
C("finetune-base-hf-empty-string", shlex.split(FT.replace("--base {lm}", "")) + ["--base-hf", ""], "--base-hf")
C("finetune-base-and-base-hf", FT + " --base-hf {tmp}/hf", "finetune.base")
C("finetune-base-hf-missing", FT.replace("--base {lm}", "--base-hf {tmp}/nohf"), "nohf")
C("finetune-base-hf-empty-folder", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "hfdir", mkdir("{tmp}/hfdir"))
C("finetune-base-hf-config-garbage", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "config.json",
  write("{tmp}/hfdir/config.json", "{"))
C("finetune-base-hf-config-list", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "config.json",
  write("{tmp}/hfdir/config.json", "[1]"))
C("finetune-base-hf-unknown-type", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "t5",
  write("{tmp}/hfdir/config.json", '{"model_type": "t5"}'))
C("finetune-base-hf-no-weights", FT.replace("--base {lm}", "--base-hf {tmp}/hfdir"), "hfdir",
  write("{tmp}/hfdir/config.json", '{"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 300, '
        '"n_positions": 32}'))
C("finetune-base-hf-a-file", FT.replace("--base {lm}", "--base-hf {corpus}"), "corpus.txt")
C("finetune-base-recipe-without-base", FT.replace("--base {lm}", "--finetune.base_recipe={tiny}"), "finetune.base_recipe")
C("finetune-base-recipe-missing", FT.replace("--base {lm}", "--base {tmp}/newbase --finetune.base_recipe={tmp}/no.yaml"),
  "finetune.base_recipe")
# --out
C("finetune-out-holds-a-run", FT.replace("{tmp}/new", "{clf}"), "already holds a run")
C("finetune-out-not-empty-not-a-run", FT.replace("{tmp}/new", "{tmp}/mine"), "mine",
  write("{tmp}/mine/model.safetensors", b"my own weights"))
C("finetune-out-is-a-file", FT.replace("{tmp}/new", "{tmp}/afile"), "afile", write("{tmp}/afile", "mine\n"))
C("finetune-out-proc", FT.replace("{tmp}/new", "/proc/lmforge-badinput/run"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("finetune-out-sys", FT.replace("{tmp}/new", "/sys/lmforge-badinput"), "/sys/lmforge-badinput",
  absent=("/sys/lmforge-badinput",))
# --resume
for _f, _v in [("train.lr", "nan"), ("train.lr", "inf"), ("finetune.head_dropout", "nan"), ("train.beta1", "1.5")]:
    C(f"finetune-resume-{_f}-{_v}", FT_RESUME + f" --{_f}={_v}", _f, form=True)
C("finetune-resume-lora-dropout-nan", "finetune --resume {lora} --train.max_steps=6 --lora.dropout=nan", "lora.dropout")
C("finetune-resume-lora-rank-changed", "finetune --resume {lora} --train.max_steps=6 --lora.rank=4",
  ("lora.rank", "train_state.safetensors", "config.yaml"))
C("finetune-resume-a-pretraining-run", "finetune --resume {lm}", ("pretrain", "finetune.data"))
C("finetune-resume-train-state-missing", FT_RESUME, "train_state.safetensors", remove("{clf}/train_state.safetensors"))
C("finetune-resume-train-state-garbage", FT_RESUME, "train_state.safetensors", write("{clf}/train_state.safetensors", b"xx"))
C("finetune-resume-train-state-no-meta", FT_RESUME, "train_state.safetensors", state_payload("{clf}", payload_drop("meta")))
C("finetune-resume-config-empty", FT_RESUME, "config.yaml", write("{clf}/config.yaml", ""))
C("finetune-resume-data-gone", FT_RESUME, "gone.tsv",
  edit_yaml("{clf}/config.yaml", lambda d, p: d["finetune"].update(data=str(p["tmp"] / "gone.tsv"))))
C("finetune-resume-labels-changed", FT_RESUME, ("finetune.labels", "train_state.safetensors", "label"),
  edit_yaml("{clf}/config.yaml", lambda d, p: d["finetune"].update(labels="negative,neutral,positive")))

# ============================================================================= generate
_T, _P, _K = ("--temperature", "temperature"), ("--top-p", "top_p"), ("--top-k", "top_k")
for _id, _arg, _needle in [
    ("temperature-nan", "--temperature=nan", _T), ("temperature-inf", "--temperature=inf", _T),
    ("temperature--inf", "--temperature=-inf", _T), ("temperature-1e309", "--temperature=1e309", _T),
    ("temperature-negative", "--temperature=-1", _T), ("temperature-word", "--temperature=warm", "--temperature"),
    ("top-p-nan", "--top-p=nan", _P), ("top-p-inf", "--top-p=inf", _P), ("top-p-1e309", "--top-p=1e309", _P),
    ("top-p-1e-300", "--top-p=1e-300", _P), ("top-p-0", "--top-p=0", _P), ("top-p-1.5", "--top-p=1.5", _P),
    ("top-p-negative", "--top-p=-0.1", _P),
    ("top-k-negative", "--top-k=-1", _K), ("top-k-float", "--top-k=1.5", "--top-k"),
    ("max-new-tokens-negative", "--max-new-tokens=-1", ("--max-new-tokens", "max_new_tokens")),
    ("max-new-tokens-word", "--max-new-tokens=x", "--max-new-tokens"),
    ("seed-2**64", f"--seed={2**64}", "seed"), ("seed-10**30", f"--seed={10**30}", "seed"),
    ("seed-below-int64", f"--seed={-2**63 - 1}", "seed"), ("seed-word", "--seed=x", "--seed"),
    ("device-tpu", "--device=tpu", "device"), ("device-cuda", "--device=cuda:7", "device"),
]:
    C(f"generate-{_id}", shlex.split(GEN) + [_arg], _needle, form=not isinstance(_needle, str) or _needle == "seed")
C("generate-prompt-invalid-utf8", ["generate", "{lm}", "--prompt", "\udcff\udcfe", "--max-new-tokens", "3"], "--prompt")
C("generate-prompt-lone-surrogate", ["generate", "{lm}", "--prompt", "a\ud800b", "--max-new-tokens", "3"], "--prompt")
C("generate-no-prompt", "generate {lm}", "--prompt")
C("generate-classifier", "generate {clf} --prompt hi", "causal language model")
C("generate-lstm-classifier", "generate {lstm} --prompt hi", "causal language model")
C("generate-not-a-run", "generate {tmp} --prompt hi", "not an lmforge run directory")
C("generate-missing-run", "generate {tmp}/nowhere --prompt hi", "not found")
C("generate-weights-truncated", GEN, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("generate-weights-missing", GEN, "model.safetensors", remove("{lm}/model.safetensors"))
C("generate-weights-foreign", GEN, "model.safetensors", copy_file("{clf}/model.safetensors", "{lm}/model.safetensors"))
C("generate-config-syntax", GEN, "config.yaml", write("{lm}/config.yaml", "model: {\n"))
C("generate-config-empty", GEN, "config.yaml", write("{lm}/config.yaml", ""))
C("generate-config-foreign-json", GEN, "config.yaml", write("{lm}/config.yaml", '{"architectures": ["GPT2LMHeadModel"]}'))
C("generate-config-vocab-too-small", GEN, "vocab_size", edit_yaml("{lm}/config.yaml", lambda d, p: d["model"].update(vocab_size=100)))
C("generate-tokenizer-missing", GEN, "tokenizer.json", remove("{lm}/tokenizer.json"))
C("generate-tokenizer-garbage", GEN, "tokenizer.json", write("{lm}/tokenizer.json", "{not json"))

# ============================================================================= evaluate
EV = "evaluate {lm}"
C("evaluate-max-batches-negative", EV + " --max-batches -1", "--max-batches", form=True)
C("evaluate-max-batches-0", EV + " --max-batches 0", "--max-batches", form=True)
C("evaluate-max-batches-word", EV + " --max-batches few", "--max-batches")
C("evaluate-split-test-lm", EV + " --split test", "--split")
C("evaluate-split-bogus", EV + " --split dev", "invalid choice")
C("evaluate-json-a-folder", EV + " --json {tmp}", "{tmp}")
C("evaluate-json-under-a-file", EV + " --json {corpus}/e.json", "{corpus}")
C("evaluate-json-proc", EV + " --json /proc/lmforge-badinput/e.json", "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("evaluate-json-sys", EV + " --json /sys/lmforge-badinput.json", "/sys/lmforge-badinput.json",
  absent=("/sys/lmforge-badinput.json",))
C("evaluate-json-empty-string", shlex.split(EV) + ["--json", ""], "--json")
C("evaluate-not-a-run", "evaluate {tmp}", "not an lmforge run directory")
C("evaluate-data-missing", EV + " --data {tmp}/nope.txt", "nope.txt")
C("evaluate-data-binary", EV + " --data {tmp}/blob.txt", "UTF-8", write("{tmp}/blob.txt", b"\x00\xff\xfe" * 50))
C("evaluate-data-empty", EV + " --data {tmp}/empty.txt", "empty.txt", write("{tmp}/empty.txt", "\n"))
C("evaluate-data-empty-string", shlex.split(EV) + ["--data", ""], "--data", copy_file("{corpus}", "{tmp}/notes.txt"))
C("evaluate-data-surrogate", shlex.split(EV) + ["--data", "\udcff\udcfe"], ("--data", "data set"))
C("evaluate-weights-truncated", EV, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("evaluate-weights-empty", EV, "model.safetensors", write("{lm}/model.safetensors", b""))
C("evaluate-data-meta-missing", EV, "meta.json", remove("{lm}/data/meta.json"))
C("evaluate-data-val-bin-truncated", EV, "val.bin", truncate("{lm}/data/val.bin", 10))
C("evaluate-config-lr-nan", EV, "train.lr", edit_yaml("{lm}/config.yaml", lambda d, p: d["train"].update(lr=float("nan"))))
C("evaluate-classifier-unseen-label", "evaluate {clf} --data {tmp}/u.tsv", "neutral",
  labelled("u.tsv", "text\tlabel\nhello there\tneutral\n"))
C("evaluate-classifier-label-column-missing", "evaluate {clf} --data {labels} --label-column stars", "stars")
C("evaluate-classifier-bad-json", "evaluate {clf} --data {tmp}/b.jsonl", "b.jsonl:2",
  labelled("b.jsonl", '{"text": "a", "label": "positive"}\n{"text": \n'))
C("evaluate-classifier-json-a-folder", "evaluate {clf} --json {tmp}", "{tmp}")

# ============================================================================= predict
C("predict-text-invalid-utf8", ["predict", "{clf}", "\udcff\udcfe"], ("UTF-8", "text"))
C("predict-text-lone-surrogate", ["predict", "{clf}", "fine", "a\ud800b"], ("UTF-8", "text"))
C("predict-language-model", "predict {lm} hello", "not a fine-tuned classifier")
C("predict-no-text", "predict {clf}", "no text given")
C("predict-not-a-run", "predict {tmp} hello", "not an lmforge run directory")
C("predict-input-missing", "predict {clf} --input {tmp}/nope.jsonl", "nope.jsonl")
C("predict-input-a-folder", "predict {clf} --input {tmp}/d.jsonl", "d.jsonl", mkdir("{tmp}/d.jsonl"))
C("predict-input-bad-json", "predict {clf} --input {tmp}/b.jsonl", "b.jsonl:2", labelled("b.jsonl", '{"text": "fine"}\n{"text": \n'))
C("predict-input-no-key", "predict {clf} --input {tmp}/b.jsonl", "b.jsonl:2", labelled("b.jsonl", '{"text": "fine"}\n{"txt": "oops"}\n'))
C("predict-input-json-list", "predict {clf} --input {tmp}/b.jsonl", "b.jsonl:1", labelled("b.jsonl", '["a list"]\n'))
C("predict-input-empty", "predict {clf} --input {tmp}/e.txt", "e.txt", labelled("e.txt", "\n\n"))
C("predict-input-not-utf8", "predict {clf} --input {tmp}/l.txt", "l.txt", labelled("l.txt", b"caf\xe9\n"))
C("predict-input-xlsx", "predict {clf} --input {tmp}/s.xlsx", ".xlsx", labelled("s.xlsx", "x"))
C("predict-input-text-column-missing", "predict {clf} --input {labels} --text-column body", "body")
C("predict-input-empty-text", "predict {clf} --input {tmp}/d.tsv", "d.tsv:2", labelled("d.tsv", "text\tid\n\t3\n"))
C("predict-lora-base-gone", "predict {lora} hello", "gone",
  edit_yaml("{lora}/config.yaml", lambda d, p: d["finetune"].update(base=str(p["tmp"] / "gone"))))
C("predict-weights-truncated", "predict {clf} hello", "model.safetensors", truncate("{clf}/model.safetensors", 100))

# ============================================================================= export
EX = "export {lm} --format onnx --out {tmp}/new"
C("export-not-a-run", "export {tmp} --format onnx --out {tmp}/new", "not an lmforge run directory")
C("export-format-bogus", "export {lm} --format tflite --out {tmp}/new", "invalid choice")
C("export-out-not-empty", EX.replace("{tmp}/new", "{tmp}/mine"), "mine", write("{tmp}/mine/keep.txt", "mine"))
C("export-out-is-a-file", EX.replace("{tmp}/new", "{tmp}/afile"), "afile", write("{tmp}/afile", "mine"))
C("export-out-is-the-run", EX.replace("{tmp}/new", "{lm}"), "{lm}")
C("export-out-under-a-file", EX.replace("{tmp}/new", "{tmp}/afile/x"), "afile", write("{tmp}/afile", "mine"))
C("export-out-proc", EX.replace("{tmp}/new", "/proc/lmforge-badinput/x"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("export-out-sys", EX.replace("{tmp}/new", "/sys/lmforge-badinput"), "/sys/lmforge-badinput",
  absent=("/sys/lmforge-badinput",))
C("export-out-empty-string", ["export", "{lm}", "--format", "onnx", "--out", ""], "--out")
C("export-hf-lstm", "export {lstm} --format hf --out {tmp}/new", "LSTM")
C("export-hf-mean-pooling", "export {clf} --format hf --out {tmp}/new", "pooling=mean",
  edit_yaml("{clf}/config.yaml", lambda d, p: d["finetune"].update(pooling="mean")))
C("export-int8-run", "export {int8} --format onnx --out {tmp}/new", "int8")
C("export-weights-truncated", EX, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("export-tokenizer-garbage", EX, "tokenizer.json", write("{lm}/tokenizer.json", "[]"))

# ============================================================================= compress: int8, prune
C("compress-not-a-run", "compress {tmp} --method int8 --out {tmp}/new", "not an lmforge run directory")
C("compress-missing-run", "compress {tmp}/nowhere --method int8 --out {tmp}/new", "not found")
C("compress-no-run", "compress --method int8 --out {tmp}/new", "give the run directory")
C("compress-method-bogus", "compress {lm} --method fp4 --out {tmp}/new", "invalid choice")
C("compress-int8-of-int8", "compress {int8} --method int8 --out {tmp}/new", "already int8")
C("compress-int8-with-sparsity", INT8 + " --sparsity 0.5 --out {tmp}/new", "--sparsity")
C("compress-int8-with-overrides", INT8 + " --train.max_steps=3 --out {tmp}/new", "apply to --method distill")
C("compress-int8-repeats-0", INT8.replace("--repeats 1", "--repeats 0") + " --out {tmp}/new", "--repeats", form=True)
C("compress-int8-repeats-negative", INT8.replace("--repeats 1", "--repeats -3") + " --out {tmp}/new", "--repeats", form=True)
C("compress-int8-max-batches-negative", INT8.replace("--max-batches 1", "--max-batches -1") + " --out {tmp}/new", "--max-batches", form=True)
C("compress-int8-max-batches-0", INT8.replace("--max-batches 1", "--max-batches 0") + " --out {tmp}/new", "--max-batches", form=True)
C("compress-int8-data-missing", INT8 + " --data {tmp}/nope.txt --out {tmp}/new", "nope.txt")
C("compress-int8-out-not-empty", INT8 + " --out {tmp}/mine", "mine", write("{tmp}/mine/x", "x"))
C("compress-int8-out-is-a-file", INT8 + " --out {tmp}/afile", "afile", write("{tmp}/afile", "x"))
C("compress-int8-out-is-the-run", INT8 + " --out {lm}", "is the run being compressed")
C("compress-int8-out-proc", INT8 + " --out /proc/lmforge-badinput/x", "/proc/lmforge-badinput", absent=("/proc/lmforge-badinput",))
C("compress-int8-out-sys", INT8 + " --out /sys/lmforge-badinput", "/sys/lmforge-badinput", absent=("/sys/lmforge-badinput",))
C("compress-int8-out-empty-string", shlex.split(INT8) + ["--out", ""], "--out")
C("compress-int8-weights-truncated", INT8 + " --out {tmp}/new", "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("compress-int8-config-empty", INT8 + " --out {tmp}/new", "config.yaml", write("{lm}/config.yaml", ""))
for _k, _v in [*NONFINITE.items(), ("1.0", "1.0"), ("0", "0"), ("1.5", "1.5"), ("negative", "-0.5")]:
    C(f"compress-prune-sparsity-{_k}", PRUNE + f" --sparsity={_v}", "--sparsity", form=True)
C("compress-prune-sparsity-missing", PRUNE, "--sparsity")
C("compress-prune-recover-steps-negative", PRUNE + " --sparsity 0.5 --recover-steps -1", "--recover-steps", form=True)
for _k, _v in [*NONFINITE.items(), ("negative", "-1"), ("0", "0")]:
    C(f"compress-prune-recover-lr-{_k}", PRUNE + f" --sparsity 0.5 --recover-steps 2 --recover-lr={_v}", "--recover-lr", form=True)
C("compress-prune-gradual-without-recovery", PRUNE + " --sparsity 0.5 --gradual", "--gradual")
C("compress-prune-gradual-structured", PRUNE + " --sparsity 0.5 --gradual --recover-steps 9 --structured heads", "--gradual")
C("compress-prune-structured-lstm", "compress {lstm} --method prune --sparsity 0.5 --structured heads --out {tmp}/new", "LSTM")
C("compress-prune-structured-bogus", PRUNE + " --sparsity 0.5 --structured layers", "invalid choice")

# ============================================================================= compress: distill
for _f in _fields(("distill",), float):
    for _k, _v in NONFINITE.items():
        C(f"distill-{_f}-{_k}", DISTILL + f" --{_f}={_v}", _f, form=True)
for _f, _v in [("distill.temperature", "0"), ("distill.alpha", "1.5"), ("distill.hidden_weight", "-1"), ("train.lr", "nan"),
               ("train.lr", "inf"), ("train.beta1", "1.5"), ("model.dropout", "nan")]:
    C(f"distill-{_f}-{_v}", DISTILL + f" --{_f}={_v}", _f, form=True)
C("distill-train.seed-2**64", DISTILL + f" --train.seed={2**64}", "train.seed", form=True)
_DS = DISTILL.replace("{student}", "{tmp}/s.yaml")
for _id, _text, _needle in [("syntax", "model: {n_layer: 1\n", "s.yaml"), ("list", "- model\n", "s.yaml"),
                            ("unknown-key", "distill: {temprature: 2}\n", "distill.temprature"),
                            ("lr-nan", "model: {n_layer: 1, n_embd: 32, block_size: 32}\ntrain: {lr: .nan, max_steps: 2}\n", "train.lr"),
                            ("alias-bomb", BOMB, "model.name")]:
    C(f"distill-student-{_id}", _DS, _needle, write("{tmp}/s.yaml", _text))
C("distill-student-missing", _DS, "s.yaml")
_DC = DISTILL.replace("--teacher {lm}", "--teacher {clf}").replace("{student}", "{tmp}/s.yaml")
_LSTM = "model: {name: lstm, n_embd: 16, n_layer: 1}\ntrain: {max_steps: 2, batch_size: 8, eval_interval: 0}\n"
for _id, _text, _needle in [("vocab", _LSTM + "data: {vocab_size: 4096}\n", "tokenizer mismatch"),
                            ("model-vocab", _LSTM.replace("n_layer: 1", "n_layer: 1, vocab_size: 999"), "tokenizer mismatch"),
                            ("data-differs", _LSTM + "finetune: {data: chn-reviews}\n", "finetune.data"),
                            ("base", _LSTM + "finetune: {base: /nowhere}\n", "from scratch"),
                            ("alpha", _LSTM + "distill: {alpha: 1.5}\n", "distill.alpha")]:
    C(f"distill-classifier-student-{_id}", _DC, _needle, write("{tmp}/s.yaml", _text))
C("distill-student-lstm-for-lm", _DS, "must be a gpt too", write("{tmp}/s.yaml", _LSTM))
C("distill-student-block-too-long", _DS, "model.block_size",
  write("{tmp}/s.yaml", "model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 128}\ntrain: {max_steps: 2}\n"))
C("distill-teacher-no-weights", DISTILL, "model.safetensors", remove("{lm}/model.safetensors"))
C("distill-gradual", DISTILL + " --gradual", "--gradual")
C("compress-int8-with-teacher", INT8 + " --teacher {lm} --out {tmp}/new", "apply to --method distill")
C("distill-teacher-missing", DISTILL.replace("--teacher {lm}", "--teacher {tmp}/nowhere"), "not found")
C("distill-teacher-not-a-run", DISTILL.replace("--teacher {lm}", "--teacher {tmp}"), "not an lmforge run directory")
C("distill-no-student", "compress --method distill --teacher {lm} --out {tmp}/new", "--student-config")
C("distill-positional-run", "compress {lm} --method distill --student-config {student} --out {tmp}/new", "--teacher")
C("distill-with-sparsity", DISTILL + " --sparsity 0.5", "apply to --method prune")
C("distill-repeats-0", DISTILL.replace("--repeats 1", "--repeats 0"), "--repeats", form=True)
C("distill-out-is-the-teacher", DISTILL.replace("{tmp}/new", "{lm}"), "is the run being compressed")
C("distill-out-not-empty", DISTILL.replace("{tmp}/new", "{tmp}/mine"), "mine", write("{tmp}/mine/x", "x"))
C("distill-out-proc", DISTILL.replace("{tmp}/new", "/proc/lmforge-badinput/x"), "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))

# ============================================================================= report compress
REP = "report compress {int8} --out {tmp}/p.png"
C("report-no-compression-json", "report compress {lm} --out {tmp}/p.png", "compression.json")
C("report-compression-json-garbage", REP, "compression.json", write("{int8}/compression.json", "{"))
C("report-compression-json-empty-object", REP, "compression.json", write("{int8}/compression.json", "{}"))
C("report-compression-json-list", REP, "compression.json", write("{int8}/compression.json", "[1, 2]"))
C("report-compression-json-not-utf8", REP, "compression.json", write("{int8}/compression.json", b'{"method": "\xff"}'))
C("report-out-a-folder", "report compress {int8} --out {tmp}", "{tmp}")
C("report-out-under-a-file", "report compress {int8} --out {corpus}/p.png", "{corpus}")
C("report-out-proc", "report compress {int8} --out /proc/lmforge-badinput/p.png", "/proc/lmforge-badinput",
  absent=("/proc/lmforge-badinput",))
C("report-batch-bogus", REP + " --batch 8", "invalid choice")
C("report-no-runs", "report compress --out {tmp}/p.png", "RUN")

# ============================================================================= serve (argument errors, before listening)
for _flag, _v in [("--port", "70000"), ("--port", "65536"), ("--port", "-1"), ("--port", "http"),
                  ("--batch-window-ms", "nan"), ("--batch-window-ms", "inf"), ("--batch-window-ms", "1e309"),
                  ("--batch-window-ms", "-1"), ("--timeout", "nan"), ("--timeout", "0"), ("--timeout", "-1"),
                  ("--workers", "0"), ("--workers", "-2"), ("--threads", "0"), ("--max-batch", "0"),
                  ("--max-body-bytes", "0"), ("--max-prompt-tokens", "-1"), ("--max-completion-tokens", "0"),
                  ("--max-inputs", "0"), ("--max-concurrent", "0"), ("--log-level", "loud")]:
    C(f"serve{_flag}-{_v}", shlex.split(SERVE) + [f"{_flag}={_v}"], _flag if _flag != "--log-level" else "invalid choice",
      form=_flag not in ("--log-level",) and _v != "http")
C("serve--api-key-empty", shlex.split(SERVE) + ["--api-key", ""], "--api-key", form=True)
C("serve--api-key-spaces", shlex.split(SERVE) + ["--api-key", "   "], "--api-key", form=True)
C("serve--api-key-non-ascii", shlex.split(SERVE) + ["--api-key", "clé-secrète"], "--api-key", form=True)
C("serve--api-key-control-char", shlex.split(SERVE) + ["--api-key", "ab\ncd"], "--api-key", form=True)
C("serve--api-key-surrogate", shlex.split(SERVE) + ["--api-key", "\udcff\udcfe"], "--api-key", form=True)
C("serve-env-api-key-empty", SERVE, "LMFORGE_API_KEY", env={"LMFORGE_API_KEY": ""}, form=True)
C("serve-env-api-key-non-ascii", SERVE, "LMFORGE_API_KEY", env={"LMFORGE_API_KEY": "schlüssel"}, form=True)
C("serve-not-a-run", "serve {tmp} --port 0", "not an lmforge run directory")
C("serve-missing-run", "serve {tmp}/nowhere --port 0", "not found")
C("serve-same-run-twice", "serve {lm} {lm} --port 0", "given twice")
C("serve-pickle-weights", SERVE, "model.safetensors", write("{lm}/model.safetensors", b"\x80\x04\x95" + b"\x00" * 64))
C("serve-weights-truncated", SERVE, "model.safetensors", truncate("{lm}/model.safetensors", 100))
C("serve--host-empty", shlex.split(SERVE) + ["--host", ""], "--host")  # "$UNSET": never all interfaces
C("serve-lstm-and-lm-twice", "serve {lstm} {lm} {lm} --port 0", "given twice")
C("serve-host-bogus", "serve {lm} --port 0 --host 999.1.1.1", "--host")

# ============================================================================= real processes
C("proc-generate-prompt-invalid-utf8", [b"generate", b"{lm}", b"--prompt", b"\xff\xfe", b"--max-new-tokens", b"3"], "--prompt",
  proc=True)
C("proc-predict-text-invalid-utf8", [b"predict", b"{clf}", b"\xff\xfe"], ("UTF-8", "text"), proc=True)
C("proc-data-get-invalid-utf8", [b"data", b"get", b"\xff\xfe"], "data set", proc=True)
C("proc-pretrain-lr-nan", NEW + " --train.lr=nan", "train.lr", proc=True)
C("proc-resume-not-a-run", "pretrain --resume {tmp}", "not an lmforge run directory", proc=True)
C("proc-evaluate-json-read-only", "evaluate {lm} --json {tmp}/e.json", "e.json", proc=True, user="nobody")
C("proc-pretrain-out-read-only", NEW, "{tmp}/new", proc=True, user="nobody")
C("proc-export-out-read-only", EX, "{tmp}/new", proc=True, user="nobody")
C("proc-resume-read-only-run", RESUME, "{lm}", proc=True, user="nobody")
C("proc-tokenizer-out-read-only", "tokenizer train --data {corpus} --vocab-size 300 --out {tmp}/tok", "{tmp}/tok", proc=True,
  user="nobody")
C("proc-compress-out-read-only", INT8 + " --out {tmp}/new", "{tmp}/new", proc=True, user="nobody")
# a write that fails half-way (files over 40 KB refused): one line naming what the user gave, nothing half-made left
C("proc-export-write-fails", EX, ("{tmp}/new", "--out"), proc=True, file_limit=40_000, code=(1, 2))
C("proc-compress-write-fails", INT8 + " --out {tmp}/new", ("{tmp}/new", "--out"), proc=True, file_limit=40_000, code=(1, 2))
C("proc-resume-write-fails", RESUME, "train_state.safetensors", proc=True, file_limit=100_000, code=(1, 2),
  may_change=("lm/config.yaml", "lm/metrics.jsonl"), progress_ok=True)
