import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from lmforge.config import ModelConfig
from lmforge.data.batches import mask_tokens
from lmforge.models import BERT, BertForMaskedLM, build

V = 100


tiny = functools.partial(tiny_config, "bert", vocab_size=V)


def test_build_and_shapes():
    torch.manual_seed(0)
    m = build(tiny())
    assert isinstance(m, BertForMaskedLM) and isinstance(m.bert, BERT)
    idx = torch.randint(0, V, (3, 7))
    logits = m(idx)
    assert logits.shape == (3, 7, V) and logits.dtype == torch.float32
    assert m.bert(idx).shape == (3, 7, 32)
    assert m.mlm_head.decoder.weight is m.bert.wte.weight  # tied, counted once
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    names = set(m.state_dict())
    for k in ("bert.wte.weight", "bert.wpe.weight", "bert.wtt.weight", "bert.ln_e.bias", "bert.h.1.attn.c_attn.weight",
              "bert.h.0.ln_1.weight", "bert.h.0.mlp.c_fc.bias", "bert.h.1.ln_2.weight", "mlm_head.dense.weight",
              "mlm_head.ln.weight", "mlm_head.decoder.bias"):  # fmt: skip
        assert k in names
    assert m.bert.h[0].attn.c_attn.weight.shape == (96, 32)
    assert build(tiny(tie_weights=False)).mlm_head.decoder.weight is not build(tiny()).bert.wte.weight


def test_init():
    torch.manual_seed(0)
    m = BertForMaskedLM(tiny(n_embd=64))
    assert m.bert.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(m.bert.h[0].attn.c_attn.bias == 0) and torch.all(m.mlm_head.decoder.bias == 0)
    assert torch.all(m.bert.ln_e.weight == 1) and torch.all(m.bert.h[1].ln_2.bias == 0)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    m = BertForMaskedLM(tiny()).eval()
    idx = torch.randint(5, V, (2, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        ref = m.bert(idx, token_type_ids=types)
        assert torch.equal(ref, m.bert(idx, torch.ones(2, 6, dtype=torch.long), types))  # all-ones mask = no mask
        # append 5 arbitrary (not even [PAD]) tokens per row, masked out
        padded = torch.cat([idx, torch.randint(0, V, (2, 5))], dim=1)
        mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 5)], dim=1).long()
        types_p = torch.cat([types, torch.zeros(2, 5, dtype=torch.long)], dim=1)
        h = m.bert(padded, mask, types_p)
        torch.testing.assert_close(h[:, :6], ref, atol=1e-5, rtol=0)
        logits = m(padded, mask, types_p)
        torch.testing.assert_close(logits[:, :6], m(idx, None, types), atol=1e-5, rtol=0)
        # without the mask the padding does leak in
        assert not torch.allclose(m.bert(padded, None, types_p)[:, :6], ref, atol=1e-3)
        # an all-padding row stays finite
        assert torch.isfinite(m.bert(padded, torch.zeros_like(mask))).all()


def test_token_types_and_positions_matter():
    torch.manual_seed(0)
    m = BertForMaskedLM(tiny()).eval()
    idx = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        h0 = m.bert(idx)
        assert torch.equal(h0, m.bert(idx, token_type_ids=torch.zeros_like(idx)))
        assert not torch.allclose(h0, m.bert(idx, token_type_ids=torch.ones_like(idx)))
        # bidirectional: changing the last token changes the first token's state
        idx2 = idx.clone()
        idx2[0, -1] = (idx[0, -1] + 1) % V
        assert not torch.allclose(h0[:, 0], m.bert(idx2)[:, 0])


def test_sinusoidal_positions_and_bias_free():
    torch.manual_seed(0)
    m = BertForMaskedLM(tiny(pos_emb="sinusoidal", bias=False))
    assert "bert.wpe.weight" not in m.state_dict() and "bert.h.0.attn.c_attn.bias" not in m.state_dict()
    assert m(torch.randint(0, V, (2, 16))).shape == (2, 16, V)


def test_bad_inputs():
    m = BertForMaskedLM(tiny())
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="vocab_size"):
        BertForMaskedLM(tiny(vocab_size=0))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = BertForMaskedLM(tiny(dropout=0.2))
    idx = torch.randint(0, V, (2, 8))
    assert not torch.equal(m(idx), m(idx))
    m.eval()
    assert torch.equal(m(idx), m(idx))


# --- masking -------------------------------------------------------------------------------------

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)


def batch(n_rows: int = 1000, T: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n_rows, T), generator=g)
    ids[:, 0], ids[:, -1], ids[::3, -40:] = CLS, SEP, PAD  # framed rows, a third padded
    return ids


def test_mask_tokens_proportions():
    ids = batch()
    inputs, labels = mask_tokens(ids, MASK, 1000, SPECIALS, torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(SPECIALS))
    picked = labels != -100
    assert not (picked & special).any()  # specials never picked
    assert torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(inputs[~picked], ids[~picked])
    n = picked.sum().item()
    assert picked.float().sum().item() / (~special).sum().item() == pytest.approx(0.15, abs=0.005)  # n ~ 28k
    as_mask = (inputs[picked] == MASK).float().mean().item()
    kept = (inputs[picked] == ids[picked]).float().mean().item()  # 10% kept + random hits of itself (0.1 / 1000)
    swapped = 1.0 - as_mask - kept
    assert as_mask == pytest.approx(0.8, abs=0.01) and kept == pytest.approx(0.1, abs=0.01)
    assert swapped == pytest.approx(0.1, abs=0.01)
    rand = inputs[picked][(inputs[picked] != MASK) & (inputs[picked] != ids[picked])]
    assert rand.min() >= 0 and rand.max() < 1000 and rand.float().std() > 200  # spread over the vocabulary
    assert n > 20_000


def test_mask_tokens_deterministic_and_edge_probs():
    ids = batch(50, 64)
    a = mask_tokens(ids, MASK, 1000, SPECIALS, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, MASK, 1000, SPECIALS, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, MASK, 1000, SPECIALS, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    inputs, labels = mask_tokens(ids, MASK, 1000, SPECIALS, torch.Generator().manual_seed(0), prob=0.0)
    assert torch.equal(inputs, ids) and (labels == -100).all()
    _, labels = mask_tokens(ids, MASK, 1000, SPECIALS, torch.Generator().manual_seed(0), prob=1.0)
    assert torch.equal(labels != -100, ~torch.isin(ids, torch.tensor(SPECIALS)))
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, MASK, 1000, SPECIALS, prob=1.5)


def test_mlm_loss_decreases():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=40, n_layer=1)
    m = build(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (8, 12), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    mask = torch.ones_like(ids)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        inputs, labels = mask_tokens(ids, MASK, 40, SPECIALS, g, prob=0.3)
        loss = F.cross_entropy(m(inputs, mask).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_select_scores_only_the_picked_positions():
    torch.manual_seed(0)
    m = build(tiny()).eval()
    ids = torch.randint(5, V, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    picked = torch.rand(3, 10) < 0.3
    picked[0, 0] = True  # at least one
    full = m(ids, mask)
    sel = m(ids, mask, select=picked)
    assert sel.shape == (int(picked.sum()), V)
    torch.testing.assert_close(sel, full[picked], atol=1e-6, rtol=0)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_pre_ln_and_rotary_encoder(pos_emb):
    """model.norm_first: pre-LN layers and a final ln_f; pos_emb=rope: no position table, positions still matter."""
    torch.manual_seed(0)
    m = BertForMaskedLM(tiny(norm_first=True, pos_emb=pos_emb)).eval()
    with torch.no_grad():  # attention far from uniform, so positions show
        for p in m.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    names = set(m.state_dict())
    assert "bert.ln_f.weight" in names and ("bert.wpe.weight" in names) == (pos_emb == "learned")
    idx = torch.randint(5, V, (2, 8))
    with torch.no_grad():
        h = m.bert(idx)
        swapped = idx.clone()
        swapped[:, [2, 5]] = idx[:, [5, 2]]
        assert not torch.allclose(m.bert(swapped)[:, 0], h[:, 0], atol=1e-4)  # order is seen
        padded = torch.cat([idx, torch.randint(0, V, (2, 3))], dim=1)  # padding masked out changes nothing
        mask = torch.cat([torch.ones(2, 8), torch.zeros(2, 3)], dim=1).long()
        torch.testing.assert_close(m.bert(padded, mask)[:, :8], h, atol=1e-5, rtol=0)
    post = BertForMaskedLM(tiny(pos_emb=pos_emb))
    post.load_state_dict({k: v for k, v in m.state_dict().items() if "ln_f" not in k})
    with torch.no_grad():
        assert not torch.allclose(post.eval().bert(idx), h, atol=1e-3)  # the same weights, another computation
    with pytest.raises(Exception, match="norm_first"):
        ModelConfig(name="gpt", norm_first=True)
