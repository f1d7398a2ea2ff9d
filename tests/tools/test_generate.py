import pytest
import torch
from helpers import tiny_config

from lmforge.models import GPT
from lmforge.tools.generate import generate, sample_next, stream_decode


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    m = GPT(tiny_config(**{"block_size": 48, **kw})).eval()
    with torch.no_grad():  # sharper, more varied logits than the 0.02 init: greedy paths do not collapse
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


# --- KV cache == full recomputation --------------------------------------------------------------


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal"])
@pytest.mark.parametrize("prompt", [[7], [3, 14, 15, 92, 65, 35]])
def test_cache_greedy_equals_recompute(pos_emb, prompt):
    m = tiny_model(pos_emb=pos_emb)
    cached = list(generate(m, prompt, 35, temperature=0))
    full = list(generate(m, prompt, 35, temperature=0, use_cache=False))
    assert len(cached) == 35 and cached == full
    assert len(set(cached)) >= 3  # a real sequence, not one repeated token


@pytest.mark.parametrize("pos_emb", ["learned", "sinusoidal"])
def test_cache_logits_equal_no_cache(pos_emb):
    m = tiny_model(pos_emb=pos_emb)
    idx = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        ref = m(idx)  # (2, 20, V)
        cache = m.new_cache(2, max_len=20)
        parts = [m(idx[:, :6], cache), m(idx[:, 6:7], cache), m(idx[:, 7:12], cache)]  # prefill, 1, chunk
        parts += [m(idx[:, t : t + 1], cache) for t in range(12, 20)]
        assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), ref, atol=1e-5, rtol=0)


def test_cache_reset_reuses_buffers():
    m = tiny_model()
    idx = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        cache = m.new_cache(1)
        m(torch.randint(0, 100, (1, 30)), cache)
        cache.reset()
        k0 = cache.k[0].data_ptr()
        out = m(idx, cache)
        assert cache.k[0].data_ptr() == k0 and cache.pos == 10
        torch.testing.assert_close(out, m(idx), atol=1e-5, rtol=0)


def test_context_cropping_past_block_size():
    m = tiny_model(block_size=16)
    prompt = list(range(10))
    cached = list(generate(m, prompt, 30, temperature=0))
    full = list(generate(m, prompt, 30, temperature=0, use_cache=False))
    assert len(cached) == 30 and cached == full
    long_prompt = list(range(40))  # longer than block_size already
    assert list(generate(m, long_prompt, 5, temperature=0)) == list(generate(m, long_prompt, 5, temperature=0, use_cache=False))


# --- sampling ------------------------------------------------------------------------------------


def test_top_k_1_equals_greedy():
    m = tiny_model()
    greedy = list(generate(m, [1, 2, 3], 20, temperature=0))
    assert list(generate(m, [1, 2, 3], 20, temperature=1.3, top_k=1, seed=5)) == greedy


def test_same_seed_same_sample():
    m = tiny_model()
    a = list(generate(m, [5], 30, temperature=1.0, top_p=0.9, seed=123))
    b = list(generate(m, [5], 30, temperature=1.0, top_p=0.9, seed=123))
    c = list(generate(m, [5], 30, temperature=1.0, top_p=0.9, seed=124))
    assert a == b and a != c
    assert list(generate(m, [5], 30, seed=7)) == list(generate(m, [5], 30, seed=7, use_cache=False))


def test_eos_stops_and_is_not_yielded():
    m = tiny_model()
    greedy = list(generate(m, [4, 8], 30, temperature=0))
    eos = greedy[5]
    first = greedy.index(eos)
    assert list(generate(m, [4, 8], 30, temperature=0, eos_id=eos)) == greedy[:first]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = probs.log()
    cases = {0.4: {1}, 0.7: {1, 3}, 0.9: {1, 3, 2}, 0.99: {0, 1, 2, 3}}
    g = torch.Generator().manual_seed(0)
    for p, want in cases.items():
        got = {sample_next(logits, 1.0, top_p=p, generator=g).item() for _ in range(300)}
        assert got == want, p
    # top-k then top-p: k=2 renormalises to 0.625 / 0.375, so p=0.6 keeps only token 1
    assert {sample_next(logits, 1.0, top_k=2, top_p=0.6, generator=g).item() for _ in range(100)} == {1}
    assert {sample_next(logits, 1.0, top_k=3, generator=g).item() for _ in range(300)} == {1, 2, 3}


def test_sample_next_greedy_and_batch():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert sample_next(logits, 0.0).tolist() == [1, 0]
    out = sample_next(logits, 0.7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2,) and out.dtype == torch.long


def test_bad_arguments_raise_at_call_time():
    m = tiny_model()
    with pytest.raises(ValueError):
        generate(m, [], 5)
    with pytest.raises(ValueError):
        generate(m, [1], 5, temperature=-1)
    with pytest.raises(ValueError):
        generate(m, [1], 5, top_p=0.0)
    assert list(generate(m, torch.tensor([1, 2]), 0)) == []


def test_generate_restores_modes():
    m = tiny_model()
    m.train()
    it = generate(m, [1, 2], 3, temperature=0)
    next(it)
    assert m.training and torch.is_grad_enabled()  # not left in eval / inference mode between tokens
    assert list(it) and m.training


# --- streaming text ------------------------------------------------------------------------------


class ByteTokenizer:
    """Ids are the UTF-8 bytes (byte-level BPE's worst case: every multi-byte char spans tokens)."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


class ChunkTokenizer:
    """Each id is a chunk of bytes that cuts across characters."""

    def __init__(self, chunks):
        self.chunks = chunks

    def decode(self, ids):
        return b"".join(self.chunks[i] for i in ids).decode("utf-8", errors="replace")


def test_stream_decode_bytes():
    text = "héllo 你好, 世界! 🎉 ok"
    pieces = list(stream_decode(ByteTokenizer(), list(text.encode())))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert list(stream_decode(ByteTokenizer(), [228, 189, 160, 229, 165, 189])) == ["你", "好"]


def test_stream_decode_chunks_and_flush():
    ni, hao, party = "你".encode(), "好".encode(), "🎉".encode()
    chunks = [b"a", ni[:2], ni[2:] + hao, party[:3], party[3:] + b"b", b" c"]
    tok = ChunkTokenizer(chunks)
    assert list(stream_decode(tok, range(len(chunks)))) == ["a", "你好", "🎉b", " c"]
    # a stream cut mid-character is flushed at the end as the replacement char
    assert list(stream_decode(tok, [0, 1])) == ["a", "\ufffd"]


def test_stream_decode_real_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["hello world, 你好世界", "the cat sat on the mat 🎉"] * 20, trainer)
    text = "hello 世界你好 🎉 the mat, 汉字 ok"
    ids = tok.encode(text).ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens really are partial characters
    pieces = list(stream_decode(tok, ids))
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


# --- decode speed paths: the same tokens as the plain model -------------------------------------


def test_for_decode_fp32_same_outputs_and_still_a_model():
    import copy

    from lmforge.models.layers import for_decode

    m = tiny_model()
    idx = torch.randint(0, 100, (2, 12))
    fast = for_decode(copy.deepcopy(m))
    w = fast.transformer.h[0].attn.c_attn.weight
    assert w.shape == (96, 32) and w.t().is_contiguous()  # input-major storage, same shape
    assert fast.lm_head.weight is fast.transformer.wte.weight  # the tie survives
    with torch.no_grad():
        torch.testing.assert_close(fast(idx), m(idx), atol=1e-5, rtol=0)
    for prompt in ([7], [3, 14, 15, 92, 65, 35]):
        assert list(generate(fast, prompt, 35, temperature=0)) == list(generate(m, prompt, 35, temperature=0))
    assert list(generate(fast, [5], 30, top_p=0.9, seed=123)) == list(generate(m, [5], 30, top_p=0.9, seed=123))
    sd = fast.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())  # same values: saving is unchanged
    fast.train()
    fast(idx).sum().backward()  # still trainable
    assert w.grad is not None and w.grad.shape == w.shape


def test_for_decode_bf16_packs_linears_same_tokens():
    import copy

    from lmforge.models.layers import PackedLinear, for_decode

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no oneDNN bf16 on this CPU")
    m = tiny_model().to(torch.bfloat16)
    fast = for_decode(copy.deepcopy(m))
    assert sum(isinstance(x, PackedLinear) for x in fast.modules()) == 2 * 4 + 1  # 4 per block + the head
    idx = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(fast(idx).float(), m(idx).float(), atol=0.05, rtol=0.02)
    prompt = [3, 14, 15, 92, 65, 35]
    assert list(generate(fast, prompt, 20, temperature=0)) == list(generate(m, prompt, 20, temperature=0))


@pytest.mark.parametrize("T,start", [(1, 9), (6, 0), (4, 5)])
def test_softmax_attention_bf16_matches_sdpa(T, start):
    import torch.nn.functional as F

    from lmforge.models.layers import softmax_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (T, start + T, start + T))
    mask = None if T == 1 else torch.ones(T, start + T, dtype=torch.bool).tril(diagonal=start)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(softmax_attention(q, k, v, mask), ref, atol=1e-5, rtol=0)  # exact math in fp32
    out = softmax_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.03, rtol=0)


def test_for_decode_int8_packs_same_tokens():
    import copy

    from lmforge.models.layers import PackedInt8Linear, _int8_packable, for_decode
    from lmforge.models.quantize import quantize_int8

    if not _int8_packable():
        pytest.skip("no fbgemm / x86 quantized engine")
    q = quantize_int8(tiny_model())[0]
    fast = for_decode(copy.deepcopy(q))
    assert sum(isinstance(x, PackedInt8Linear) for x in fast.modules()) == 2 * 4 + 1
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        ref, out = q.transformer.h[0].mlp.c_fc(x), fast.transformer.h[0].mlp.c_fc(x)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # one row: fbgemm, the same int8 products
        idx = torch.randint(0, 100, (1, 9))
        assert torch.equal(fast(idx), q(idx))  # a prefill runs the Int8Linear layers themselves
    prompt = [3, 14, 15, 92, 65, 35]
    assert list(generate(fast, prompt, 30, temperature=0)) == list(generate(q, prompt, 30, temperature=0))
