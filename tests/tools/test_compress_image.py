"""`lmforge compress` on image runs (digits, tiny models, one thread): static int8 for a CNN / ResNet (every
convolution and Linear layer) and dynamic int8 for a ViT, close to float32 and reloaded exactly; structured
channel pruning that shrinks the convolutions, with a recovery; distillation of a ResNet into a smaller CNN;
the flags an image run refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_errors
from safetensors.torch import load_file

from lmforge.__main__ import main
from lmforge.recipes.train import train
from lmforge.runs import loader

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits-cnn.yaml")
FAST = {"train.max_steps": "80", "train.eval_interval": "0", "train.save_interval": "80", "train.log_interval": "20",
        "train.warmup_steps": "5", "train.keep_best": ""}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress-image")
    train(DIGITS, overrides={**FAST, "model.n_layer": "2"}, out=tmp / "cnn", progress=False)
    train(DIGITS, overrides={**FAST, "model.name": "resnet", "model.channels": "16,32", "model.n_layer": "1",
                             "train.lr": "1e-2"}, out=tmp / "resnet", progress=False)
    return tmp


def _test_logits(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from lmforge.data.augment import to_float
    from lmforge.tasks.image import read_split

    cfg, model, _ = loader.load_run(run)
    d = read_split(cfg, "test")
    with torch.inference_mode():
        return model(to_float(d.images)), d.labels


@pytest.mark.parametrize("family", ["cnn", "resnet"])
def test_int8_convolutions_are_close_to_float_and_reload_exactly(runs, family, capsys):
    src, out = runs / family, runs / f"{family}-int8"
    assert main(["compress", str(src), "--method", "int8", "--out", str(out), "--repeats", "2"]) == 0
    r = json.loads((out / "compression.json").read_text())
    layers = [m for m in loader.load_run(src)[1].modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert r["int8"]["kind"].startswith("static") and r["int8"]["layers"] == len(layers)  # every one of them
    assert r["delta"]["size_ratio"] > 2.5 and "latency_ms_b64" in r and "throughput_img_s_b64" in r
    assert abs(r["delta"]["metric"]["accuracy"]) <= 0.03, r["delta"]
    w = load_file(out / "model.safetensors")
    convs = [k for k in w if k.endswith(".weight_int8")]
    assert convs and all(w[k].dtype == torch.int8 for k in convs) and not (out / "tokenizer.json").exists()
    assert not any(k.endswith(".weight") for k in w)  # no float copy of any convolution or Linear weight
    f, y = _test_logits(src)
    q, _ = _test_logits(out)
    again, _ = _test_logits(out)
    assert torch.equal(q, again)  # the model that loads is the model that was measured
    assert (q.argmax(-1) == f.argmax(-1)).float().mean() >= 0.97
    assert (q - f).abs().max() < 0.15 * f.abs().max()
    cfg, model, _ = loader.load_run(out)
    assert cfg.compress.quantize == "int8"
    js = runs / f"{family}-int8.json"
    assert main(["evaluate", str(out), "--split", "test", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["accuracy"] == pytest.approx(float((q.argmax(-1) == y).float().mean()), abs=1e-4)
    capsys.readouterr()


def test_int8_vit_quantizes_its_linear_layers(runs, tmp_path):
    src = tmp_path / "vit"
    train(DIGITS, overrides={**FAST, "model.name": "vit", "model.patch_size": "2", "model.n_layer": "1", "model.n_head": "2",
                             "model.n_embd": "32", "train.max_steps": "40"}, out=src, progress=False)
    assert main(["compress", str(src), "--method", "int8", "--out", str(tmp_path / "q"), "--repeats", "1"]) == 0
    r = json.loads((tmp_path / "q" / "compression.json").read_text())
    assert r["int8"]["kind"].startswith("dynamic") and r["int8"]["layers"] >= 4
    f, _ = _test_logits(src)
    q, _ = _test_logits(tmp_path / "q")
    assert (q.argmax(-1) == f.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("family", ["cnn", "resnet"])
def test_channel_pruning_shrinks_the_convolutions_and_recovers(runs, family):
    src, out = runs / family, runs / f"{family}-pruned"
    assert main(["compress", str(src), "--method", "prune", "--sparsity", "0.5", "--structured", "channels",
                 "--recover-steps", "40", "--recover-lr", "3e-3", "--out", str(out), "--repeats", "1"]) == 0
    r = json.loads((out / "compression.json").read_text())
    cfg, model, _ = loader.load_run(out)
    before = loader.load_run(src)[0].model.conv_widths()
    assert cfg.model.conv_widths() == [round(w / 2) for w in before] == r["pruned"]["per_layer"]
    assert r["params"] < 0.7 * r["original"]["params"] and r["recovery"]["steps"] == 40
    assert r["metric"]["accuracy"] > 0.5
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.shape[0] == c.out_channels for c in convs)
    # a pruned run is an ordinary run: int8 on top of it
    assert main(["compress", str(out), "--method", "int8", "--out", str(runs / f"{family}-pruned-int8"), "--repeats", "1"]) == 0


def test_distill_a_resnet_into_a_small_cnn(runs, tmp_path):
    student = tmp_path / "student.yaml"
    student.write_text("task: image\nmodel:\n  name: cnn\n  channels: 8,16\n  n_layer: 1\n  n_embd: 32\n"
                       "image:\n  data: digits\n  rotate: 10\ndistill:\n  alpha: 0.7\n  temperature: 2.0\n"
                       "train:\n  lr: 3.0e-3\n  max_steps: 80\n  batch_size: 64\n  eval_interval: 0\n  log_interval: 20\n")
    out = tmp_path / "s"
    assert main(["compress", "--method", "distill", "--teacher", str(runs / "resnet"), "--student-config", str(student),
                 "--out", str(out), "--repeats", "1"]) == 0
    r = json.loads((out / "compression.json").read_text())
    assert r["student"]["model"] == "cnn" and r["params"] < r["original"]["params"]
    losses = [x["loss"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if x.get("split") == "train"]
    assert losses[-1] < 0.6 * losses[0], losses
    cfg, model, _ = loader.load_run(out)
    t = loader.load_run(runs / "resnet")[1]
    assert torch.equal(model.pixel_mean, t.pixel_mean) and cfg.image.data == "digits" and cfg.model.num_classes == 10


def test_image_compress_refuses_what_it_cannot_do(runs, tmp_path, capsys):
    student = tmp_path / "bad.yaml"
    student.write_text("task: image\nmodel:\n  name: cnn\nimage:\n  data: mnist\n")
    cases = [
        (["compress", str(runs / "cnn"), "--method", "prune", "--sparsity", "0.5", "--structured", "heads",
          "--out", str(tmp_path / "a")], "--structured channels"),
        (["compress", "--method", "distill", "--teacher", str(runs / "cnn"), "--student-config", str(student),
          "--out", str(tmp_path / "b")], "image.data"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)
