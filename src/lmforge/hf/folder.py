"""Read a saved Hugging Face model folder (safetensors only) into our config, state dict and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.hf.bert import bert_from_hf_state_dict, model_config_from_hf_bert
from lmforge.hf.gpt2 import gpt_from_hf_state_dict, model_config_from_hf_gpt2
from lmforge.runs.files import load_tensors
from lmforge.tokenizer import Tokenizer

_FAMILIES = {  # HF model_type -> (config map, state-dict map)
    "bert": (model_config_from_hf_bert, bert_from_hf_state_dict),
    "gpt2": (model_config_from_hf_gpt2, gpt_from_hf_state_dict),
}


def load_hf_folder(folder: str | Path) -> tuple[ModelConfig, dict[str, Tensor], Tokenizer]:
    """Read a Hugging Face model folder (as written by ``save_pretrained``) -> (config, state dict, tokenizer).

    ``config.json``'s ``model_type`` picks the map (``bert`` -> :class:`~lmforge.models.bert.BertForMaskedLM`
    keys, ``gpt2`` -> :class:`~lmforge.models.gpt.GPT` keys); the state dict loads strictly into
    ``build(cfg)``. Weights come from ``model.safetensors`` (or the shards of
    ``model.safetensors.index.json``) only. The tokenizer is ``tokenizer.json`` (padding and
    truncation settings dropped), else BERT's ``vocab.txt`` (``do_lower_case`` etc. from
    ``tokenizer_config.json``) or GPT-2's ``vocab.json`` + ``merges.txt``.
    Every problem is a one-line :class:`UserError` naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected a Hugging Face model folder: config.json, model.safetensors)")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder}: no config.json (expected a Hugging Face model folder, as save_pretrained writes)")
    try:
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise UserError(f"{cfg_path}: expected a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in _FAMILIES:
        raise UserError(f"{cfg_path}: model_type {model_type!r} is not supported (known: {', '.join(_FAMILIES)})")
    to_config, to_state_dict = _FAMILIES[model_type]
    try:
        cfg = to_config(d)
    except UserError as e:
        raise UserError(f"{cfg_path}: {e}") from None
    hf_sd, source = _read_hf_weights(folder)
    try:
        sd = to_state_dict(hf_sd, cfg)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    tok = _read_hf_tokenizer(folder, model_type)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{folder}: the tokenizer has {tok.vocab_size} tokens, config.json's vocab_size only {cfg.vocab_size}")
    return cfg, sd, tok


def _read_hf_weights(folder: Path) -> tuple[dict[str, Tensor], Path]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_tensors(single, "Hugging Face model weights")[0], single
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a safetensors index ({type(e).__name__})") from None
        tensors: dict[str, Tensor] = {}
        for shard in shards:
            tensors.update(load_tensors(folder / shard, "Hugging Face model weights")[0])
        return tensors, index
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise UserError(
            f"{folder}: has {', '.join(pickles)} but no model.safetensors; lmforge reads safetensors only (a .bin "
            "is a pickle, which can run code when loaded): re-save it with save_pretrained(..., safe_serialization=True)"
        )
    raise UserError(f"{folder}: no model.safetensors (expected a Hugging Face model folder, as save_pretrained writes)")


def _read_hf_tokenizer(folder: Path, model_type: str) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.load(folder / "tokenizer.json")
        tok.hf.no_padding()  # sentence-transformers folders pad / truncate: lmforge batches itself
        tok.hf.no_truncation()
        return tok
    if model_type == "bert" and (folder / "vocab.txt").is_file():
        opts: dict[str, Any] = {}
        tc_path = folder / "tokenizer_config.json"
        if tc_path.is_file():
            try:
                opts = json.loads(tc_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{tc_path}: not valid JSON ({str(e).splitlines()[0]})") from None
        return Tokenizer.from_wordpiece_vocab(
            folder / "vocab.txt",
            lowercase=bool(opts.get("do_lower_case", True)),
            strip_accents=opts.get("strip_accents"),
            handle_chinese_chars=bool(opts.get("tokenize_chinese_chars", True)),
        )
    if model_type == "gpt2" and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return Tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    other = "vocab.txt" if model_type == "bert" else "vocab.json + merges.txt"
    raise UserError(f"{folder}: no tokenizer (expected tokenizer.json or {other})")
