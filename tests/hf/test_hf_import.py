"""Hugging Face folders in: BERT and GPT-2 weights, configs and tokenizers, checked against ``transformers``."""

import functools
import json
import shutil

import pytest
import torch
from helpers import perturb, tiny_config
from safetensors.torch import load_file, save_file

from lmforge.config import ModelConfig
from lmforge.errors import UserError
from lmforge.hf import (
    bert_from_hf_state_dict,
    bert_to_hf_state_dict,
    hf_bert_config,
    hf_gpt2_config,
    load_hf_folder,
    model_config_from_hf_bert,
)
from lmforge.models import GPT, BertForMaskedLM, build
from lmforge.tokenizer import Tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")

WORDS = ["the", "king", "queen", "walk", "castle", "night", "people", "sing", "bread", "rain", "and", "of", "to", "at"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,!", "春", "天", *WORDS,
         "##s", "##ed", "##ing", "##e", "##n", "##a", "##t"]  # fmt: skip
TEXTS = ["The king walks to the castle at night.", "Queens sing of bread and rain, 春天!", "Ünïcode ACCENTS stay?"]


bert_cfg = functools.partial(tiny_config, "bert", vocab_size=len(VOCAB), block_size=24)


def hf_bert_tokenizer(vocab_txt, **kw):
    """The fast (tokenizers-backed) HF BERT tokenizer for a vocab.txt, across transformers 4 / 5."""
    if hasattr(transformers, "BertTokenizerLegacy"):  # transformers >= 5
        return transformers.BertTokenizer(vocab=str(vocab_txt), **kw)
    return transformers.BertTokenizerFast(vocab_file=str(vocab_txt), **kw)


def reference_wordpiece(vocab_txt, **kw):
    """The pure-Python HF BERT tokenizer: an independent reference for our vocab.txt setup."""
    cls = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    return cls(vocab_file=str(vocab_txt), **kw)


@pytest.fixture
def vocab_txt(tmp_path):
    path = tmp_path / "vocab" / "vocab.txt"
    path.parent.mkdir()
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def bert_folder(tmp_path, vocab_txt):
    """A saved BertForMaskedLM with random weights, plus its tokenizer: (folder, hf model, hf tokenizer)."""
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(hf_bert_config(bert_cfg(), attn_implementation="eager")).eval()
    perturb(hf)
    folder = tmp_path / "bert"
    hf.save_pretrained(folder, safe_serialization=True)
    tok = hf_bert_tokenizer(vocab_txt)
    tok.save_pretrained(folder)
    return folder, hf, tok


def batch(tok: Tokenizer, pairs: list[tuple[str, str]]):
    """[CLS] a [SEP] b [SEP] rows, right-padded with [PAD]: (ids, attention_mask, token_type_ids)."""
    rows, types = [], []
    for a, b in pairs:
        ida, idb = tok.encode(a, add_special_tokens=True), tok.encode(b)
        rows.append(ida + idb + [tok.eos_id])
        types.append([0] * len(ida) + [1] * (len(idb) + 1))
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    tt = torch.tensor([t + [0] * (T - len(t)) for t in types])
    return ids, mask, tt


# --- BERT ------------------------------------------------------------------------------------------


def test_bert_folder_matches_transformers(bert_folder):
    folder, hf, hf_tok = bert_folder
    cfg, sd, tok = load_hf_folder(folder)
    assert (cfg.name, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == ("bert", len(VOCAB), 2, 2, 32, 24)
    assert cfg.norm_eps == 1e-12 and cfg.type_vocab_size == 2
    ours = build(cfg).eval()
    ours.load_state_dict(sd)  # strict
    assert isinstance(ours, BertForMaskedLM) and ours.mlm_head.decoder.weight is ours.bert.wte.weight

    # our tokenizer: BERT roles and the [CLS] ... [SEP] template, the same ids as transformers
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id) == (2, 3, 0, 1, 4)
    assert tok.special_ids == [0, 1, 2, 3, 4]
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=True) == hf_tok(text)["input_ids"]
        assert tok.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"]

    ids, mask, tt = batch(tok, [(TEXTS[0], TEXTS[1]), (TEXTS[2], "rain")])
    assert mask[1].sum() < mask.shape[1] and tt.max() == 1  # padding and token types exercised
    encoder = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    with torch.no_grad():
        want = encoder(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        torch.testing.assert_close(ours.bert(ids, mask, tt), want, atol=1e-4, rtol=0)
        logits = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        torch.testing.assert_close(ours(ids, mask, tt), logits, atol=1e-4, rtol=0)


def test_bert_vocab_txt_only(bert_folder, vocab_txt):
    folder, _, hf_tok = bert_folder
    (folder / "tokenizer.json").unlink()
    shutil.copy(vocab_txt, folder / "vocab.txt")
    _, _, tok = load_hf_folder(folder)
    ref = reference_wordpiece(vocab_txt)
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=True) == hf_tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.decode(tok.encode("the kings walked")) == "the kings walked"
    # do_lower_case=false in tokenizer_config.json keeps case: "The" is then unknown
    cfg_json = folder / "tokenizer_config.json"
    cfg_json.write_text(json.dumps({**json.loads(cfg_json.read_text()), "do_lower_case": False}))
    _, _, cased = load_hf_folder(folder)
    assert cased.encode("The the") == reference_wordpiece(vocab_txt, do_lower_case=False)("The the", add_special_tokens=False)["input_ids"]
    assert cased.encode("The the")[0] == cased.unk_id != tok.encode("The the")[0]


def test_wordpiece_vocab_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        Tokenizer.from_wordpiece_vocab(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("a\nb\n[UNK]\n")
    with pytest.raises(UserError, match=r"lacks \[CLS\], \[SEP\]"):
        Tokenizer.from_wordpiece_vocab(tmp_path / "vocab.txt")


def test_byte_level_tokenizer_unchanged():
    tok = train_tokenizer(["a b a b"], vocab_size=261)
    assert [tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.special_ids == [0, 1, 2, 3, 4]
    ids = tok.encode("ab")
    assert tok.encode("ab", add_special_tokens=True) == [tok.bos_id, *ids, tok.eos_id]
    assert tok.encode_batch(["ab", "b"], add_special_tokens=True) == [[0, *ids, 1], [0, *tok.encode("b"), 1]]


def test_bare_bertmodel_gets_a_fresh_head(tmp_path, vocab_txt):
    torch.manual_seed(1)
    hf = transformers.BertModel(hf_bert_config(bert_cfg()), add_pooling_layer=True).eval()  # pooler ignored
    perturb(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    shutil.copy(vocab_txt, tmp_path / "vocab.txt")
    assert not any(k.startswith("bert.") for k in load_file(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="no cls.predictions"):
        cfg, sd, tok = load_hf_folder(tmp_path)
    ours = build(cfg).eval()
    ours.load_state_dict(sd)
    ids = torch.tensor([tok.encode(TEXTS[0], add_special_tokens=True)])
    with torch.no_grad():
        torch.testing.assert_close(ours.bert(ids), hf(input_ids=ids).last_hidden_state, atol=1e-4, rtol=0)
    assert torch.all(sd["mlm_head.decoder.bias"] == 0)


def test_bert_export_roundtrip_and_tf_names():
    torch.manual_seed(2)
    for kw in (dict(), dict(tie_weights=False), dict(bias=False, pos_emb="sinusoidal")):
        cfg = bert_cfg(**kw)
        ours = BertForMaskedLM(cfg).eval()
        perturb(ours)
        hf = transformers.BertForMaskedLM(hf_bert_config(cfg)).eval()
        hf.load_state_dict(bert_to_hf_state_dict(ours.state_dict(), cfg))  # strict
        ids = torch.randint(0, cfg.vocab_size, (2, 10))
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=0)
    # TF-era checkpoints name LayerNorm parameters gamma / beta
    cfg = bert_cfg()
    hf_sd = bert_to_hf_state_dict(BertForMaskedLM(cfg).state_dict(), cfg)
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in hf_sd.items()}
    back = bert_from_hf_state_dict(old, cfg)
    BertForMaskedLM(cfg).load_state_dict(back)


def test_bert_state_dict_errors():
    cfg = bert_cfg()
    hf_sd = bert_to_hf_state_dict(BertForMaskedLM(cfg).state_dict(), cfg)
    bad = dict(hf_sd, **{"bert.encoder.layer.1.attention.self.key.weight": torch.zeros(32, 31)})
    with pytest.raises(UserError, match=r"attention\.self\.key\.weight.*\(32, 31\).*\(32, 32\)"):
        bert_from_hf_state_dict(bad, cfg)
    with pytest.raises(UserError, match="missing 1 key.*layer.0.output.dense.bias"):
        bert_from_hf_state_dict({k: v for k, v in hf_sd.items() if k != "bert.encoder.layer.0.output.dense.bias"}, cfg)
    with pytest.raises(UserError, match="1 unexpected key.*bert.encoder.layer.2"):
        bert_from_hf_state_dict(dict(hf_sd, **{"bert.encoder.layer.2.output.dense.bias": torch.zeros(32)}), cfg)
    untied = dict(hf_sd, **{"cls.predictions.decoder.weight": torch.randn(len(VOCAB), 32)})
    with pytest.raises(UserError, match="tie_weights=false"):
        bert_from_hf_state_dict(untied, cfg)
    ignored = dict(hf_sd, **{"bert.pooler.dense.weight": torch.zeros(1), "bert.embeddings.position_ids": torch.zeros(1)})
    BertForMaskedLM(cfg).load_state_dict(bert_from_hf_state_dict(ignored, cfg))


def test_bert_config_checks():
    base = hf_bert_config(bert_cfg()).to_dict()
    assert model_config_from_hf_bert(base) == bert_cfg()
    assert model_config_from_hf_bert({}).dropout == 0.1  # HF defaults fill gaps
    with pytest.raises(UserError, match="hidden_act 'relu'"):
        model_config_from_hf_bert(dict(base, hidden_act="relu"))
    with pytest.raises(UserError, match="intermediate_size=100"):
        model_config_from_hf_bert(dict(base, intermediate_size=100))
    with pytest.raises(UserError, match="position_embedding_type"):
        model_config_from_hf_bert(dict(base, position_embedding_type="relative_key"))


# --- GPT-2 -------------------------------------------------------------------------------------------


def test_gpt2_folder_matches_transformers(tmp_path):
    torch.manual_seed(3)
    tok = train_tokenizer(["the king and the queen walk to the castle\n"] * 20, vocab_size=270)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    hf = transformers.GPT2LMHeadModel(hf_gpt2_config(cfg, attn_implementation="eager")).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    tok.save(tmp_path / "tokenizer.json")
    cfg2, sd, tok2 = load_hf_folder(tmp_path)
    assert (cfg2.name, cfg2.vocab_size, cfg2.n_layer, cfg2.block_size) == ("gpt", 270, 2, 32)
    ours = build(cfg2).eval()
    assert isinstance(ours, GPT)
    ours.load_state_dict(sd)  # strict
    ids = torch.tensor([tok2.encode("the queen walks to the castle")])
    assert ids.shape[1] > 3 and tok2.encode("the king") == tok.encode("the king")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=0)


# --- bad folders -------------------------------------------------------------------------------------


def test_bad_folders(bert_folder, tmp_path):
    folder, _, _ = bert_folder
    with pytest.raises(UserError, match="not a folder"):
        load_hf_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_hf_folder(empty)

    cfg_text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(cfg_text.replace('"model_type": "bert"', '"model_type": "roberta"'))
    with pytest.raises(UserError, match="model_type 'roberta' is not supported") as e:
        load_hf_folder(folder)
    assert "\n" not in str(e.value)
    (folder / "config.json").write_text(cfg_text.replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    with pytest.raises(UserError, match=r"config\.json: BERT config: hidden_act 'relu'"):
        load_hf_folder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json: not valid JSON"):
        load_hf_folder(folder)
    (folder / "config.json").write_text(cfg_text)

    weights = load_file(folder / "model.safetensors")
    key = "bert.encoder.layer.0.intermediate.dense.weight"
    save_file(dict(weights, **{key: torch.zeros(64, 32)}), folder / "model.safetensors")
    with pytest.raises(UserError, match=rf"model\.safetensors: .*{key}.*\(64, 32\).*\(128, 32\)"):
        load_hf_folder(folder)

    # only a pickle: refused without ever being opened (this one would run code if unpickled)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(UserError, match="pytorch_model.bin but no model.safetensors; lmforge reads safetensors only"):
        load_hf_folder(folder)
    assert not (folder / "pwned").exists()
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_hf_folder(folder)


def test_missing_tokenizer_and_vocab_mismatch(bert_folder, tmp_path):
    folder, _, hf_tok = bert_folder
    (folder / "tokenizer.json").rename(folder / "tokenizer.bak")
    with pytest.raises(UserError, match="no tokenizer .*tokenizer.json or vocab.txt"):
        load_hf_folder(folder)
    # a model whose vocabulary is smaller than its tokenizer's: ids would index out of range
    small = tmp_path / "small"
    transformers.BertForMaskedLM(hf_bert_config(bert_cfg(vocab_size=10))).save_pretrained(small)
    hf_tok.save_pretrained(small)
    with pytest.raises(UserError, match=f"tokenizer has {len(VOCAB)} tokens, config.json's vocab_size only 10"):
        load_hf_folder(small)


def test_sharded_safetensors(bert_folder, tmp_path):
    _, hf, hf_tok = bert_folder
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    hf_tok.save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    cfg, sd, _ = load_hf_folder(sharded)
    ours = build(cfg).eval()
    ours.load_state_dict(sd)
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=0)


# --- the real MiniLM (English, uncased), when registered --------------------------------------------


@pytest.mark.data
def test_minilm_matches_transformers():
    from lmforge.data import registry as datasets

    if not datasets.is_registered("minilm-l6"):
        pytest.skip("minilm-l6 is not in the data registry")
    folder = datasets.get("minilm-l6")
    with pytest.warns(UserWarning, match="no cls.predictions"):  # a sentence-embedding encoder: no MLM head
        cfg, sd, tok = load_hf_folder(folder)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size) == (6, 384, 12, 30522)
    ours = build(cfg).eval()
    ours.load_state_dict(sd)
    texts = ["A man is playing a guitar.", "Deep learning needs data, and 2 GPUs!"]
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder)
    want_ids = ref_tok(texts, padding=True, return_tensors="pt")
    rows = [tok.encode(t, add_special_tokens=True) for t in texts]
    assert rows == [ref_tok(t)["input_ids"] for t in texts]
    assert tok.encode(texts[1]) == Tokenizer.from_wordpiece_vocab(folder / "vocab.txt").encode(texts[1])
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    assert torch.equal(ids, want_ids["input_ids"]) and torch.equal(mask, want_ids["attention_mask"])
    ref = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours.bert(ids, mask), want, atol=1e-4, rtol=0)
