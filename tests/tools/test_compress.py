"""`lmforge compress` (int8, unstructured / structured pruning, recovery), its report, and bad inputs.

Tiny runs made here: a GPT LM (gpt-tiny, 40 steps), a GPT classifier fine-tuned from it, an LSTM classifier.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import assert_one_line_errors
from safetensors.torch import load_file

from lmforge.__main__ import main
from lmforge.errors import UserError
from lmforge.runs.loader import load_run
from lmforge.tools.compress import compress
from lmforge.tools.compress import prune as P

KEYS = {"size_mb", "params", "params_nonzero", "latency_ms_b1", "latency_ms_b32", "throughput_seq_s_b32", "metric"}


@pytest.fixture(scope="module")
def int8_lm(runs):
    return compress(runs / "lm", "int8", runs / "lm-int8", repeats=2, progress=False)


def test_int8_lm_is_close_to_float_loads_and_shrinks(runs, int8_lm, capsys):
    r = int8_lm
    assert KEYS <= r.keys() and KEYS <= r["original"].keys() and {"size_ratio", "speedup_b1", "speedup_b32"} <= r["delta"].keys()
    assert {"loss", "perplexity"} <= r["metric"].keys() and abs(r["delta"]["metric"]["loss"]) < 0.02
    assert json.loads((runs / "lm-int8" / "compression.json").read_text()) == r
    assert (runs / "lm-int8" / "compression.md").read_text().count("\n") == 4  # header, rule, two rows
    cfg, q, _ = load_run(runs / "lm-int8")
    _, f, _ = load_run(runs / "lm")
    assert cfg.compress.quantize == "int8" and type(q.lm_head).__name__ == "Int8Linear"
    ids = torch.randint(0, cfg.model.vocab_size, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = f(ids), q(ids)  # (4, 48, V)
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # int8 weights and activations: 1.9% here
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    stored = load_file(runs / "lm-int8" / "model.safetensors")
    linears = [n for n, m in f.named_modules() if isinstance(m, torch.nn.Linear)]
    assert all(stored[f"{n}.weight_int8"].dtype == torch.int8 and f"{n}.weight" not in stored for n in linears)
    assert "transformer.wte.weight" not in stored  # tied: rebuilt from the int8 head
    assert r["int8"]["linear_weights_mb_float32"] / r["int8"]["linear_weights_mb_int8"] > 3.5 and r["delta"]["size_ratio"] > 2.5
    assert main(["generate", str(runs / "lm-int8"), "--prompt", "the king", "--max-new-tokens", "8", "--seed", "0"]) == 0
    assert main(["evaluate", str(runs / "lm-int8")]) == 0
    assert capsys.readouterr().out.count('"perplexity"') == 1


def test_int8_classifier_predicts_like_the_original(runs, capsys):
    r = compress(runs / "clf", "int8", runs / "clf-int8", repeats=2, progress=False)
    assert {"accuracy", "macro_f1"} <= r["metric"].keys() and "held-out" in r["metric"]["data"]
    assert abs(r["delta"]["metric"]["accuracy"]) <= 0.05
    texts = ["the people sing of bread", "the king walks at night", "queen and bread", "rain at the castle"]
    capsys.readouterr()
    assert main(["predict", str(runs / "clf"), *texts]) == 0 and main(["predict", str(runs / "clf-int8"), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x.split("\t")[0] for x in lines[:4]] == [x.split("\t")[0] for x in lines[4:]]


def test_unstructured_pruning_is_exact_and_recovery_keeps_it(runs):
    r = compress(runs / "lm", "prune", runs / "lm-p50", sparsity=0.5, repeats=2, progress=False)
    _, m, _ = load_run(runs / "lm-p50")
    zeros, total = P.sparsity_of(P.prunable(m))
    assert zeros == round(0.5 * total) == r["pruned"]["zeros"] and r["params_nonzero"] <= r["params"] - zeros
    assert r["params"] == r["original"]["params"]  # zeros are stored: same count, same size
    r2 = compress(runs / "lm", "prune", runs / "lm-p50r", sparsity=0.5, recover_steps=6, repeats=2, progress=False)
    _, m2, _ = load_run(runs / "lm-p50r")
    w1, w2 = P.prunable(m), P.prunable(m2)
    assert P.sparsity_of(w2) == (zeros, total) and r2["recovery"]["steps"] == 6
    assert all(torch.equal(w1[k] == 0, w2[k] == 0) for k in w1)  # the same weights stay zero ...
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)  # ... while the others trained
    assert (runs / "lm-p50r" / "metrics.jsonl").exists() and not (runs / "lm-p50r" / "train_state.safetensors").exists()


def test_gradual_masks_follow_the_cubic_schedule_and_never_regrow():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    hook, seen, before = P.GradualMasks(model, 0.6, ramp=8, every=2), [], None
    for step in range(1, 13):
        with torch.no_grad():  # a "training step": every weight moves, pruned ones included
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        hook(step)
        zeros, total = P.sparsity_of(P.prunable(model))
        seen.append(zeros / total)
        now = {k: w == 0 for k, w in P.prunable(model).items()}
        if before is not None:
            assert all(bool((before[k] & ~now[k]).sum() == 0) for k in now)  # pruned once, pruned for good
        before = now
    assert seen[0] == 0.0 and seen[1] == pytest.approx(P.cubic_sparsity(2, 8, 0.6), abs=1e-3)
    assert all(a <= b for a, b in zip(seen, seen[1:])) and seen[7:] == [pytest.approx(0.6, abs=1e-3)] * 5


def test_gradual_pruning_with_distillation_recovery(runs):
    """A classifier pruned while recovering, learning the unpruned model's outputs: exact sparsity at the end,
    and the teacher changes what is learned (the same recovery on the labels alone ends elsewhere)."""
    kw = dict(sparsity=0.5, recover_steps=8, repeats=2, progress=False)
    r = compress(runs / "clf", "prune", runs / "clf-grad", gradual=True, **kw)
    assert r["recovery"]["gradual"] and r["recovery"]["distill"] and r["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    compress(runs / "clf", "prune", runs / "clf-grad-ce", gradual=True, recover_distill=False, **kw)
    _, a, _ = load_run(runs / "clf-grad")
    _, b, _ = load_run(runs / "clf-grad-ce")
    wa, wb = P.prunable(a), P.prunable(b)
    assert P.sparsity_of(wa)[0] == round(0.5 * P.sparsity_of(wa)[1]) and any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert main(["predict", str(runs / "clf-grad"), "people sing of bread"]) == 0


def test_recovery_keeps_the_sparsity_of_a_run_trained_with_ema(runs, labelled):
    """A recipe's train.ema_decay must not reach the recovery: fit() would hand back the weights' moving
    average, in which the pruned weights are not zero (chn-reviews' recipe has one: 0% sparsity came out)."""
    assert main(["finetune", "--finetune.data", str(labelled), "--base", str(runs / "lm"), "--train.max_steps=20",
                 "--train.batch_size=16", "--train.lr=3e-3", "--train.ema_decay=0.9", "--train.eval_interval=0",
                 "--train.save_interval=1000", "--out", str(runs / "clf-ema")]) == 0
    r = compress(runs / "clf-ema", "prune", runs / "clf-ema-p50", sparsity=0.5, recover_steps=6, gradual=True,
                 repeats=2, progress=False)
    _, m, _ = load_run(runs / "clf-ema-p50")
    zeros, total = P.sparsity_of(P.prunable(m))
    assert zeros == round(0.5 * total) and r["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_structured_pruning_shrinks_the_matrices_and_reloads(runs, capsys):
    r = compress(runs / "lm", "prune", runs / "lm-heads", sparsity=0.5, structured="heads", repeats=2, progress=False)
    cfg, m, _ = load_run(runs / "lm-heads")
    assert cfg.model.layer_n_head == "1,1" and cfg.compress.structured == "heads"  # 2 blocks x 2 heads -> one each
    attn = m.transformer.h[0].attn
    assert tuple(attn.c_attn.weight.shape) == (3 * 32, 64) and tuple(attn.c_proj.weight.shape) == (64, 32)
    assert r["params"] < r["original"]["params"] and r["size_mb"] < r["original"]["size_mb"]
    assert main(["generate", str(runs / "lm-heads"), "--prompt", "the king", "--max-new-tokens", "6", "--seed", "0"]) == 0
    # a classifier: MLP neurons, then a short recovery on its labelled data
    r = compress(runs / "clf", "prune", runs / "clf-neurons", sparsity=0.5, structured="neurons", recover_steps=4,
                 repeats=2, progress=False)
    cfg, m, _ = load_run(runs / "clf-neurons")
    widths = [int(w) for w in cfg.model.layer_n_inner.split(",")]  # a global ranking: blocks lose different shares
    assert sum(widths) == 256 and [blk.mlp.c_fc.weight.shape[0] for blk in m.backbone.transformer.h] == widths
    assert r["recovery"]["val_loss"] is not None and "accuracy" in r["metric"]
    assert main(["predict", str(runs / "clf-neurons"), "people sing of bread"]) == 0


def test_cutting_heads_and_neurons_equals_zeroing_their_outputs():
    from lmforge.config import ModelConfig
    from lmforge.models import build

    torch.manual_seed(0)
    model = build(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_embd=32, block_size=16)).eval()
    ref = copy.deepcopy(model)
    with torch.no_grad():  # reference: head 1 and 3 of block 0, and MLP neurons 0..63 of block 1 contribute nothing
        ref.transformer.h[0].attn.c_proj.weight[:, 8:16] = 0
        ref.transformer.h[0].attn.c_proj.weight[:, 24:32] = 0
        ref.transformer.h[1].mlp.c_proj.weight[:, :64] = 0
    P._shrink_attention(model.transformer.h[0].attn, [0, 2])
    P._shrink_mlp(model.transformer.h[1].mlp, list(range(64, 128)))
    x = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    cfg = ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_embd=32, block_size=16, layer_n_head="2,4", layer_n_inner="128,64")
    shrunk = build(cfg)  # the config compress writes builds the pruned shapes, and the KV cache follows them
    assert {k: v.shape for k, v in shrunk.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert [k.shape[1] for k in shrunk.new_cache(1, 16).k] == [2, 4]
    assert P._select([torch.tensor([3.0, 1.0]), torch.tensor([0.5, 0.2, 4.0])], 4) == [[0], [2]]  # one per block stays


def test_per_layer_shapes_default_to_the_uniform_model():
    from lmforge.config import ModelConfig
    from lmforge.models import build

    cfg = ModelConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32)
    assert [cfg.n_head_at(i) for i in range(2)] == [2, 2] and cfg.n_inner_at(1) == 128
    assert tuple(build(cfg).transformer.h[1].mlp.c_fc.weight.shape) == (128, 32)
    for bad in ("1", "1,0", "a,b"):
        with pytest.raises(UserError, match="layer_n_head"):
            ModelConfig(vocab_size=50, n_layer=2, layer_n_head=bad)


def test_report_plot(runs, int8_lm, tmp_path):
    if not (runs / "lm-p50").exists():
        compress(runs / "lm", "prune", runs / "lm-p50", sparsity=0.5, repeats=2, progress=False)
    png = tmp_path / "plots" / "trade-off.png"
    assert main(["report", "compress", str(runs / "lm-int8"), str(runs / "lm-p50"), "--out", str(png), "--batch", "32"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_inputs_are_one_line_errors_and_write_nothing(runs, int8_lm, tmp_path, capsys):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    lm, o = str(runs / "lm"), str(tmp_path / "out")
    cases = [
        (["compress", str(tmp_path / "tok"), "--method", "int8", "--out", o], "not an lmforge run directory"),
        (["compress", str(tmp_path / "missing"), "--method", "int8", "--out", o], "not found"),
        (["compress", lm, "--method", "prune", "--sparsity", "1.5", "--out", o], "--sparsity"),
        (["compress", lm, "--method", "prune", "--sparsity", "0", "--out", o], "--sparsity"),
        (["compress", lm, "--method", "prune", "--out", o], "--sparsity"),
        (["compress", lm, "--method", "fp4", "--out", o], "invalid choice: 'fp4'"),
        (["compress", lm, "--method", "int8", "--sparsity", "0.5", "--out", o], "apply to --method prune"),
        (["compress", lm, "--method", "prune", "--sparsity", "0.5", "--gradual", "--out", o], "--gradual"),
        (["compress", lm, "--method", "prune", "--sparsity", "0.5", "--gradual", "--recover-steps", "9", "--structured", "heads",
          "--out", o], "--gradual"),
        (["compress", str(runs / "lstm"), "--method", "prune", "--sparsity", "0.5", "--structured", "heads", "--out", o], "LSTM"),
        (["compress", str(runs / "lm-int8"), "--method", "int8", "--out", o], "already int8"),
        (["compress", lm, "--method", "int8", "--out", str(tmp_path / "full")], "already exists"),
        (["compress", str(runs / "clf"), "--method", "int8", "--data", str(tmp_path / "nope.tsv"), "--out", o], "nope.tsv"),
        (["report", "compress", lm, "--out", str(tmp_path / "p.png")], "no compression.json"),
        (["pretrain", "--resume", str(runs / "lm-int8")], "cannot be resumed"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)  # and no OUT, no temporary folder left
    with pytest.raises(UserError, match="unknown compression method"):
        compress(lm, "fp4", o)


def test_int8_linear_per_token_scales_survive_an_outlier_token():
    """One token 100x larger than the rest: per-token activation scales keep the others precise
    (a per-tensor scale, as in quantize_dynamic, would leave them ~7 bits of a 100x larger range)."""
    from lmforge.models.quantize import Int8Linear

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    x = torch.randn(2, 9, 64, generator=g)
    x[0, 3] *= 100
    q = Int8Linear.from_linear(lin)
    with torch.no_grad():
        ref, out = lin(x), q(x)
    rel = (out - ref).norm(dim=-1) / ref.norm(dim=-1)  # (2, 9) per token
    assert rel.max() < 0.02 and out.shape == ref.shape and out.dtype == torch.float32
    assert torch.equal(q.weight_int8.abs().amax(1), torch.full((48,), 127, dtype=torch.int8))  # full range per row


def test_evaluate_compile_gives_the_same_figures(runs, tmp_path, capsys):
    """`lmforge evaluate --compile` (torch.compile, dynamic shapes) on an int8 classifier: same accuracy / F1."""
    q = tmp_path / "clf-int8"
    compress(runs / "clf", "int8", q, repeats=1, progress=False)
    a, b = tmp_path / "eager.json", tmp_path / "compiled.json"
    assert main(["evaluate", str(q), "--json", str(a)]) == 0
    assert main(["evaluate", str(q), "--compile", "--json", str(b)]) == 0
    ea, eb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ea["accuracy"] == eb["accuracy"] and ea["confusion"] == eb["confusion"]
