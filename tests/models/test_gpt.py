import math

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_config

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.hf import gpt_from_hf_state_dict, gpt_to_hf_state_dict, hf_gpt2_config, model_config_from_hf_gpt2
from lmforge.models import GPT, build
from lmforge.models.layers import sinusoidal_positions

transformers = pytest.importorskip("transformers")


tiny = tiny_config


def hf_model(cfg: ModelConfig, attn: str = "eager"):
    m = transformers.GPT2LMHeadModel(hf_gpt2_config(cfg, attn_implementation=attn))
    return m.eval()


def test_build_and_shapes():
    torch.manual_seed(0)
    m = build(tiny())
    assert isinstance(m, GPT)
    logits = m(torch.randint(0, 100, (3, 7)))
    assert logits.shape == (3, 7, 100) and logits.dtype == torch.float32
    # parameter names mirror GPT-2's
    names = set(m.state_dict())
    for k in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.attn.c_attn.weight",
              "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"):  # fmt: skip
        assert k in names
    assert m.num_params() == sum(p.numel() for p in m.parameters())


def test_build_needs_vocab_size():
    with pytest.raises(UserError, match="vocab_size"):
        build(tiny(vocab_size=0))


def test_init_scales():
    torch.manual_seed(0)
    m = GPT(tiny(n_layer=4, n_embd=64))
    assert m.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert torch.all(m.transformer.h[0].attn.c_attn.bias == 0)


def test_tied_weights_share_storage():
    m = GPT(tiny())
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    assert m.num_params() == sum(p.numel() for n, p in m.named_parameters())  # counted once
    untied = GPT(tiny(tie_weights=False))
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    assert untied.num_params() == m.num_params() + 100 * 32


@pytest.mark.parametrize("T,C", [(7, 8), (5, 7)])
def test_sinusoidal_formula(T, C):
    pe = sinusoidal_positions(T, C)
    assert pe.shape == (T, C)
    for pos in range(T):
        for j in range(C):
            i2 = j - j % 2  # 2i
            angle = pos / 10000 ** (i2 / C)
            want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert pe[pos, j].item() == pytest.approx(want, abs=1e-6)


def test_sinusoidal_model_buffer():
    m = GPT(tiny(pos_emb="sinusoidal"))
    assert "transformer.wpe.weight" not in m.state_dict() and "pos_table" not in m.state_dict()
    torch.testing.assert_close(m.pos_table, sinusoidal_positions(16, 32))
    assert m(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 100)


def test_too_long_raises():
    m = GPT(tiny())
    with pytest.raises(ValueError, match="block_size 16"):
        m(torch.zeros(1, 17, dtype=torch.long))
    cache = m.new_cache(1)
    with torch.no_grad():
        m(torch.zeros(1, 10, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="block_size"):
            m(torch.zeros(1, 7, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="max_len"):
        m.new_cache(1, max_len=17)


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    m = GPT(tiny()).eval()
    idx = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        ref = m(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(idx)
            cache = m.new_cache(2)
            assert cache.k[0].dtype == torch.bfloat16
            m(idx[:, :5], cache)
            step = m(idx[:, 5:6], cache)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0)
    torch.testing.assert_close(step.float()[:, 0], ref[:, 5], atol=0.1, rtol=0)


def test_softmax_attention_gradients_match_sdpa():
    """The attention bf16 training uses on CPU: same values and gradients as SDPA (checked in fp32)."""
    from lmforge.models.layers import softmax_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g).requires_grad_() for _ in range(3))
    out = softmax_attention(q, k, v, torch.ones(7, 7, dtype=torch.bool).tril())
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    go = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_bf16_autocast_training_step_close_to_fp32():
    torch.manual_seed(0)
    m = GPT(tiny())
    idx, y = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    ref = F.cross_entropy(m(idx).flatten(0, 1), y.flatten())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(idx).float().flatten(0, 1), y.flatten())
    loss.backward()
    assert abs(loss.item() - ref.item()) < 0.02
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_loss_decreases():
    torch.manual_seed(0)
    m = GPT(tiny())
    seq = torch.arange(10).repeat(2)[None, :16]  # tiny repeated sequence
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert m.lm_head.weight is m.transformer.wte.weight  # still tied after the optimizer steps


def test_dropout_train_vs_eval():
    torch.manual_seed(0)
    m = GPT(tiny(dropout=0.5))
    idx = torch.randint(0, 100, (1, 8))
    assert not torch.equal(m(idx), m(idx))
    m.eval()
    assert torch.equal(m(idx), m(idx))


# --- Hugging Face parity ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,attn",
    [
        (dict(), "eager"),
        (dict(tie_weights=False), "sdpa"),
        (dict(bias=False, norm_eps=1e-6), "eager"),
        (dict(pos_emb="sinusoidal"), "sdpa"),
    ],
)
def test_hf_parity_ours_to_hf(kw, attn):
    torch.manual_seed(0)
    cfg = tiny(**kw)
    ours = GPT(cfg).eval()
    perturb(ours)
    hf = hf_model(cfg, attn)
    hf.load_state_dict(gpt_to_hf_state_dict(ours.state_dict(), cfg))  # strict
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_hf_parity_hf_to_ours(tie):
    torch.manual_seed(1)
    hf = hf_model(tiny(tie_weights=tie, norm_eps=1e-5))
    perturb(hf)
    cfg = model_config_from_hf_gpt2(hf.config.to_dict())
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.tie_weights) == (100, 16, 2, 2, 32, tie)
    ours = GPT(cfg).eval()
    ours.load_state_dict(gpt_from_hf_state_dict(hf.state_dict(), cfg))  # strict
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == tie
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_hf_bare_gpt2model_keys_and_absent_head():
    torch.manual_seed(2)
    cfg = tiny()
    hf = hf_model(cfg)
    perturb(hf)
    bare = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    ours = GPT(cfg).eval()
    ours.load_state_dict(gpt_from_hf_state_dict(bare, cfg))
    idx = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="lm_head"):
        gpt_from_hf_state_dict(bare, tiny(tie_weights=False))


def test_hf_shape_mismatch_names_key_and_shapes():
    cfg = tiny()
    sd = gpt_to_hf_state_dict(GPT(cfg).state_dict(), cfg)
    sd["transformer.h.1.attn.c_attn.weight"] = sd["transformer.h.1.attn.c_attn.weight"].t()
    with pytest.raises(UserError, match=r"'transformer\.h\.1\.attn\.c_attn\.weight'.*\(96, 32\).*\(32, 96\)"):
        gpt_from_hf_state_dict(sd, cfg)
    with pytest.raises(UserError, match=r"transformer\.wte\.weight.*\(100, 32\).*\(200, 32\)"):
        gpt_to_hf_state_dict(GPT(cfg).state_dict(), tiny(vocab_size=200))
    with pytest.raises(UserError, match="missing"):
        gpt_from_hf_state_dict({k: v for k, v in sd.items() if ".h.1." not in k}, cfg)
    with pytest.raises(UserError, match="unexpected"):
        gpt_from_hf_state_dict({**sd, "transformer.h.2.ln_1.weight": torch.ones(32)}, cfg)


def test_hf_config_roundtrip():
    cfg = tiny(tie_weights=False, norm_eps=1e-6, dropout=0.1)
    hc = hf_gpt2_config(cfg)
    assert (hc.n_positions, hc.layer_norm_epsilon, hc.activation_function, hc.resid_pdrop) == (16, 1e-6, "gelu_new", 0.1)
    assert model_config_from_hf_gpt2(hc.to_dict()) == cfg
    with pytest.raises(UserError, match="activation_function"):
        model_config_from_hf_gpt2({**hc.to_dict(), "activation_function": "relu"})
