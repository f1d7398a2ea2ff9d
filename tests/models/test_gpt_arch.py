"""GPT architecture options (rope, rmsnorm, swiglu / relu2 MLPs, q / k norms) and the Muon optimizer."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, assert_one_line_errors, make_corpus, tiny_config

from lmforge.__main__ import main
from lmforge.config import ModelConfig, RunConfig, TrainConfig, save_config
from lmforge.errors import UserError
from lmforge.hf import gpt2
from lmforge.models import GPT
from lmforge.models.layers import RMSNorm, for_decode, rope_table
from lmforge.runs import files as ckpt
from lmforge.runs import loader
from lmforge.tasks.lm import lm_loss
from lmforge.tools.generate import generate
from lmforge.training.loop import fit
from lmforge.training.optim import MuonAdamW, build_optimizer, lr_at, set_lr

torch.set_num_threads(1)

OPTIONS = {
    "rope": dict(pos_emb="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "all": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True),
    "all-untied-nobias": dict(pos_emb="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_weights=False, bias=False),
}
MODERN = OPTIONS["all"]


tiny = tiny_config


def perturbed(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A GPT with noise on every parameter (norm gains too), so a wrong code path cannot hide."""
    torch.manual_seed(seed)
    m = GPT(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


# --- every option builds, runs and learns -------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_forward_backward_and_learning(name):
    torch.manual_seed(0)
    m = GPT(tiny(**OPTIONS[name]))
    seq = torch.arange(10).repeat(2)[None, :16]  # a tiny repeated sequence
    x, y = seq[:, :-1], seq[:, 1:]
    logits = m(x)
    assert logits.shape == (1, 15, 100) and torch.isfinite(logits).all()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_option_modules():
    m = GPT(tiny(**MODERN))
    block = m.transformer.h[0]
    assert all(type(n) is RMSNorm for n in (block.ln_1, block.ln_2, m.transformer.ln_f, block.attn.q_norm, block.attn.k_norm))
    assert block.attn.q_norm.weight.shape == (16,) and block.ln_1.eps == 1e-5
    assert block.mlp.c_fc.weight.shape == (2 * 128, 32) and block.mlp.c_proj.weight.shape == (32, 128)
    relu2 = GPT(tiny(mlp="relu2")).transformer.h[0].mlp
    assert relu2.c_fc.weight.shape == (128, 32) and not hasattr(relu2, "gelu")
    h = torch.randn(3, 32)
    torch.testing.assert_close(relu2(h), relu2.c_proj(F.relu(relu2.c_fc(h)) ** 2))
    sw = block.mlp
    gate, up = sw.c_fc(h)[:, :128], sw.c_fc(h)[:, 128:]
    torch.testing.assert_close(sw(h), sw.c_proj(F.silu(gate) * up))


def test_rmsnorm_formula():
    n = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        n.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8)
    torch.testing.assert_close(n(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * n.weight)


def test_swiglu_default_width():
    assert [tiny(n_embd=c, n_head=1, mlp="swiglu").n_inner_at(0) for c in (32, 64, 96, 768)] == [128, 192, 256, 2048]
    assert tiny(mlp="swiglu", layer_n_inner="40,50").n_inner_at(1) == 50  # pruned widths win
    assert tiny(mlp="relu2").n_inner_at(0) == 128 and tiny().n_inner_at(0) == 128


def test_defaults_keep_the_gpt2_layout():
    for cfg in (tiny(), tiny(bias=False, tie_weights=False), tiny(pos_emb="sinusoidal")):
        m = GPT(cfg)
        keys = set(m.state_dict())
        expected = {k for k in gpt2._shapes(cfg) if (cfg.bias or not k.endswith(".bias"))
                    and not (cfg.pos_emb != "learned" and k == "transformer.wpe.weight")}
        assert keys == expected
        assert not any(x in k for k in keys for x in ("rope", "q_norm", "k_norm"))
        assert "rope" not in dict(m.named_buffers())
        block = m.transformer.h[0]
        assert type(block.ln_1) is torch.nn.LayerNorm and type(m.transformer.ln_f) is torch.nn.LayerNorm
        assert isinstance(block.mlp.gelu, torch.nn.GELU) and block.mlp.gelu.approximate == "tanh"
        assert not block.attn.qk_norm and not hasattr(block.attn, "q_norm")
    assert tiny() == ModelConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb="learned",
                                 norm="layernorm", mlp="gelu", qk_norm=False, rope_theta=10000.0)


# --- rope ---------------------------------------------------------------------------------------


def test_rope_table_formula():
    t = rope_table(5, 8, theta=100.0)
    assert t.shape == (2, 5, 4) and t.dtype == torch.float32
    for pos in range(5):
        for i in range(4):
            angle = pos * 100.0 ** (-2 * i / 8)
            assert t[0, pos, i].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert t[1, pos, i].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_rope_is_active_relative_and_not_saved():
    m = perturbed(tiny(pos_emb="rope", rope_theta=500.0))
    sd = m.state_dict()
    assert not any("wpe" in k or "rope" in k or "pos_table" in k for k in sd)
    assert "wpe" not in m.transformer and not hasattr(m, "pos_table")
    torch.testing.assert_close(m.rope, rope_table(16, 16, 500.0))
    idx = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        ref = m(idx)
        table = m.rope.clone()
        m.rope = table.roll(-5, dims=1)  # the same tokens at positions 5..14: attention sees relative positions only
        torch.testing.assert_close(m(idx), ref, atol=1e-4, rtol=0)
        m.rope = table[:, torch.randperm(16, generator=torch.Generator().manual_seed(0))]  # positions shuffled
        assert (m(idx) - ref).abs().max() > 1e-2
        m.rope = table
    GPT(tiny(pos_emb="rope")).load_state_dict(sd)  # strict: no position table expected


# --- KV cache, for_decode, bf16, compile --------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "for_decode"])
@pytest.mark.parametrize("kw", [MODERN, dict(pos_emb="rope", mlp="relu2", qk_norm=True, bias=False)], ids=["swiglu", "relu2"])
def test_cache_decode_equals_full_forward(kw, fast):
    m = perturbed(tiny(block_size=24, **kw))
    if fast:
        m = for_decode(copy.deepcopy(m))
    idx = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        ref = m(idx)  # (2, 20, V)
        cache = m.new_cache(2, max_len=20)
        parts = [m(idx[:, :6], cache), m(idx[:, 6:7], cache), m(idx[:, 7:12], cache)]  # prefill, 1, chunk at an offset
        parts += [m(idx[:, t : t + 1], cache) for t in range(12, 20)]
        assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), ref, atol=1e-5, rtol=0)
    prompt = [3, 14, 15, 92, 65, 35]
    cached = list(generate(m, prompt, 30, temperature=0))
    assert cached == list(generate(m, prompt, 30, temperature=0, use_cache=False)) and len(set(cached)) >= 3


def test_bf16_autocast_forward_decode_and_backward():
    m = perturbed(tiny(**MODERN))
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        ref = m(idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. RMSNorm's "mismatch dtype" fallback warning
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(idx)
            cache = m.new_cache(2)
            assert cache.k[0].dtype == torch.bfloat16
            m(idx[:, :5], cache)
            step = m(idx[:, 5:6], cache)
        assert out.dtype == torch.bfloat16
        scale = ref.abs().max().item()
        torch.testing.assert_close(out.float(), ref, atol=0.05 * scale, rtol=0)
        torch.testing.assert_close(step.float()[:, 0], ref[:, 5], atol=0.05 * scale, rtol=0)
        m.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(m(idx).float().flatten(0, 1), idx.flatten())
        loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_torch_compile_matches_eager():
    m = perturbed(tiny(**MODERN)).train()
    idx = torch.randint(0, 100, (2, 16))
    out = torch.compile(m)(idx)  # one graph: training mode, forward and backward
    torch.testing.assert_close(out, m(idx), atol=1e-5, rtol=0)
    out.logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


# --- Muon ---------------------------------------------------------------------------------------


def test_muon_groups_by_identity():
    m = GPT(tiny(**MODERN, tie_weights=False))
    opt = build_optimizer(m, TrainConfig(optimizer="muon", weight_decay=0.1, muon_lr_scale=2.0))
    assert isinstance(opt, MuonAdamW)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    matrices = [mod.weight for b in m.transformer.h for mod in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    assert in_muon == {id(p) for p in matrices}
    rest = [m.transformer.wte.weight, m.lm_head.weight, m.transformer.ln_f.weight]
    rest += [p for b in m.transformer.h for mod in (b.ln_1, b.ln_2, b.attn.q_norm, b.attn.k_norm) for p in mod.parameters()]
    rest += [mod.bias for b in m.transformer.h for mod in (b.attn.c_attn, b.mlp.c_proj)]
    assert {id(p) for p in rest} <= in_adamw and not in_muon & in_adamw
    assert in_muon | in_adamw == {id(p) for p in m.parameters()}
    assert all(a is b for a, b in zip(opt.param_groups, muon.param_groups + adamw.param_groups, strict=True))
    assert all(g["adjust_lr_fn"] == "match_rms_adamw" and g["weight_decay"] == 0.1 for g in muon.param_groups)
    decay = {id(p): g["weight_decay"] for g in adamw.param_groups for p in g["params"]}
    assert decay[id(m.transformer.wte.weight)] == 0.1 and decay[id(m.transformer.ln_f.weight)] == 0.0
    set_lr(opt, 0.01)  # reaches both optimizers' groups, Muon's times muon_lr_scale
    assert [g["lr"] for g in muon.param_groups] == [0.02] and {g["lr"] for g in adamw.param_groups} == {0.01}


def test_muon_refuses_a_model_without_blocks():
    with pytest.raises(UserError, match="train.optimizer: muon"):
        build_optimizer(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10)), TrainConfig(optimizer="muon"))


def test_muon_reduces_the_loss():
    torch.manual_seed(0)
    m = GPT(tiny(**MODERN))
    cfg = TrainConfig(optimizer="muon", lr=1e-2, max_steps=15, warmup_steps=0, weight_decay=0.0)
    opt = build_optimizer(m, cfg)
    seq = torch.arange(10).repeat(2)[None, :16]
    x, y = seq[:, :-1], seq[:, 1:]
    losses = []
    for step in range(cfg.max_steps):
        set_lr(opt, lr_at(step, cfg))
        loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in m.parameters())


class Tokens:
    """A fit() batch source: next token = (token + 3) mod V, the global batch a function of (seed, step)."""

    tokens_per_sample = 12

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    def _batch(self, step: int, size: int = 4):
        start = torch.randint(0, 100, (size, 1), generator=torch.Generator().manual_seed(step))
        seq = (start + 3 * torch.arange(13)) % 100
        return seq[:, :-1], seq[:, 1:]

    def train_batch(self, step, index, size):
        if step == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        x, y = self._batch(step, 4)
        return x[index * size : (index + 1) * size], y[index * size : (index + 1) * size]

    def eval_batches(self):
        return [self._batch(10_000)]


def test_muon_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    c = TrainConfig(optimizer="muon", max_steps=10, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=5,
                    save_interval=4, log_interval=2, muon_lr_scale=0.5)

    def new_model():
        torch.manual_seed(0)
        return GPT(tiny(**MODERN, dropout=0.1, tie_weights=False))  # dropout: the saved RNG state matters

    ref = new_model()
    s = fit(ref, Tokens(), c, tmp_path / "ref", loss_fn=lm_loss, progress=False)
    assert s["train_loss"] < math.log(100)
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), Tokens(fail_at=6), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    state = ckpt.load_train_state(tmp_path / "run")
    assert state["meta"]["step"] == 4
    assert any(k.endswith("momentum_buffer") for k in state["optimizer"]["state"][0])  # Muon's buffers, saved
    m = new_model()
    fit(m, Tokens(), c, tmp_path / "run", loss_fn=lm_loss, progress=False)
    for (k, a), b in zip(ref.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k


# --- the CLI: pretrain, generate, export; bad input ---------------------------------------------


MODERN_ARGS = ["--model.pos_emb", "rope", "--model.norm", "rmsnorm", "--model.mlp", "swiglu", "--model.qk_norm", "true"]


@pytest.fixture(scope="module")
def modern_run(tmp_path_factory):
    """A tiny pretraining run with Muon and every option (a few seconds)."""
    tmp = tmp_path_factory.mktemp("arch")
    corpus = make_corpus(tmp / "corpus.txt")
    run_dir = tmp / "run"
    assert main(["pretrain", "--config", TINY, "--data.path", str(corpus), "--train.max_steps=30", "--train.eval_interval=15",
                 "--train.optimizer", "muon", *MODERN_ARGS, "--out", str(run_dir)]) == 0
    return corpus, run_dir


def test_pretrain_with_muon_and_options_then_generate(modern_run, capsys):
    _, run_dir = modern_run
    cfg, _, _ = loader.load_run(run_dir)
    assert (cfg.train.optimizer, cfg.model.pos_emb, cfg.model.norm, cfg.model.mlp, cfg.model.qk_norm) == \
        ("muon", "rope", "rmsnorm", "swiglu", True)
    train = [r for r in ckpt.read_metrics(run_dir) if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 1.0  # it learns
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "the king", "--max-new-tokens", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the king") and len(out) > len("the king") + 5


def test_onnx_export_of_every_option(tmp_path):
    pytest.importorskip("onnxruntime")
    from lmforge.tokenizer import train_tokenizer
    from lmforge.tools import export as ex

    tok = train_tokenizer(["the king and queen walk to the castle at night", "春天 来了 我们 一起 去 北京"] * 10, vocab_size=300)
    mcfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16, **MODERN, tie_weights=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(save_config(RunConfig(model=mcfg)), encoding="utf-8")
    tok.save(run / "tokenizer.json")
    ckpt.save_weights(run / "model.safetensors", perturbed(mcfg))
    info = ex.export_run(run, "onnx", tmp_path / "onnx")  # the exporter checks parity in onnxruntime itself
    assert info["max_abs_diff"] < 1e-4 and (tmp_path / "onnx" / "model.onnx").exists()


def test_bad_options_are_one_line_errors(modern_run, tmp_path, capsys):
    corpus, run_dir = modern_run
    base = ["pretrain", "--config", TINY, "--data.path", str(corpus), "--out", str(tmp_path / "x")]
    cases = [
        (base + ["--model.norm", "foo"], "model.norm: expected one of layernorm, rmsnorm, got 'foo'"),
        (base + ["--model.mlp", "foo"], "model.mlp: expected one of gelu, swiglu, relu2, got 'foo'"),
        (base + ["--model.pos_emb", "foo"], "model.pos_emb: expected one of learned, sinusoidal, rope, got 'foo'"),
        (base + ["--model.name", "bert", "--model.mlp", "swiglu"], "model.mlp: swiglu is only for model.name=gpt"),
        (base + ["--model.name", "lstm", "--model.pos_emb", "rope"], "model.pos_emb: rope is only for model.name=gpt"),
        (base + ["--model.norm_first", "true"], "model.norm_first: only for model.name=bert, electra or seq2seq"),
        (base + ["--model.name", "bert", "--model.qk_norm", "true"], "model.qk_norm: true is only for model.name=gpt"),
        (base + ["--model.pos_emb", "rope", "--model.n_embd", "66", "--model.n_head", "6"], "rope needs an even head size"),
        (base + ["--model.rope_theta", "0"], "model.rope_theta"),
        (base + ["--train.muon_momentum", "1.5"], "train.muon_momentum"),
        (base + ["--train.optimizer", "lion"], "train.optimizer: expected one of adamw, sgd, rmsprop, muon"),
        (["export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")], "model.pos_emb=rope"),
    ]
    assert_one_line_errors(main, cases, tmp_path, capsys)
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "model.norm=rmsnorm, model.mlp=swiglu, model.qk_norm=true" in err and "--format onnx" in err


def test_hf_maps_refuse_what_gpt2_cannot_hold():
    for kw in OPTIONS.values():
        cfg = tiny(**kw)
        with pytest.raises(UserError, match="--format onnx"):
            gpt2.gpt_to_hf_state_dict(GPT(cfg).state_dict(), cfg)
        with pytest.raises(UserError, match="--format onnx"):
            gpt2.hf_gpt2_config(cfg)
    with pytest.raises(UserError, match="model.mlp=swiglu"):
        gpt2.gpt_from_hf_state_dict({}, tiny(mlp="swiglu"))
