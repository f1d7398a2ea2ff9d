"""Hugging Face key maps (GPT-2, BERT) with shape asserts, and :func:`load_hf_folder`.

The state-dict maps do no file I/O; :func:`load_hf_folder` reads a saved HF model folder
(``config.json``, ``model.safetensors`` through :func:`lmforge.runs.files.load_tensors`, the
tokenizer files) and never unpickles anything: a folder with only ``pytorch_model.bin`` is refused.

GPT-2: our parameter names mirror GPT-2's, so the map is explicit but short; the transforms are:

- GPT-2's attention / MLP projections are ``Conv1D`` layers storing weights as (in, out), ours are
  ``nn.Linear`` (out, in): those four weights per block are transposed (``.t().contiguous()``).
- Sinusoidal positions (ours) have no GPT-2 counterpart: export writes the table as a learned
  ``transformer.wpe.weight``, which is exactly equivalent (import then yields ``pos_emb='learned'``).
- ``bias=False`` (ours) exports zero biases (exact); import into a bias-free config drops the
  biases and raises if any is non-zero.
- A tied head: export includes ``lm_head.weight`` as the very same tensor as ``transformer.wte.weight``
  (``GPT2LMHeadModel.load_state_dict`` wants it; drop it before saving with safetensors); import takes
  wte when ``lm_head.weight`` is absent.

BERT (the name table is in :mod:`lmforge.models.bert`): HF's separate query / key / value
projections are concatenated (in that order, along the output dim) into our fused ``attn.c_attn``
and split again on export; ``cls.predictions.*`` maps to ``mlm_head``; the pooler, the NSP head
(``cls.seq_relationship``) and ``position_ids`` / ``token_type_ids`` buffers are ignored.

Every tensor's shape is checked against the config; a mismatch raises :class:`UserError` naming the
key and both shapes. ``transformers`` is imported only inside :func:`hf_gpt2_config` / :func:`hf_bert_config`.
"""

from lmforge.hf.bert import (
    bert_from_hf_state_dict,
    bert_to_hf_state_dict,
    hf_bert_config,
    model_config_from_hf_bert,
)
from lmforge.hf.folder import load_hf_folder
from lmforge.hf.gpt2 import (
    gpt_from_hf_state_dict,
    gpt_to_hf_state_dict,
    hf_gpt2_config,
    model_config_from_hf_gpt2,
)

__all__ = [
    "bert_from_hf_state_dict", "bert_to_hf_state_dict", "hf_bert_config", "model_config_from_hf_bert",
    "gpt_from_hf_state_dict", "gpt_to_hf_state_dict", "hf_gpt2_config", "model_config_from_hf_gpt2",
    "load_hf_folder",
]
