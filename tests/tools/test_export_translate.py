"""``lmforge export`` of translation runs: ONNX encoder + decoder (greedy decoding in onnxruntime equals lmforge's)
and MarianMTModel / PegasusForConditionalGeneration folders (post-LN / pre-LN: only the layouts they express exactly;
the rest refused in one line, nothing written)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers import make_pairs, perturb, tiny_config, translation_recipe, tree_digest

from lmforge.__main__ import main
from lmforge.config import RunConfig, TranslateConfig, save_config
from lmforge.errors import UserError
from lmforge.models import build
from lmforge.models.search import DecodeConfig, translate_ids
from lmforge.runs.files import save_weights
from lmforge.runs.loader import load_run
from lmforge.tokenizer import train_tokenizer
from lmforge.tools import export as ex
from lmforge.tools.export import seq2seq as s2s

ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

SENTENCES = ["我们明天去北京。", "春天来了。", "我们一起看花。", "北京", "花来了我们去看。"]
LAYOUTS = {  # name -> seq2seq model fields (perturbed random weights)
    "pre-ln-rope": dict(norm_first=True, pos_emb="rope", n_layer=2, decoder_layers=3),
    "post-ln-sinusoidal": dict(pos_emb="sinusoidal", tie_weights=False),
    "separate-learned": dict(source_vocab_size=-1, bias=False),  # -1: the tokenizer's size, a source_tokenizer.json
    "marian": dict(pos_emb="sinusoidal", decoder_layers=3),  # what MarianMTModel expresses
    "pegasus": dict(pos_emb="sinusoidal", norm_first=True, n_layer=2, decoder_layers=3),  # pre-LN: Pegasus
}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the king and queen walk to the castle", "春天 来了 我们 一起 去 北京 看 花"] * 20, vocab_size=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lmforge.recipes.train import train

    tmp = tmp_path_factory.mktemp("tr")
    train(translation_recipe(tmp, make_pairs(tmp / "p.tsv")), out=tmp / "run", progress=False)
    return tmp / "run"


def make_s2s_run(folder, tok, layout: str, seed: int = 0, **over):
    """A translation run dir with a seq2seq of ``LAYOUTS[layout]`` and perturbed random weights."""
    kw = {**LAYOUTS[layout], **over}
    separate = kw.get("source_vocab_size") == -1
    if separate:
        kw["source_vocab_size"] = tok.vocab_size
    mcfg = tiny_config("seq2seq", **{"vocab_size": tok.vocab_size, "block_size": 24, **kw})
    torch.manual_seed(seed)
    model = build(mcfg)
    perturb(model, seed)
    folder.mkdir(parents=True)
    tcfg = TranslateConfig(tokenizer="separate" if separate else "joint")
    (folder / "config.yaml").write_text(save_config(RunConfig(task="translate", model=mcfg, translate=tcfg)), encoding="utf-8")
    tok.save(folder / "tokenizer.json")
    if separate:
        tok.save(folder / "source_tokenizer.json")
    save_weights(folder / "model.safetensors", model)
    return folder


def greedy_both(run, out, seqs):
    """(onnxruntime greedy, translate_ids greedy) of token id lists ``seqs`` with the run's length rule."""
    cfg, model, tok = load_run(run)
    enc, dec = s2s.sessions(out)
    t = cfg.translate
    got = s2s.onnx_greedy(enc, dec, cfg.model, seqs, tok.bos_id, tok.eos_id, tok.pad_id, t.max_len_a, t.max_len_b)
    ref = translate_ids(model, seqs, tok.bos_id, tok.eos_id, tok.pad_id, DecodeConfig(method="greedy", max_len_a=t.max_len_a,
                        max_len_b=t.max_len_b), max_positions=cfg.model.block_size)
    return got, ref


def test_onnx_trained_run_greedy_equals_lmforge(tmp_path, trained):
    before = tree_digest(trained)
    info = ex.export_run(trained, "onnx", tmp_path / "out")
    out = tmp_path / "out"
    assert tree_digest(trained) == before
    names = ["config.yaml", "decoder.onnx", "encoder.onnx", "export.json", "tokenizer.json"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(info))
    assert info["model"] == "seq2seq" and info["max_abs_diff"] < 1e-4 and info["greedy_sentences_checked"] == 6
    cfg, model, tok = load_run(trained)
    assert info["special_tokens"] == {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
                                      "decoder_start_token_id": tok.bos_id}
    assert info["decoder"]["inputs"]["past_k"]["shape"] == [1, "batch", 2, "past", 16]
    seqs = tok.encode_batch(SENTENCES)
    got, ref = greedy_both(trained, out, seqs)
    assert got == ref and any(ref)
    # the logits of one decoded sentence, step by step with the cache, against the teacher-forced PyTorch ones
    enc, dec = s2s.sessions(out)
    src, mask = s2s.pad_sources(seqs[:1], tok.pad_id)
    _, ck, cv = enc.run(s2s.ENC_OUT, {"src_ids": src, "src_mask": mask})
    pk = pv = s2s.empty_past(cfg.model, 1)
    steps, ids = [], [tok.bos_id, *ref[0]]
    for t in ids:
        logits, pk, pv = dec.run(s2s.DEC_OUT, {"input_ids": [[t]], "src_mask": mask, "cross_k": ck, "cross_v": cv,
                                               "past_k": pk, "past_v": pv})
        steps.append(torch.as_tensor(logits[:, -1]))
    with torch.no_grad():
        want = model(torch.as_tensor(src), torch.as_tensor(mask).bool(), torch.tensor([ids]))[0]
    assert (torch.cat(steps) - want).abs().max().item() < 1e-4
    assert pk.shape == (1, 1, 2, len(ids), 16)


@pytest.mark.parametrize("layout", ["pre-ln-rope", "post-ln-sinusoidal", "separate-learned"])
def test_onnx_layouts_match(tmp_path, tok, layout):
    run = make_s2s_run(tmp_path / "run", tok, layout)
    info = ex.export_run(run, "onnx", tmp_path / "out")
    assert info["max_abs_diff"] < 1e-4 and info["decoder_layers"] == LAYOUTS[layout].get("decoder_layers", 2)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert ("source_tokenizer.json" in names) == (layout == "separate-learned")
    seqs = [[5, 9, 11, 30], [7], list(range(20, 40)), []]
    got, ref = greedy_both(run, tmp_path / "out", seqs)
    assert got == ref and ref[3] == []


def test_lstm_seq2seq_is_refused_and_nothing_is_written(tmp_path, tok):
    mcfg = tiny_config("lstm_seq2seq", vocab_size=tok.vocab_size)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(save_config(RunConfig(task="translate", model=mcfg)), encoding="utf-8")
    tok.save(run / "tokenizer.json")
    save_weights(run / "model.safetensors", build(mcfg))
    for fmt, words in (("onnx", "lstm_seq2seq"), ("hf", "no Hugging Face")):
        with pytest.raises(UserError, match=words) as e:
            ex.export_run(run, fmt, tmp_path / "out" / fmt)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- MarianMTModel
def _hf_greedy(hf, cfg, seqs, tok):
    t = cfg.translate
    out = []
    for s in seqs:
        limit = min(math.floor(t.max_len_a * len(s) + t.max_len_b), cfg.model.block_size - 1)
        ids = hf.generate(input_ids=torch.tensor([s]), num_beams=1, do_sample=False, max_new_tokens=limit)[0, 1:].tolist()
        out.append(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids)
    return out


@pytest.mark.parametrize("layout, cls", [("marian", "MarianMTModel"), ("pegasus", "PegasusForConditionalGeneration")])
def test_hf_folder_generates_lmforge_greedy(tmp_path, tok, layout, cls):
    run = make_s2s_run(tmp_path / "run", tok, layout)
    info = ex.export_run(run, "hf", tmp_path / "hf")
    out = tmp_path / "hf"
    assert info["hf_class"] == cls and info["max_abs_diff"] < 1e-4 and info["greedy_sentences_checked"] == 6
    files = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "export.json"}
    assert files <= {p.name for p in out.iterdir()}
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()  # what a user would call
    assert type(hf).__name__ == cls
    c = hf.config
    assert (c.decoder_start_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert c.scale_embedding and c.activation_function == "gelu"
    cfg, model, _ = load_run(run)
    seqs = [[5, 9, 11, 30], [7, 8], list(range(20, 36))]
    ref = translate_ids(model, seqs, tok.bos_id, tok.eos_id, tok.pad_id, DecodeConfig(method="greedy"), max_positions=24)
    assert _hf_greedy(hf, cfg, seqs, tok) == ref
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("春天 来了")["input_ids"] == tok.encode("春天 来了")


@pytest.mark.parametrize("C", [2, 7, 32, 256])
def test_seq2seq_position_table_is_marians(C):
    """The seq2seq model's sinusoidal table (sines, then cosines) is the one MarianMTModel rebuilds, odd widths too."""
    from lmforge.hf.marian import marian_positions

    mcfg = tiny_config("seq2seq", vocab_size=50, block_size=40, pos_emb="sinusoidal", n_embd=C, n_head=1)
    torch.testing.assert_close(build(mcfg).pos_table, marian_positions(40, C), rtol=0, atol=1e-6)
    hf = transformers.MarianMTModel(_marian_config(mcfg))
    torch.testing.assert_close(hf.model.encoder.embed_positions.weight, marian_positions(40, C), rtol=0, atol=1e-6)
    pegasus = transformers.PegasusForConditionalGeneration(_marian_config(dataclasses.replace(mcfg, norm_first=True)))
    torch.testing.assert_close(pegasus.model.encoder.embed_positions.weight, marian_positions(40, C), rtol=0, atol=1e-6)


def _marian_config(mcfg):
    from lmforge.hf.marian import hf_marian_config

    return hf_marian_config(mcfg, 1, 2, 0)


@pytest.mark.parametrize("over, message", [
    (dict(norm_first=True, pos_emb="rope"), "model.pos_emb: rope cannot be exported as PegasusForConditionalGeneration"),
    (dict(pos_emb="learned"), "model.pos_emb: learned cannot be exported as MarianMTModel"),
    (dict(pos_emb="rope"), "model.pos_emb: rope cannot be exported as MarianMTModel"),
    (dict(tie_weights=False), "model.tie_weights: false cannot be exported as MarianMTModel"),
    (dict(bias=False), "model.bias: false cannot be exported as MarianMTModel"),
    (dict(norm_eps=1e-6), "model.norm_eps: 1e-06 cannot be exported as MarianMTModel"),
    (dict(source_vocab_size=-1), "model.source_vocab_size: 300 cannot be exported as MarianMTModel"),
])
def test_hf_refusals_are_one_line_and_write_nothing(tmp_path, tok, capsys, over, message):
    run = make_s2s_run(tmp_path / "run", tok, "marian", **over)
    before = tree_digest(run)
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "a" / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.endswith("use --format onnx")
    assert not (tmp_path / "a").exists() and tree_digest(run) == before
