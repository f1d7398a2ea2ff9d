"""ONNX export of an image run (CNN, ResNet, ViT): ``pixels`` (B, C, H, W) float32 in [0, 1] -> ``logits`` (B, K).

The model normalises its own input (its ``pixel_mean`` / ``pixel_std`` buffers), so the graph takes plain
pixels, as ``lmforge predict`` and the server do. Batch norm is folded into the graph in eval mode.
Parity: onnxruntime and PyTorch see the same random pixels at batch 1 and 5; the largest absolute logit
difference must stay below :data:`~lmforge.tools.export.common.TOLERANCE`. No Hugging Face format.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.fileio import WriteError
from lmforge.runs.files import CONFIG
from lmforge.tools.export.common import OPSET, TOLERANCE, native_stderr_silenced, need

STATS = "image.json"  # lmforge.recipes.image.STATS (the run's channel statistics, copied along)


def write_onnx(tmp: Path, run_dir: Path, cfg, model: nn.Module, tok, kind: str) -> dict:
    onnx, ort = need("onnx"), need("onnxruntime")
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    gen = torch.Generator().manual_seed(0)
    path = tmp / "model.onnx"
    axes = {"pixels": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings(), native_stderr_silenced():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), (torch.rand(2, *shape, generator=gen),), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["pixels"], output_names=["logits"], dynamic_axes=axes)
        except OSError as e:
            raise WriteError(path, e) from None
        except Exception as e:  # noqa: BLE001 - report the exporter's reason in one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"ONNX export of the {m.name} failed: {type(e).__name__}: {first}") from None
    model.eval()
    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    worst, batches = 0.0, (1, 5)
    for B in batches:
        x = torch.rand(B, *shape, generator=gen)
        with torch.no_grad():
            ref = model(x)
        got = torch.as_tensor(session.run(["logits"], {"pixels": x.numpy()})[0])
        diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
        if not diff < TOLERANCE:
            raise UserError(f"ONNX (onnxruntime) parity check failed at batch {B}: max |logit difference| {diff:.3g}, "
                            f"expected < {TOLERANCE:g}; nothing was written")
        worst = max(worst, diff)
    shutil.copyfile(run_dir / CONFIG, tmp / CONFIG)
    if (run_dir / STATS).exists():
        shutil.copyfile(run_dir / STATS, tmp / STATS)
    return {"file": "model.onnx", "inputs": ["pixels"], "outputs": ["logits"], "input_shape": ["batch", *shape],
            "input_range": [0.0, 1.0], "dynamic_axes": axes, "opset": OPSET, "onnx_bytes": path.stat().st_size,
            "max_abs_diff": worst, "tolerance": TOLERANCE, "batches_checked": list(batches),
            "runtime": f"onnxruntime {ort.__version__}", "labels": cfg.image.label_names}
