"""``lmforge translate``: sentences through a translation run, greedy or beam search (the task's decoding)."""

from __future__ import annotations

from pathlib import Path

from lmforge import tasks
from lmforge.errors import UserError
from lmforge.runs import loader


def read_lines(path: str) -> list[str]:
    """The sentences of a .txt file, one a line (blank lines kept, so the output lines match the input's)."""
    from lmforge.config.fields import check_text

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--input {path}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--input {path}: not valid UTF-8 (byte {e.start})") from None
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        check_text(f"{path}:{i}", line)
    return lines


def translate_run(run_dir: str | Path, texts: list[str], input_file: str | None = None, output_file: str | None = None,
                  beam: int | None = None, device: str = "cpu", best: bool = False) -> list[str]:
    """The translation of each text (then each line of ``input_file``), in order; with ``output_file`` also
    written there (atomically), one a line."""
    from lmforge.config.fields import check_int, check_text, show

    if beam is not None:
        check_int("--beam", beam, 1, None)
    texts = list(texts)
    for i, t in enumerate(texts, 1):
        if not isinstance(t, str):
            raise UserError(f"translate: text {i}: expected a string, got {show(t)}")
        check_text(f"translate: text {i} of {len(texts)}", t)
    if output_file is not None and not str(output_file).strip():
        raise UserError("--output: expected a file name, got an empty string")
    texts += read_lines(input_file) if input_file else []
    if not texts:
        raise UserError("translate: no text given (pass sentences as arguments or --input FILE)")
    cfg, model, tok = loader.load_run(run_dir, device, verb="translate", best=best)
    task = tasks.of(cfg)
    if not hasattr(task, "translate"):
        raise UserError(f"{run_dir}: not a translation model (task {task.name}); translate needs a run made by "
                        "`lmforge train` with a translation recipe")
    nonblank = [i for i, t in enumerate(texts) if t.strip()]
    out = [""] * len(texts)
    for i, line in zip(nonblank, task.translate(cfg, model, tok, run_dir, [texts[i] for i in nonblank], beam=beam)):
        out[i] = line
    if output_file is not None:
        from lmforge.fileio import atomic_write_text

        atomic_write_text(output_file, "".join(line + "\n" for line in out))
    return out
