"""Dynamic int8 quantization of the ``nn.Linear`` layers, stored in safetensors (no pickle).

Each ``nn.Linear`` (out, in) becomes an :class:`Int8Linear`: the weight is int8 with one scale per
output row (per-channel, symmetric: ``round(w / s)``, ``s = max|row| / 127``); at run time each
input *row* (token) is quantized to int8 with a scale of its own (dynamic, per-token, symmetric),
``torch._int_mm`` multiplies int8 x int8 into int32, and one fused pass rescales by both scales and
adds the float32 bias. Embeddings, LayerNorms and biases stay float32.

Why not ``torch.ao.quantization.quantize_dynamic`` (which lmforge used first): it quantizes a whole
activation matrix with one scale and, on x86, 7 bits (``reduce_range``), so one outlier channel
costs every other value its precision. On the fine-tuned MiniLM its final hidden states were off by
a median 29% (relative); per-token 8-bit scales cut that ~4x at the same int8 matmul cost. It is
also deprecated in torch 2.13 (in favour of torchao) and has no CUDA kernels; ``_int_mm`` runs on
both. ``benchmarks/encoder.py`` measures both kernels.

A quantized Linear ``name`` is stored as four tensors (a float checkpoint loader rejects them by
name); :class:`Int8Linear`'s own ``state_dict`` has exactly these names::

    name.weight_int8         int8    (out, in)   round(w / scale), clamped to [-127, 127]
    name.weight_scale        float32 (out,)      one scale per output row
    name.weight_zero_point   int8    (out,)      zeros (symmetric; kept for readers of the format)
    name.bias                float32 (out,)      if the layer has one

Tied embeddings: a head that shares its weight with an embedding (GPT's ``lm_head`` /
``transformer.wte``, BERT's ``mlm_head.decoder`` / ``bert.wte``) is quantized and the embedding
becomes the dequantized int8 head (its per-row scales are per-token scales of the embedding table),
in memory at compress time and again at load time, so the matrix is stored once (int8), and the
model that was measured is the model that loads.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lmforge.errors import UserError

SUFFIXES = (".weight_int8", ".weight_scale", ".weight_zero_point")


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: (int8 tensor like ``x``, float32 scales (..., 1)) with ``x ~= q * s``.

    >>> q, s = quantize_rows(torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]]))
    >>> q.tolist(), s.flatten().tolist()[1] > 0
    ([[64, -127, 32], [0, 0, 0]], True)
    """
    s = x.abs().amax(-1, keepdim=True).float().clamp_(min=1e-12).div_(127.0)
    return (x / s).round_().clamp_(-127, 127).to(torch.int8), s


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with int8 weights (per output row scales) and int8 activations (per token scales).

    >>> lin = nn.Linear(16, 8)
    >>> q = Int8Linear.from_linear(lin)
    >>> x = torch.randn(3, 5, 16)
    >>> bool((q(x) - lin(x)).abs().max() < 0.02 * lin(x).abs().max())
    True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("weight_zero_point", torch.zeros(out_features, dtype=torch.int8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Int8Linear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None).to(lin.weight.device)
        w, s = quantize_rows(lin.weight.detach().float())
        q.weight_int8.copy_(w)
        q.weight_scale.copy_(s.squeeze(1))
        if lin.bias is not None:
            q.bias.copy_(lin.bias.detach().float())
        return q

    def dequantized_weight(self) -> Tensor:
        """The float32 (out, in) weight this layer multiplies by."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        xq, xs = quantize_rows(x.reshape(-1, self.in_features))  # (N, in) int8, (N, 1)
        y = torch._int_mm(xq, self.weight_int8.t())  # (N, out) int32, exact
        y = y * self.weight_scale  # float32: int32 -> float in the same pass
        y = torch.addcmul(self.bias, y, xs) if self.bias is not None else y.mul_(xs)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def _tied_embeddings(model: nn.Module) -> dict[str, str]:
    """{Linear name: Embedding name} for Linear layers whose weight *is* an embedding's weight."""
    embeddings = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return {n: embeddings[id(m.weight)] for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) in embeddings}


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _untie(model: nn.Module, tied: dict[str, str]) -> None:
    """Set each tied embedding's weight to its int8 head, dequantized: (V, C) float32."""
    for head, emb in tied.items():
        w = model.get_submodule(head).dequantized_weight()
        model.get_submodule(emb).weight = nn.Parameter(w.contiguous(), requires_grad=False)


def quantize_int8(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """(a copy of ``model`` (float32, CPU, eval) with every ``nn.Linear`` replaced by an :class:`Int8Linear`;
    {head: embedding} of the tied pairs, whose embedding is now the dequantized head).

    >>> m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> ref = m(torch.ones(1, 8))
    >>> q, tied = quantize_int8(m)
    >>> type(q[0]).__name__, q[0].weight_int8.dtype, (q(torch.ones(1, 8)) - ref).abs().max().item() < 0.05
    ('Int8Linear', torch.int8, True)
    """
    model = copy.deepcopy(model).to("cpu").float().eval()
    tied = _tied_embeddings(model)
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        _swap(model, name, Int8Linear.from_linear(m))
    _untie(model, tied)
    return model, tied


def int8_state_dict(qmodel: nn.Module, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """The tensors to store: int8 weight / scales / zero points / bias per quantized Linear, float32 for the rest.

    An embedding tied to a quantized head is left out (it is rebuilt from the head at load time).
    """
    skip = {f"{emb}.weight" for emb in tied.values()}
    return {k: t.detach().contiguous() for k, t in qmodel.state_dict().items() if k not in skip}


def load_int8(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Turn a freshly built float model into the stored int8 one, in place (``checkpoint.load_run`` calls this).

    Names, shapes and dtypes are checked like :func:`lmforge.runs.files.load_into`; errors are
    UserErrors naming ``source``.
    """
    qnames = sorted(k[: -len(".weight_int8")] for k in tensors if k.endswith(".weight_int8"))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not qnames or any(n not in linears for n in qnames):
        bad = [n for n in qnames if n not in linears][:3] or ["(no *.weight_int8 tensors)"]
        raise UserError(f"{source}: int8 weights do not match the model in config.yaml ({', '.join(bad)})")
    for name in qnames:
        lin = linears[name]
        if (lin.bias is not None) != (f"{name}.bias" in tensors) or any(name + s not in tensors for s in SUFFIXES):
            raise UserError(f"{source}: {name}: scales or bias missing or unexpected (a truncated int8 checkpoint?)")
        w = tensors[f"{name}.weight_int8"]
        if tuple(w.shape) != tuple(lin.weight.shape) or w.dtype != torch.int8:
            raise UserError(f"{source}: {name}.weight_int8 is {w.dtype} {tuple(w.shape)}, expected int8 {tuple(lin.weight.shape)}")
        if bool(tensors[f"{name}.weight_zero_point"].any()):
            raise UserError(f"{source}: {name}.weight_zero_point is not all zeros (only symmetric int8 is supported)")
    tied = {h: e for h, e in _tied_embeddings(model).items() if h in qnames}
    for name in qnames:
        lin = linears[name]
        _swap(model, name, Int8Linear(lin.in_features, lin.out_features, lin.bias is not None))
    own = model.state_dict()
    want = {k for k in own if k not in {f"{e}.weight" for e in tied.values()}}
    if want != set(tensors):
        miss, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
        raise UserError(f"{source}: int8 weights do not match the model in config.yaml "
                        f"(missing {', '.join(miss[:3]) or '-'}; unexpected {', '.join(extra[:3]) or '-'})")
    for k in want:
        if tuple(tensors[k].shape) != tuple(own[k].shape):
            raise UserError(f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: tensors[k] for k in want}, strict=False)
    _untie(model, tied)
    return model


def _qdyn_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` through ``torch.ao.quantization.quantize_dynamic`` (per-channel weights,
    per-tensor 7-bit activations on x86): what lmforge's int8 is compared with in benchmarks/encoder.py."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13: torch.ao.quantization is deprecated
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).float().eval(), {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)

