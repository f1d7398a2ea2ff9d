"""What the task recipes of ``lmforge train`` (translation, images) share around their training: the
process group, the run dir's first config.yaml, and no half-made run dir left behind by a failure."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmforge.config import RunConfig, save_config
from lmforge.devices import resolve_device
from lmforge.runs import files as ckpt
from lmforge.training import distributed


def run_in_dir(cfg: RunConfig, run_dir: Path, resuming: bool, train: Callable[..., dict], progress: bool) -> dict:
    """``train(cfg, run_dir, resuming, info, progress)`` inside the process group; a new run's config.yaml is
    written first (rank 0), and a failure before the first checkpoint removes what the new run wrote."""
    info = distributed.init(resolve_device(cfg.train.device).type)
    existed = {p.name for p in run_dir.iterdir()} if run_dir.exists() else None
    clean = False
    try:
        if not resuming:
            distributed.barrier(info)
            distributed.main_first(info, lambda: (run_dir.mkdir(parents=True, exist_ok=True),
                                                  ckpt.atomic_write_text(run_dir / ckpt.CONFIG, save_config(cfg))))
        summary = train(cfg, run_dir, resuming, info, progress)
        clean = True
        return summary
    except Exception:  # bad data or config before the first checkpoint: leave no half-made run behind
        if not resuming and info.is_main and not (run_dir / ckpt.TRAIN_STATE).exists():
            ckpt.discard_new_files(run_dir, existed)
        raise
    finally:
        distributed.shutdown(info, clean)
