"""The encoder-decoder models (Seq2SeqTransformer, LSTMSeq2Seq) behind the seq2seq interface:
teacher forcing == encode + decode, incremental decoding == recompute, padding and beam reordering do
not change a row's logits, causality, separate vocabularies and tying, and a little learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_config

from lmforge.errors import UserError
from lmforge.models import MODELS, LSTMSeq2Seq, Seq2SeqTransformer, build

V, BLOCK = 60, 24
CASES = {f"seq2seq-{pe}-{'pre' if nf else 'post'}": dict(name="seq2seq", pos_emb=pe, norm_first=nf)
         for pe in ("learned", "sinusoidal", "rope") for nf in (False, True)}
CASES.update({f"lstm-{a}": dict(name="lstm_seq2seq", attention=a) for a in ("luong", "bahdanau")})
close = dict(atol=1e-5, rtol=0)


def make(case: str, seed: int = 0, **kw):
    """A perturbed tiny model of ``case`` in eval mode: 2 encoder layers, 3 decoder layers."""
    torch.manual_seed(seed)
    opts = {**CASES[case], **kw}
    m = build(tiny_config(opts.pop("name"), vocab_size=V, block_size=BLOCK, decoder_layers=3, **opts))
    perturb(m, seed)
    return m.eval()


def batch(B: int = 3, S: int = 7, T: int = 9, seed: int = 1, src_vocab: int = V):
    """Right-padded sources of lengths S, S - 3, 2 (pad id 0), their mask, and decoder inputs (B, T)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, S - 3, 2, S - 1][:B])
    mask = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    src = torch.randint(1, src_vocab, (B, S), generator=g).masked_fill(~mask, 0)
    return src, mask, torch.randint(0, V, (B, T), generator=g)


def run_steps(m, state, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of ``tokens`` (B, T) fed as one prefill of ``prefill`` tokens, then one token at a time."""
    outs = [m.step(tokens[:, :prefill], state)] if prefill else []
    outs += [m.step(tokens[:, t : t + 1], state) for t in range(prefill, tokens.shape[1])]
    return torch.cat(outs, dim=1)


def test_registered_and_shapes():
    assert MODELS["seq2seq"] is Seq2SeqTransformer and MODELS["lstm_seq2seq"] is LSTMSeq2Seq
    src, mask, tgt = batch()
    for case in ("seq2seq-learned-post", "lstm-luong"):
        m = make(case)
        assert m(src, mask, tgt).shape == (3, 9, V)
        assert m.num_params() == sum(p.numel() for p in m.parameters())
    m = make("seq2seq-learned-post")
    assert len(m.encoder.h) == 2 and len(m.decoder.h) == 3 and m.encode(src, mask).shape == (3, 7, 32)
    names = set(m.state_dict())
    for k in ("wte.weight", "encoder.wpe.weight", "decoder.wpe.weight", "encoder.h.1.attn.c_attn.weight",
              "decoder.h.2.attn.c_attn.weight", "decoder.h.0.cross.q_attn.weight", "decoder.h.0.cross.c_attn.weight",
              "decoder.h.0.cross.c_proj.bias", "decoder.h.0.ln_3.weight", "lm_head.weight"):  # fmt: skip
        assert k in names, k
    assert "encoder.ln_f.weight" not in names and "encoder.ln_f.weight" in make("seq2seq-learned-pre").state_dict()


def test_init_scales():
    torch.manual_seed(0)
    m = Seq2SeqTransformer(tiny_config("seq2seq", n_layer=4, decoder_layers=4, n_embd=64))
    assert m.decoder.h[0].cross.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.encoder.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert m.decoder.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(12), rel=0.1)
    assert torch.all(m.decoder.h[0].cross.q_attn.bias == 0)


@pytest.mark.parametrize("case", CASES)
def test_forward_is_decode_of_encode(case):
    m = make(case)
    src, mask, tgt = batch()
    with torch.no_grad():
        torch.testing.assert_close(m(src, mask, tgt), m.decode(tgt, m.encode(src, mask), mask), **close)


@pytest.mark.parametrize("case", CASES)
def test_incremental_decoding_matches_recompute(case):
    m = make(case)
    src, mask, tgt = batch(T=10)
    with torch.no_grad():
        memory = m.encode(src, mask)
        full = m.decode(tgt, memory, mask)  # (B, T, V)
        state = m.new_state(memory, mask, max_len=10)
        torch.testing.assert_close(run_steps(m, state, tgt, prefill=3), full, **close)
        # and decode() of every prefix agrees with its last position (positions continue from the cache)
        for t in (1, 4, 10):
            torch.testing.assert_close(m.decode(tgt[:, :t], memory, mask)[:, -1], full[:, t - 1], **close)
        with pytest.raises(ValueError, match="max_len"):
            m.step(tgt[:, :1], state)  # the state holds 10 tokens


@pytest.mark.parametrize("case", CASES)
def test_padded_sources_do_not_leak(case):
    m = make(case)
    src, mask, tgt = batch()
    with torch.no_grad():
        together = m(src, mask, tgt)
        for i, n in enumerate(mask.sum(1).tolist()):
            alone = m(src[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool), tgt[i : i + 1])
            torch.testing.assert_close(together[i : i + 1], alone, **close)
        # what sits in the padding does not matter either
        noisy = torch.where(mask, src, torch.randint_like(src, 1, V))
        torch.testing.assert_close(m(noisy, mask, tgt), together, **close)


@pytest.mark.parametrize("case", CASES)
def test_reorder_continues_like_fresh_decoding(case):
    m = make(case)
    src, mask, tgt = batch(T=4)
    index = torch.tensor([2, 0, 0, 1])  # B' = 4 > B = 3, row 0 repeated (beam expansion)
    new = torch.randint(0, V, (4, 3), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        state = m.new_state(m.encode(src, mask), mask, max_len=8)
        m.step(tgt, state)  # prefill 4 tokens
        picked = m.reorder(state, index)
        got = run_steps(m, picked, new, prefill=0)  # (B', 3, V)
        ref = m(src[index], mask[index], torch.cat([tgt[index], new], dim=1))[:, 4:]
        torch.testing.assert_close(got, ref, **close)
        # the original state is untouched by reorder and still continues its own rows
        more = new[:3, :1]
        torch.testing.assert_close(m.step(more, state), m(src, mask, torch.cat([tgt, more], 1))[:, 4:], **close)


@pytest.mark.parametrize("case", CASES)
def test_causal(case):
    m = make(case)
    src, mask, tgt = batch()
    changed = tgt.clone()
    changed[:, 5] = (tgt[:, 5] + 1) % V
    with torch.no_grad():
        a, b = m(src, mask, tgt), m(src, mask, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=0, rtol=0)
    assert (a[:, 5] - b[:, 5]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["seq2seq", "lstm_seq2seq"])
def test_separate_vocabularies_and_tying(name):
    src_v = 37
    torch.manual_seed(0)
    m = build(tiny_config(name, vocab_size=V, block_size=BLOCK, source_vocab_size=src_v)).eval()
    assert m.src_wte.weight.shape == (src_v, 32) and m.wte.weight.shape == (V, 32)
    assert m.lm_head.weight is m.wte.weight and m.lm_head.weight.data_ptr() == m.wte.weight.data_ptr()
    src, mask, tgt = batch(src_vocab=src_v)
    src[0, 0] = src_v - 1  # the top source id
    tgt[0, 0] = V - 1  # target ids beyond the source range
    assert m(src, mask, tgt).shape == (3, 9, V)
    with pytest.raises(IndexError):
        m(torch.full_like(src, src_v), mask, tgt)  # a source id outside the source vocabulary
    torch.manual_seed(0)
    untied = build(tiny_config(name, vocab_size=V, block_size=BLOCK, source_vocab_size=src_v, tie_weights=False))
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_params() == m.num_params() + V * 32
    joint = build(tiny_config(name, vocab_size=V, block_size=BLOCK))
    assert not hasattr(joint, "src_wte") and joint.num_params() == m.num_params() - src_v * 32
    assert joint(torch.full_like(src, V - 1), mask, tgt).shape == (3, 9, V)  # the joint vocabulary on both sides


@pytest.mark.parametrize("case", ["seq2seq-learned-post", "seq2seq-rope-pre", "lstm-luong", "lstm-bahdanau"])
def test_learns_a_copy_task(case):
    torch.manual_seed(0)
    opts = dict(CASES[case])
    m = build(tiny_config(opts.pop("name"), vocab_size=V, block_size=BLOCK, **opts))
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, V, (16, 8), generator=g)
    mask = torch.ones_like(src, dtype=torch.bool)
    tgt = torch.cat([torch.ones(16, 1, dtype=torch.long), src[:, :-1]], dim=1)  # bos = 1, then the source shifted
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(m(src, mask, tgt).flatten(0, 1), src.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses  # unigram level: ln(57) ~ 4.04


def test_bad_configs_and_inputs():
    with pytest.raises(UserError, match="model.layer_n_head"):
        build(tiny_config("seq2seq", layer_n_head="2,1"))
    with pytest.raises(UserError, match="model.n_embd"):
        build(tiny_config("lstm_seq2seq", n_embd=33, n_head=3))
    with pytest.raises(UserError, match="model.pos_emb"):
        tiny_config("lstm_seq2seq", pos_emb="rope")
    with pytest.raises(UserError, match="model.norm_first"):
        tiny_config("lstm_seq2seq", norm_first=True)
    m = make("seq2seq-learned-post")
    src, mask, tgt = batch()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, BLOCK + 1, dtype=torch.long), torch.ones(1, BLOCK + 1, dtype=torch.bool), tgt[:1])
    with pytest.raises(ValueError, match="src_mask"):
        m.encode(src, mask[:, :3])
    with pytest.raises(ValueError, match="max_len"):
        m.new_state(m.encode(src, mask), mask, max_len=BLOCK + 1)
