"""Static int8 quantization of the convolutional image models (CNN, ResNet), stored in safetensors (no pickle).

Every convolution and Linear layer runs in int8 with PyTorch's own quantized CPU kernels (oneDNN / fbgemm
on x86, qnnpack on ARM): the model is traced with ``torch.fx``, BatchNorm folded into the convolution before
it and ReLU fused after it, observers record the activation ranges on calibration images (post-training
static quantization: per-tensor uint8 activations, per-output-channel int8 weights), and
:func:`quantize_static` returns the converted ``GraphModule``. Pixels in, float logits out, like the float model.

Why this path: the text models' :class:`~lmforge.models.quantize.Int8Linear` quantizes activations on the fly
(``torch._int_mm``), and there is no such primitive for convolutions. PyTorch 2.13 still ships FX graph mode
quantization (``torch.ao.quantization.quantize_fx``, marked deprecated in favour of torchao's PT2E flow),
and its converted modules call int8 convolution kernels eagerly; torchao's PT2E graph only reaches int8
kernels through ``torch.compile`` (Inductor), a C++ build at every load. The deprecation warnings are
silenced here; ``docs/design.md`` ("Images") has the measurements.

Stored tensors (names of the converted module's state dict; what :func:`load_static` reads back)::

    name.weight_int8         int8     (out, in, kh, kw) / (out, in)   the quantized weight's integers
    name.weight_scale        float64  (out,)                          per output channel
    name.weight_zero_point   int64    (out,)
    name.bias                float32  (out,)                          BatchNorm folded in
    name.scale, name.zero_point, <node>_scale_0, <node>_zero_point_0  the activations' quantization (scalars)

:func:`load_static` traces a freshly built float model the same way, converts it, and loads these tensors
into it: the model that was measured at compress time is the model that loads.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import warnings

import torch
from torch import Tensor, nn

from lmforge.errors import UserError

FORMAT = "int8-static"  # the safetensors metadata's "lmforge" value
PACKED = "._packed_params._packed_params"


@contextlib.contextmanager
def _quiet():
    """torch.ao.quantization's deprecation and quantized-tensor warnings, once per call: not the user's to act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def engine() -> str:
    """The quantized kernels of this machine: x86 (oneDNN / fbgemm), else qnnpack (ARM)."""
    have = torch.backends.quantized.supported_engines
    return "x86" if "x86" in have else "qnnpack" if "qnnpack" in have else have[0]


def _convert(model: nn.Module, example: Tensor, calibrate, kind: str) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if torch.backends.quantized.engine != kind:
        torch.backends.quantized.engine = kind
    with _quiet():
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), get_default_qconfig_mapping(kind), (example,))
        with torch.no_grad():
            calibrate(prepared)
        return convert_fx(prepared)


def quantize_static(model: nn.Module, calibration: Tensor, batch: int = 256) -> nn.Module:
    """The int8 copy of a CNN / ResNet (``model`` itself is left alone), its activation ranges observed on
    ``calibration`` pixels (N, C, H, W).

    >>> from lmforge.config import ModelConfig
    >>> from lmforge.models.cnn import CNN
    >>> m = CNN(ModelConfig(name="cnn", image_size=8, in_channels=1, num_classes=3, channels="4,8", n_embd=16)).eval()
    >>> x = torch.rand(32, 1, 8, 8)
    >>> q = quantize_static(m, x)
    >>> q(x).shape, bool((q(x) - m(x)).abs().max() < 0.1 * m(x).abs().max() + 0.05)
    (torch.Size([32, 3]), True)
    """
    if not len(calibration):
        raise UserError("int8: no calibration images")

    def run(prepared):
        for i in range(0, len(calibration), batch):
            prepared(calibration[i : i + batch])

    return _convert(model, calibration[:1], run, engine())


def static_state_dict(qmodel: nn.Module) -> dict[str, Tensor]:
    """The converted model's tensors, quantized ones as (int8, scales, zero points): the module docstring's names."""
    out: dict[str, Tensor] = {}

    def put_weight(name: str, w: Tensor) -> None:
        if w.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric) or w.q_per_channel_axis() != 0:
            raise UserError(f"int8: {name}.weight has a quantization scheme lmforge does not store ({w.qscheme()})")
        out[f"{name}.weight_int8"] = w.int_repr().contiguous()
        out[f"{name}.weight_scale"] = w.q_per_channel_scales().contiguous()
        out[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().contiguous()

    for k, v in qmodel.state_dict().items():
        if isinstance(v, torch.dtype):
            continue
        if k.endswith(PACKED):  # a quantized Linear: (weight, bias)
            name = k[: -len(PACKED)]
            put_weight(name, v[0])
            if v[1] is not None:
                out[f"{name}.bias"] = v[1].detach().contiguous()
        elif v.is_quantized:
            put_weight(k[: -len(".weight")], v)
        else:
            out[k] = v.detach().contiguous()
    return out


def load_static(model: nn.Module, tensors: dict[str, Tensor], source: str, example: Tensor) -> nn.Module:
    """The int8 model of :func:`quantize_static` from ``model`` (the float architecture, freshly built) and the
    stored ``tensors`` (``source`` names the file in errors); ``example``: one input (1, C, H, W)."""
    kind = engine()
    qmodel = _convert(model, example, lambda prepared: prepared(example), kind)
    left = dict(tensors)

    def take(key: str) -> Tensor:
        if key not in left:
            raise UserError(f"{source}: {key} is missing (not an int8 image run written by this version of lmforge?)")
        return left.pop(key)

    def weight(name: str, like: Tensor) -> Tensor:
        q, s, z = take(f"{name}.weight_int8"), take(f"{name}.weight_scale"), take(f"{name}.weight_zero_point")
        if q.dtype != torch.int8 or q.shape != like.shape or s.shape != z.shape or len(s) != len(q):
            raise UserError(f"{source}: {name}.weight_int8 is {q.dtype} {tuple(q.shape)} with {tuple(s.shape)} scales; "
                            f"the run's config.yaml gives int8 {tuple(like.shape)}")
        with _quiet():
            return torch._make_per_channel_quantized_tensor(q, s.double(), z.long(), 0)

    template = qmodel.state_dict()
    state = collections.OrderedDict()
    state._metadata = template._metadata  # the quantized modules' format versions  # type: ignore[attr-defined]
    for k, v in template.items():
        if isinstance(v, torch.dtype):
            state[k] = v
        elif k.endswith(PACKED):
            name = k[: -len(PACKED)]
            state[k] = (weight(name, v[0]), take(f"{name}.bias") if v[1] is not None else None)
        elif v.is_quantized:
            state[k] = weight(k[: -len(".weight")], v)
        else:
            t = take(k)
            if t.shape != v.shape:
                raise UserError(f"{source}: {k} has shape {tuple(t.shape)}, the run's config.yaml gives {tuple(v.shape)}")
            state[k] = t
    if left:
        raise UserError(f"{source}: unexpected tensors for this model: {', '.join(sorted(left)[:3])}")
    with _quiet():
        qmodel.load_state_dict(state)
    return qmodel.eval()
