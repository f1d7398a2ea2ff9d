"""ONNX export of translation runs (``model.name: seq2seq``): ``encoder.onnx`` + ``decoder.onnx``.

The PyTorch decoder keeps a preallocated :class:`~lmforge.models.layers.KVCache`; the exported decoder is
functional instead (:class:`DecoderStep`): past self-attention keys / values in, present ones (past + the
new tokens) out, so any runtime can drive it. Shapes (Ld decoder blocks, H heads, hs head size)::

    encoder.onnx  src_ids (B, S) int64, src_mask (B, S) int64 (1 = token)
                  -> memory (B, S, C), cross_k, cross_v (Ld, B, H, S, hs)
    decoder.onnx  input_ids (B, t) int64 (the t new target tokens), src_mask (B, S), cross_k, cross_v,
                  past_k, past_v (Ld, B, H, P, hs) (P = 0 at the first step)
                  -> logits (B, t, V), present_k, present_v (Ld, B, H, P + t, hs)

The new tokens sit at positions [P, P + t). Decoding starts from ``[bos]`` with P = 0 (past tensors of
length 0) and stops at eos; the source is the tokenizer's ids, no bos / eos (as ``lmforge translate``).
:func:`onnx_greedy` is that loop in onnxruntime, with ``translate_ids``' length rule. The check before
anything is written: teacher-forced logits (a prefill of several tokens, then one token per step) against
the PyTorch model, and greedy outputs equal to ``translate_ids``' on random sources.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.fileio import WriteError
from lmforge.runs.files import CONFIG, TOKENIZER
from lmforge.tools.export.common import OPSET, TOLERANCE, native_stderr_silenced, need, write_hf_tokenizer

ENC_IN, ENC_OUT = ["src_ids", "src_mask"], ["memory", "cross_k", "cross_v"]
DEC_IN = ["input_ids", "src_mask", "cross_k", "cross_v", "past_k", "past_v"]
DEC_OUT = ["logits", "present_k", "present_v"]
GREEDY_SENTENCES = 6  # random sources decoded greedily by both onnxruntime and translate_ids


class EncoderGraph(nn.Module):
    """``(src_ids, src_mask) -> memory, cross_k, cross_v``: the encoder and every decoder block's cross K / V."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory = self.model.encode(src_ids, src_mask)  # (B, S, C)
        kv = [block.cross.kv(memory) for block in self.model.decoder.h]  # Ld x 2 x (B, H, S, hs)
        return memory, torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


def _self_attention(attn: nn.Module, x: Tensor, past_k: Tensor, past_v: Tensor, causal: Tensor,
                    rope: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Causal self-attention of the new tokens x (B, t, C) over past + new keys -> (out, k, v)."""
    q, k, v = attn.qkv(x, rope)  # (B, H, t, hs) each
    k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, P + t, hs)
    return attn.out(F.scaled_dot_product_attention(q, k, v, attn_mask=causal)), k, v


class DecoderStep(nn.Module):
    """One functional decoder step: what ``Seq2SeqTransformer.step`` computes, the cache passed in and out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, src_mask: Tensor, cross_k: Tensor, cross_v: Tensor, past_k: Tensor,
                past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, cfg = self.model, self.model.cfg
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + past_k.shape[3]  # (t,) = P .. P + t - 1
        x, rope = m.wte(input_ids) * m.emb_scale, None  # (B, t, C)
        if cfg.pos_emb == "rope":
            rope = m.rope[:, pos]  # (2, t, hs/2)
        else:
            x = x + (m.decoder.wpe.weight if cfg.pos_emb == "learned" else m.pos_table)[pos]  # (t, C) broadcast
        keep = src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        causal = torch.arange(past_k.shape[3] + input_ids.shape[1], device=pos.device)[None, :] <= pos[:, None]  # (t, P+t)
        present_k, present_v = [], []
        for i, block in enumerate(m.decoder.h):
            kv = (cross_k[i], cross_v[i])
            if block.norm_first:
                a, k, v = _self_attention(block.attn, block.ln_1(x), past_k[i], past_v[i], causal, rope)
                x = x + a
                x = x + block.cross(block.ln_2(x), kv, keep)
                x = x + block.mlp(block.ln_3(x))
            else:
                a, k, v = _self_attention(block.attn, x, past_k[i], past_v[i], causal, rope)
                x = block.ln_1(x + a)
                x = block.ln_2(x + block.cross(x, kv, keep))
                x = block.ln_3(x + block.mlp(x))
            present_k.append(k)
            present_v.append(v)
        if cfg.norm_first:
            x = m.decoder.ln_f(x)
        return m.lm_head(x), torch.stack(present_k), torch.stack(present_v)


def empty_past(cfg, batch: int) -> np.ndarray:
    """The past keys (or values) of the first step: float32 (Ld, B, H, 0, hs)."""
    return np.zeros((cfg.n_decoder_layers, batch, cfg.n_head, 0, cfg.head_size), dtype=np.float32)


def pad_sources(seqs: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ids (B, S) and mask (B, S) of token id lists."""
    S = max(1, max(map(len, seqs)))
    ids = np.full((len(seqs), S), pad, dtype=np.int64)
    mask = np.zeros((len(seqs), S), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def onnx_greedy(encoder, decoder, cfg, seqs: list[list[int]], bos: int, eos: int, pad: int,
                max_len_a: float = 1.5, max_len_b: int = 10, max_positions: int | None = None) -> list[list[int]]:
    """Greedy translations (ids, no bos / eos) of ``seqs`` with onnxruntime sessions of encoder.onnx and
    decoder.onnx; ``translate_ids``' rule: at most min(floor(a * S + b), max_positions - 1) tokens, then eos."""
    cap = max_positions or cfg.block_size
    out: list[list[int]] = [[] for _ in seqs]
    idx = [i for i, s in enumerate(seqs) if s]  # an empty source translates to nothing
    if not idx:
        return out
    src, mask = pad_sources([seqs[i] for i in idx], pad)
    limits = np.array([min(math.floor(max_len_a * len(seqs[i]) + max_len_b), cap - 1) for i in idx])
    _, ck, cv = encoder.run(ENC_OUT, {"src_ids": src, "src_mask": mask})
    pk, pv = empty_past(cfg, len(idx)), empty_past(cfg, len(idx))
    tok = np.full((len(idx), 1), bos, dtype=np.int64)
    hyps: list[list[int]] = [[] for _ in idx]
    done = np.zeros(len(idx), dtype=bool)
    for step in range(int(limits.max()) + 1):
        logits, pk, pv = decoder.run(DEC_OUT, {"input_ids": tok, "src_mask": mask, "cross_k": ck, "cross_v": cv,
                                               "past_k": pk, "past_v": pv})
        nxt = logits[:, -1].argmax(-1)
        nxt[limits == step] = eos  # at its limit a row may only end
        for r in np.flatnonzero(~done):
            if nxt[r] == eos:
                done[r] = True
            else:
                hyps[r].append(int(nxt[r]))
        if done.all():
            break
        tok = nxt[:, None].astype(np.int64)
    for i, h in zip(idx, hyps):
        out[i] = h
    return out


def _axes(cfg) -> tuple[dict, dict]:
    """The dynamic axes of encoder.onnx and decoder.onnx."""
    bs, kv = {0: "batch", 1: "source"}, {1: "batch", 3: "source"}
    enc = {"src_ids": bs, "src_mask": bs, "memory": bs, "cross_k": kv, "cross_v": kv}
    past, present = {1: "batch", 3: "past"}, {1: "batch", 3: "past_plus_new"}
    dec = {"input_ids": {0: "batch", 1: "new_tokens"}, "src_mask": bs, "cross_k": kv, "cross_v": kv,
           "past_k": past, "past_v": past, "logits": {0: "batch", 1: "new_tokens"}, "present_k": present, "present_v": present}
    return enc, dec


def _export(wrapper: nn.Module, example: tuple, path: Path, names_in: list[str], names_out: list[str], axes: dict) -> None:
    
    with warnings.catch_warnings(), native_stderr_silenced():  # TracerWarnings on the models' shape checks
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper.eval(), example, str(path), dynamo=False, opset_version=OPSET,
                              input_names=names_in, output_names=names_out, dynamic_axes=axes)
        except OSError as e:
            raise WriteError(path, e) from None
        except Exception as e:  # noqa: BLE001 - report the exporter's reason in one line
            raise UserError(f"ONNX export of the seq2seq {path.stem} failed: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _examples(cfg, pad: int, gen: torch.Generator) -> tuple[tuple, tuple]:
    """Trace inputs: a padded batch of 2 sources, 2 new target tokens after a past of 3."""
    S, (B, t, P) = min(7, cfg.block_size), (2, 2, 3)
    src = torch.randint(0, cfg.source_vocab_size or cfg.vocab_size, (B, S), generator=gen)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, S // 2 :] = 0
    kv = torch.randn(cfg.n_decoder_layers, B, cfg.n_head, S, cfg.head_size, generator=gen)
    past = torch.randn(cfg.n_decoder_layers, B, cfg.n_head, P, cfg.head_size, generator=gen)
    ids = torch.randint(0, cfg.vocab_size, (B, t), generator=gen)
    return (src.masked_fill(mask == 0, pad), mask), (ids, mask, kv, kv.clone(), past, past.clone())


def sessions(tmp: Path):
    """onnxruntime sessions of tmp/encoder.onnx and tmp/decoder.onnx."""
    ort = need("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    files = ("encoder.onnx", "decoder.onnx")
    return tuple(ort.InferenceSession(str(tmp / f), opts, providers=["CPUExecutionProvider"]) for f in files)


def _random_pairs(cfg, pad: int, B: int, S: int, T: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Random right-padded sources (B, S) (row 0 full), their mask and targets (B, T), never ``pad``."""
    V = cfg.source_vocab_size or cfg.vocab_size
    src = torch.randint(0, V, (B, S), generator=gen)
    src[src == pad] = (pad + 1) % V
    lengths = torch.randint(1, S + 1, (B,), generator=gen)
    lengths[0] = S
    mask = (torch.arange(S)[None, :] < lengths[:, None]).long()
    tgt = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    return src.masked_fill(mask == 0, pad), mask, tgt


def logits_parity(encoder, decoder, model: nn.Module, cfg, pad: int) -> dict:
    """Teacher-forced logits: onnxruntime (a prefill of half the target, then one token per step) vs ``model``."""
    
    gen, worst = torch.Generator().manual_seed(0), 0.0
    shapes = [(1, min(5, cfg.block_size), min(4, cfg.block_size)), (3, min(12, cfg.block_size), min(9, cfg.block_size))]
    for B, S, T in shapes:
        src, mask, tgt = _random_pairs(cfg, pad, B, S, T, gen)
        with torch.no_grad():
            ref = model(src, mask.bool(), tgt)  # (B, T, V)
        _, ck, cv = encoder.run(ENC_OUT, {"src_ids": src.numpy(), "src_mask": mask.numpy()})
        pk, pv, got, ids = empty_past(cfg, B), empty_past(cfg, B), [], tgt.numpy()
        cuts = [0, max(1, T // 2), *range(max(1, T // 2) + 1, T + 1)]
        for a, b in zip(cuts, cuts[1:]):
            logits, pk, pv = decoder.run(DEC_OUT, {"input_ids": ids[:, a:b], "src_mask": mask.numpy(), "cross_k": ck,
                                                   "cross_v": cv, "past_k": pk, "past_v": pv})
            got.append(logits)
        got_t = torch.as_tensor(np.concatenate(got, axis=1))
        diff = (got_t - ref).abs().max().item() if got_t.shape == ref.shape else float("inf")
        if not diff < TOLERANCE:  # NaN fails too
            raise UserError(f"ONNX (onnxruntime) seq2seq parity check failed at (batch, source, target) = ({B}, {S}, {T}): "
                            f"max |logit difference| {diff:.3g}, expected < {TOLERANCE:g}; nothing was written")
        worst = max(worst, diff)
    return {"max_abs_diff": worst, "tolerance": TOLERANCE, "shapes_checked": [[B, S] for B, S, _ in shapes],
            "target_lengths_checked": [T for *_, T in shapes]}


def greedy_parity(encoder, decoder, model: nn.Module, cfg, tok) -> int:
    """Greedy outputs of onnxruntime and ``translate_ids`` on random sources must be equal; -> sentences checked."""
    from lmforge.models.search import DecodeConfig, translate_ids

    gen, m, t = torch.Generator().manual_seed(2), cfg.model, cfg.translate
    V, pad = m.source_vocab_size or m.vocab_size, tok.pad_id if tok.pad_id is not None else 0
    lens = torch.randint(1, min(12, m.block_size) + 1, (GREEDY_SENTENCES,), generator=gen).tolist()
    seqs = [[(x + 1) % V if x == pad else x for x in torch.randint(0, V, (n,), generator=gen).tolist()] for n in lens]
    dcfg = DecodeConfig(method="greedy", max_len_a=t.max_len_a, max_len_b=t.max_len_b)
    ref = translate_ids(model, seqs, tok.bos_id, tok.eos_id, pad, dcfg, max_positions=m.block_size)
    got = onnx_greedy(encoder, decoder, m, seqs, tok.bos_id, tok.eos_id, pad, t.max_len_a, t.max_len_b, m.block_size)
    for i, (a, b) in enumerate(zip(got, ref)):
        if a != b:
            raise UserError(f"ONNX (onnxruntime) greedy decoding differs from lmforge's on random source {i + 1} "
                            f"({len(a)} vs {len(b)} tokens); nothing was written")
    return len(seqs)


def _describe(names: list[str], axes: dict, shapes: dict) -> dict:
    """name -> {"dtype", "shape"} with dynamic axes named, for export.json."""
    out = {}
    for n in names:
        dims = [axes.get(n, {}).get(i, d) for i, d in enumerate(shapes[n][1])]
        out[n] = {"dtype": shapes[n][0], "shape": dims}
    return out


def _io(cfg) -> dict:
    """dtype and shape of every graph tensor (an int is a fixed size; named axes are filled in by :func:`_describe`)."""
    Ld, H, hs, C, V = cfg.n_decoder_layers, cfg.n_head, cfg.head_size, cfg.n_embd, cfg.vocab_size
    kv = ("float32", [Ld, "B", H, "S", hs])
    return {"src_ids": ("int64", ["B", "S"]), "src_mask": ("int64", ["B", "S"]), "memory": ("float32", ["B", "S", C]),
            "cross_k": kv, "cross_v": kv, "input_ids": ("int64", ["B", "t"]), "logits": ("float32", ["B", "t", V]),
            "past_k": kv, "past_v": kv, "present_k": kv, "present_v": kv}


def write_onnx(tmp: Path, run_dir: Path, cfg, model: nn.Module, tok, kind: str) -> dict:
    """encoder.onnx, decoder.onnx (checked in onnxruntime), tokenizer file(s), config.yaml; -> export.json's fields."""
    from lmforge.tasks.translate import SOURCE_TOKENIZER
    
    onnx, ort = need("onnx"), need("onnxruntime")
    m, pad = cfg.model, tok.pad_id if tok.pad_id is not None else 0
    enc_axes, dec_axes = _axes(m)
    enc_ex, dec_ex = _examples(m, pad, torch.Generator().manual_seed(1))
    _export(EncoderGraph(model), enc_ex, tmp / "encoder.onnx", ENC_IN, ENC_OUT, enc_axes)
    _export(DecoderStep(model), dec_ex, tmp / "decoder.onnx", DEC_IN, DEC_OUT, dec_axes)
    model.eval()
    for f in ("encoder.onnx", "decoder.onnx"):
        onnx.checker.check_model(str(tmp / f))
    encoder, decoder = sessions(tmp)
    check = logits_parity(encoder, decoder, model, cfg.model, pad)
    n_greedy = greedy_parity(encoder, decoder, model, cfg, tok)
    for f in (TOKENIZER, CONFIG, SOURCE_TOKENIZER):
        if (run_dir / f).is_file():
            shutil.copyfile(run_dir / f, tmp / f)
    io, t = _io(m), cfg.translate
    return {
        "file": "encoder.onnx + decoder.onnx", "files": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        "encoder": {"inputs": _describe(ENC_IN, enc_axes, io), "outputs": _describe(ENC_OUT, enc_axes, io)},
        "decoder": {"inputs": _describe(DEC_IN, dec_axes, io), "outputs": _describe(DEC_OUT, dec_axes, io)},
        "special_tokens": {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": pad,
                           "decoder_start_token_id": tok.bos_id},
        "decoding": {"source": "the source tokenizer's ids, no bos / eos", "start": "[decoder_start_token_id], past length 0",
                     "stop": "eos_token_id",
                     "max_new_tokens": "min(floor(max_len_a * source_len + max_len_b), max_positions - 1)",
                     "max_len_a": t.max_len_a, "max_len_b": t.max_len_b},
        "source_tokenizer": SOURCE_TOKENIZER if (run_dir / SOURCE_TOKENIZER).is_file() else TOKENIZER,
        "decoder_layers": m.n_decoder_layers, "n_head": m.n_head, "head_size": m.head_size, "max_positions": m.block_size,
        "opset": OPSET, "onnx_bytes": {f: (tmp / f).stat().st_size for f in ("encoder.onnx", "decoder.onnx")},
        **check, "greedy_sentences_checked": n_greedy, "runtime": f"onnxruntime {ort.__version__}",
    }


# ----------------------------------------------------------------------------- Hugging Face (Marian / Pegasus)
def marian_parity(hf_model, model: nn.Module, cfg, tok) -> dict:
    """Teacher-forced logits of ``hf_model`` vs ``model`` (as :func:`logits_parity`), then greedy
    ``generate(num_beams=1, do_sample=False)`` vs ``translate_ids`` on random sources (one call per source,
    ``max_new_tokens`` = lmforge's length limit)."""
    from lmforge.models.search import DecodeConfig, translate_ids
    
    m, t, pad, name = cfg.model, cfg.translate, tok.pad_id, type(hf_model).__name__
    gen, worst = torch.Generator().manual_seed(0), 0.0
    shapes = [(1, min(5, m.block_size), min(4, m.block_size)), (3, min(12, m.block_size), min(9, m.block_size))]
    with torch.no_grad():
        for B, S, T in shapes:
            src, mask, tgt = _random_pairs(m, pad, B, S, T, gen)
            ref = model(src, mask.bool(), tgt)
            got = hf_model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
            diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
            if not diff < TOLERANCE:
                raise UserError(f"Hugging Face ({name}) parity check failed at (batch, source, target) = ({B}, {S}, {T}): "
                                f"max |logit difference| {diff:.3g}, expected < {TOLERANCE:g}; nothing was written")
            worst = max(worst, diff)
        lens = torch.randint(1, min(12, m.block_size) + 1, (GREEDY_SENTENCES,), generator=gen).tolist()
        seqs = [[(x + 1) % m.vocab_size if x == pad else x for x in torch.randint(0, m.vocab_size, (n,), generator=gen).tolist()]
                for n in lens]
        ref_ids = translate_ids(model, seqs, tok.bos_id, tok.eos_id, pad, DecodeConfig(method="greedy", max_len_a=t.max_len_a,
                                max_len_b=t.max_len_b), max_positions=m.block_size)
        for i, s in enumerate(seqs):
            limit = min(math.floor(t.max_len_a * len(s) + t.max_len_b), m.block_size - 1)
            out = hf_model.generate(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long),
                                    num_beams=1, do_sample=False, max_new_tokens=limit)[0, 1:].tolist()
            out = out[: out.index(tok.eos_id)] if tok.eos_id in out else out
            if out != ref_ids[i]:
                raise UserError(f"Hugging Face ({name}) greedy generate differs from lmforge's on random source {i + 1} "
                                f"({len(out)} vs {len(ref_ids[i])} tokens); nothing was written")
    return {"max_abs_diff": worst, "tolerance": TOLERANCE, "shapes_checked": [[B, S] for B, S, _ in shapes],
            "target_lengths_checked": [T for *_, T in shapes], "greedy_sentences_checked": len(seqs)}


def write_marian(tmp: Path, run_dir: Path, cfg, model: nn.Module, tok, kind: str) -> dict:
    """A MarianMTModel folder (post-LN; PegasusForConditionalGeneration for pre-LN layers): config.json,
    model.safetensors, generation_config.json, tokenizer files, reloaded with ``from_pretrained`` and checked;
    :func:`lmforge.tools.export.check_hf` has accepted the layout."""
    from lmforge.hf.marian import hf_class, hf_marian_config, seq2seq_to_marian_state_dict

    transformers = need("transformers")
    cls = hf_class(cfg.model)
    hf_cfg = hf_marian_config(cfg.model, tok.bos_id, tok.eos_id, tok.pad_id)
    hf_model = cls(hf_cfg).eval()
    hf_model.load_state_dict(seq2seq_to_marian_state_dict(model.state_dict(), cfg.model))  # strict: every key and shape
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        reloaded = cls.from_pretrained(tmp).eval()  # what users will get
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    write_hf_tokenizer(tmp, tok, classifier=False, max_length=cfg.model.block_size)
    check = marian_parity(reloaded, model, cfg, tok)
    return {"hf_class": cls.__name__, "inputs": ["input_ids", "attention_mask", "decoder_input_ids"], **check,
            "special_tokens": {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
                               "decoder_start_token_id": tok.bos_id},
            "runtime": f"transformers {transformers.__version__}"}
