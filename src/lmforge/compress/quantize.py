"""Dynamic int8 quantization of the ``nn.Linear`` layers, stored in safetensors (no pickle).

PyTorch's ``torch.ao.quantization.quantize_dynamic`` swaps each ``nn.Linear`` (out, in) for a
``DynamicQuantizedLinear``: the weight becomes int8 with one scale per output row (per-channel,
symmetric: zero point 0), activations are quantized on the fly per batch, and the matmul runs in
int8 (fbgemm / x86 kernels). Embeddings, LayerNorms and biases stay float32. torch 2.13 warns that
``torch.ao.quantization`` is deprecated in favour of torchao; :func:`_quiet` silences exactly that
warning (and its twin about quantized-tensor constructors) around our own calls, nowhere else.

A quantized Linear ``name`` is stored as four tensors (a float checkpoint loader rejects them by name)::

    name.weight_int8         int8    (out, in)   round(w / scale), clamped to [-128, 127]
    name.weight_scale        float32 (out,)      one scale per output row (the observer's float32 value: exact)
    name.weight_zero_point   int8    (out,)      zeros (symmetric)
    name.bias                float32 (out,)      if the layer has one

Tied embeddings: ``quantize_dynamic`` replaces a head that shares its weight with an embedding
(GPT's ``lm_head`` / ``transformer.wte``, BERT's ``mlm_head.decoder`` / ``bert.wte``) by an int8 copy
and leaves the embedding float32, so the tie is broken and the matrix would be stored twice. We keep
it stored once: the embedding becomes the dequantized int8 head (its per-row scales are per-token
scales of the embedding table), in memory at compress time and again at load time, so the model
that was measured is the model that loads, and a tied GPT's file shrinks ~4x, not ~1.5x.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from lmforge.errors import UserError

SUFFIXES = (".weight_int8", ".weight_scale", ".weight_zero_point")


@contextlib.contextmanager
def _quiet():
    """Silence torch 2.13's deprecation warnings for torch.ao.quantization, only inside this block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        yield


def _qlinear_type() -> type:
    with _quiet():
        from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def _tied_embeddings(model: nn.Module) -> dict[str, str]:
    """{Linear name: Embedding name} for Linear layers whose weight *is* an embedding's weight."""
    embeddings = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return {n: embeddings[id(m.weight)] for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) in embeddings}


def _untie(model: nn.Module, tied: dict[str, str]) -> None:
    """Set each tied embedding's weight to its int8 head, dequantized: (V, C) float32."""
    for head, emb in tied.items():
        w = model.get_submodule(head).weight().dequantize()  # (V, C)
        model.get_submodule(emb).weight = nn.Parameter(w.contiguous(), requires_grad=False)


def quantize_int8(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """(a copy of ``model`` (float32, CPU) with every ``nn.Linear`` dynamic int8, per-channel weights;
    {head: embedding} of the tied pairs, whose embedding is now the dequantized head).

    >>> m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> q, tied = quantize_int8(m)
    >>> type(q[0]).__name__, q[0].weight().int_repr().dtype, (q(torch.ones(1, 8)) - m(torch.ones(1, 8))).abs().max().item() < 0.05
    ('Linear', torch.int8, True)
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = model.to("cpu").float().eval()
    tied = _tied_embeddings(model)
    with _quiet():
        qmodel = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    _untie(qmodel, tied)
    return qmodel, tied


def int8_state_dict(qmodel: nn.Module, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors to store: int8 weight / scales / zero points / bias per quantized Linear, float32 for the rest.

    An embedding tied to a quantized head is left out (it is rebuilt from the head at load time).
    """
    qtype = _qlinear_type()
    out: dict[str, torch.Tensor] = {}
    quantized = {n: m for n, m in qmodel.named_modules() if isinstance(m, qtype)}
    for name, m in quantized.items():
        w = m.weight()  # quantized per-channel (out, in)
        if w.qscheme() != torch.per_channel_affine:
            raise ValueError(f"{name}: expected per-channel int8 weights, got {w.qscheme()}")
        out[f"{name}.weight_int8"] = w.int_repr()
        scale = w.q_per_channel_scales()
        if not torch.equal(scale.float().double(), scale):
            raise ValueError(f"{name}: a quantization scale is not a float32 value; float32 storage would change it")
        out[f"{name}.weight_scale"] = scale.float()
        out[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int8)
        if m.bias() is not None:
            out[f"{name}.bias"] = m.bias().detach().float()
    skip = {f"{emb}.weight" for emb in tied.values()}
    for name, module in qmodel.named_modules():
        if name in quantized or any(name.startswith(q + ".") for q in quantized):
            continue
        for key, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            full = f"{name}.{key}" if name else key
            if full not in skip and key not in module._non_persistent_buffers_set:
                out[full] = t.detach()
    return out


def load_int8(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Turn a freshly built float model into the stored int8 one, in place (``checkpoint.load_run`` calls this).

    Names and shapes are checked like :func:`lmforge.checkpoint.load_into`; errors are UserErrors naming ``source``.
    """
    qnames = sorted(k[: -len(".weight_int8")] for k in tensors if k.endswith(".weight_int8"))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not qnames or any(n not in linears for n in qnames):
        bad = [n for n in qnames if n not in linears][:3] or ["(no *.weight_int8 tensors)"]
        raise UserError(f"{source}: int8 weights do not match the model in config.yaml ({', '.join(bad)})")
    tied = {h: e for h, e in _tied_embeddings(model).items() if h in qnames}
    own = model.state_dict()
    drop = {f"{n}.{p}" for n in qnames for p in ("weight", "bias")} | {f"{e}.weight" for e in tied.values()}
    want = {k for k in own if k not in drop}
    have = {k for k in tensors if not k.endswith(SUFFIXES) and k.rsplit(".", 1)[0] not in qnames}
    if want != have:
        miss, extra = sorted(want - have), sorted(have - want)
        raise UserError(f"{source}: int8 weights do not match the model in config.yaml "
                        f"(missing {', '.join(miss[:3]) or '-'}; unexpected {', '.join(extra[:3]) or '-'})")
    for k in want:
        if tuple(tensors[k].shape) != tuple(own[k].shape):
            raise UserError(f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: tensors[k] for k in want}, strict=False)
    qtype = _qlinear_type()
    for name in qnames:
        lin, w = linears[name], tensors[f"{name}.weight_int8"]
        if tuple(w.shape) != tuple(lin.weight.shape) or w.dtype != torch.int8:
            raise UserError(f"{source}: {name}.weight_int8 is {w.dtype} {tuple(w.shape)}, expected int8 {tuple(lin.weight.shape)}")
        if (lin.bias is not None) != (f"{name}.bias" in tensors) or any(name + s not in tensors for s in SUFFIXES):
            raise UserError(f"{source}: {name}: scales or bias missing or unexpected (a truncated int8 checkpoint?)")
        with _quiet():
            qw = torch._make_per_channel_quantized_tensor(w, tensors[f"{name}.weight_scale"].double(),
                                                          tensors[f"{name}.weight_zero_point"].long(), 0)
            q = qtype(lin.in_features, lin.out_features, bias_=lin.bias is not None, dtype=torch.qint8)
            q.set_weight_bias(qw, tensors[f"{name}.bias"].float() if lin.bias is not None else None)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)
    _untie(model, tied)
    return model
