"""What every export backend shares: the tolerance and opset, optional imports, quiet tracing, HF tokenizer files."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from lmforge.errors import UserError
from lmforge.runs.files import TOKENIZER, atomic_write_text

TOLERANCE = 1e-4  # max |logit difference| allowed between the export and PyTorch (float32)
OPSET = 17  # ONNX opset: native LayerNormalization; SDPA exports from 14 on


@contextlib.contextmanager
def native_stderr_silenced():
    """Point fd 2 at /dev/null for a while: C++ warnings bypass Python's ``warnings`` (the parity check
    below, not the exporter's shape-inference notes, is what tells whether the graph is right)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"lmforge export needs the package {module!r}: pip install 'lmforge[export]'") from None


def write_hf_tokenizer(folder: Path, tok, classifier: bool, max_length: int) -> None:
    """tokenizer.json plus the two small files ``AutoTokenizer`` (transformers 4 and 5) reads.

    A classifier's texts are framed ``bos ... eos`` by lmforge (``encode(add_special_tokens=True)``);
    when the tokenizer has no template of its own, one is added so ``tokenizer(texts)`` frames them alike.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    hf = HFTokenizer.from_str(tok.to_json())
    if classifier and hf.post_processor is None and tok.bos_id is not None and tok.eos_id is not None:
        bos, eos = hf.id_to_token(tok.bos_id), hf.id_to_token(tok.eos_id)
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}",
                                                          special_tokens=[(bos, tok.bos_id), (eos, tok.eos_id)])
    hf.save(str(folder / TOKENIZER))
    ids = {r: getattr(tok, f"{r}_id") for r in ("bos", "eos", "pad", "unk", "mask")}
    roles = {f"{r}_token": hf.id_to_token(i) for r, i in ids.items() if i is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "clean_up_tokenization_spaces": False, **roles}
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", roles)):
        atomic_write_text(folder / name, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
