"""Run directories and checkpoints: the only module that reads or writes weight files.

A run directory is the unit of exchange between verbs::

    RUN_DIR/
      config.yaml               the full RunConfig (every field)
      tokenizer.json            HF tokenizers file
      model.safetensors         latest weights (final weights once the run ends)
      train_state.safetensors   everything to resume bit-exactly: weights, optimizer, RNG, step
      metrics.jsonl             one JSON object per log / eval event
      data/                     token shards (train.bin, val.bin, meta.json)

Every write goes to a temporary file in the same folder, is fsync'ed, then ``os.replace``d over
the target, so a run killed at any moment (SIGKILL included) leaves either the old or the new file,
never a torn one. Loading uses safetensors (no pickle) for tensors and JSON for the rest.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lmforge.config.fields import show
from lmforge.errors import UserError
from lmforge.fileio import (  # noqa: F401 - re-exported
    TEMP_NAME,
    WriteError,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
)

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"  # train.keep_best: the weights of the best evaluation
TRAIN_STATE = "train_state.safetensors"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------- tensors
def _dedupe(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies with shared storage (tied weights) stored once, under the first key."""
    return {k: tensors[k].detach().to("cpu").contiguous() for k in _dedupe_keys(tensors)}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tied tensors are stored once)."""
    atomic_write_bytes(path, st_save(_dedupe(tensors), metadata=metadata))


def load_tensors(path: str | Path, what: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file -> (tensors, metadata). Missing or corrupt files are UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found (expected the {what} of an lmforge run)")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises several types on a torn / foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a valid safetensors file ({reason}); expected {what} in safetensors format") from None
    return tensors, meta


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a (possibly de-duplicated) state dict, checking names and shapes with a clear error."""
    own = model.state_dict()
    tied = _tied_keys(own)
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(k for k in set(own) - set(tensors) if k not in tied)
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise UserError(f"{source}: weights do not match the model in config.yaml ({'; '.join(parts)})")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise UserError(f"{source}: tensor {k} has shape {tuple(t.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(tensors, strict=False)


def _dedupe_keys(sd: dict[str, torch.Tensor]) -> list[str]:
    """Keys in order, skipping any whose storage an earlier key already holds (tied weights)."""
    seen, keep = set(), []
    for k, t in sd.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        keep.append(k)
    return keep


def _tied_keys(sd: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose storage an earlier key already holds (what ``_dedupe`` drops)."""
    return set(sd) - set(_dedupe_keys(sd))


def save_weights(path: str | Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    save_tensors(path, model.state_dict(), metadata)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    tensors, _ = load_tensors(path, "model weights")
    load_into(model, tensors, str(path))


# ----------------------------------------------------------------------------- training state
def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state_dict -> (tensors, JSON-able rest)."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, per_param in state["state"].items():
        rest["state"][str(idx)] = {}
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                rest["state"][str(idx)][name] = value
    return tensors, rest


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": rest["param_groups"]}


def save_train_state(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    rng_states: list[torch.Tensor],
    ema: dict[str, torch.Tensor] | None = None,
) -> None:
    """One file holds everything needed to resume, so it can never be half-updated.

    ``meta`` is JSON (step, tokens seen, scaler state ...); ``rng_states`` is one CPU RNG state per
    rank (dropout masks differ per rank, so each rank resumes its own).
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_rest = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    for r, s in enumerate(rng_states):
        tensors[f"rng.cpu.{r}"] = s
    tensors.update({f"ema.{k}": v for k, v in (ema or {}).items()})
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    payload = {"meta": meta, "optimizer": opt_rest}
    save_tensors(Path(run_dir) / TRAIN_STATE, tensors, {"lmforge": json.dumps(payload)})


def _state_payload(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    """The JSON payload of a training state's header, checked as untrusted input (a UserError naming the file)."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: training state {what}; expected a file written by `lmforge pretrain` / `finetune`")

    try:
        payload = json.loads(metadata["lmforge"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise bad("has no lmforge metadata") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
        raise bad("metadata has no 'meta' object")
    meta, opt = payload["meta"], payload.get("optimizer")
    for key in ("step", "tokens"):
        v = meta.get(key)
        if type(v) is not int or v < 0:  # bool is no step, nor 1.5, nor -1
            raise bad(f"meta.{key}: expected an integer >= 0, got {show(v)}")
    if not isinstance(meta.get("elapsed", 0.0), (int, float)) or isinstance(meta.get("elapsed"), bool):
        raise bad(f"meta.elapsed: expected a number of seconds, got {show(meta.get('elapsed'))}")
    if meta.get("scaler") is not None and not isinstance(meta["scaler"], dict):
        raise bad(f"meta.scaler: expected an object or null, got {show(meta['scaler'])}")
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("state"), dict):
        raise bad("metadata has no 'optimizer' object with 'param_groups' (a list) and 'state' (an object)")
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]):
        raise bad("optimizer.param_groups: expected objects with a 'params' list")
    if not all(isinstance(k, str) and k.isdigit() and isinstance(v, dict) for k, v in opt["state"].items()):
        raise bad("optimizer.state: expected {parameter index: object}")
    return payload


def load_train_state(run_dir: str | Path) -> dict[str, Any] | None:
    """-> {'model': state_dict, 'optimizer': state_dict, 'meta': dict, 'rng': [states], 'ema': {name: tensor}},
    or None if absent. Every part is checked: a torn, foreign or tampered file is a UserError naming it."""
    path = Path(run_dir) / TRAIN_STATE
    if not path.exists():
        return None
    tensors, metadata = load_tensors(path, "training state")
    payload = _state_payload(metadata, path)
    n_rng = len([k for k in tensors if k.startswith("rng.cpu.")])
    rng = [tensors.get(f"rng.cpu.{r}") for r in range(n_rng)]
    if any(t is None or t.dtype != torch.uint8 or t.dim() != 1 for t in rng):
        raise UserError(f"{path}: training state has malformed RNG states (expected rng.cpu.0 .. rng.cpu.N-1, uint8)")
    try:
        optimizer = _unflatten_optimizer(tensors, payload["optimizer"])
    except ValueError:
        raise UserError(f"{path}: training state has malformed optimizer tensors (expected optim.<index>.<name>)") from None
    return {
        "model": {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")},
        "optimizer": optimizer,
        "meta": payload["meta"],
        "rng": rng,
        "rng_cuda": tensors.get("rng.cuda"),
        "ema": {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")},
    }


def check_train_state(run_dir: str | Path) -> int:
    """Check a training state's header (without reading its tensors) -> its step; 0 if there is none.

    A file cut short is caught here too: the header's offsets must fit in the file.
    """
    path = Path(run_dir) / TRAIN_STATE
    if not path.exists():
        return 0
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a torn / foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a valid safetensors file ({reason}); expected the training state of an lmforge run") from None
    return _state_payload(metadata, path)["meta"]["step"]


def saved_step(run_dir: str | Path) -> int:
    """The step of the run's last resumable checkpoint (0 if none), read from its header only."""
    return check_train_state(run_dir)


# ----------------------------------------------------------------------------- metrics
def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` (O_APPEND): a kill leaves at most one torn last line,
    which :func:`read_metrics` skips; a failed write (a full disk) is cut back off, so no torn line stays."""
    path = Path(run_dir) / METRICS
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise WriteError(path, e) from None
    finally:
        os.close(fd)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line torn by a kill, or not UTF-8 / JSON, is skipped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and type(record.get("step", 0)) is int:
            out.append(record)
    return out


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only records up to ``step`` (on resume, later ones are recomputed)."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def discard_new_files(run_dir: Path, existed: set[str] | None) -> None:
    """Remove what this invocation added to ``run_dir`` (all of it if it made the folder)."""
    import shutil

    if existed is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for p in run_dir.iterdir():
        if p.name not in existed:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def clean_stale_temps(run_dir: str | Path) -> list[str]:
    """Remove the temp files that a killed run's atomic writes left in ``run_dir`` and ``run_dir/data``."""
    run_dir = Path(run_dir)
    return [n for d in (run_dir, run_dir / "data") if d.is_dir() for n in remove_stale_temps(d)]
