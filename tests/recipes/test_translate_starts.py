"""Pretrained starts of a translation run (``--finetune.encoder_base`` / ``--finetune.decoder_base``, Rothe et
al., 2020): the weight map is exact (a decoder from a GPT computes the GPT when its cross-attention is silent,
an encoder from a GPT computes the GPT on a one-token source), the recipe takes the bases' shapes and
tokenizers, trains, resumes without them, and the bad bases get one line, exit 2, no run dir left."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import make_pairs, pretrain_argv, translation_recipe, tree_digest
from torch import nn

from lmforge.__main__ import main
from lmforge.config import RunConfig, TranslateConfig
from lmforge.models.seq2seq_starts import start_config
from lmforge.recipes.translate_starts import apply_starts, load_starts
from lmforge.runs.loader import load_run

pytest.importorskip("sacrebleu")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A zh GPT, an en GPT (learned positions) and a zh masked-LM (rope, pre-LN), each a few steps on one side's text."""
    tmp = tmp_path_factory.mktemp("starts")
    pairs = make_pairs(tmp / "pairs.tsv", n=300)
    rows = [r.split("\t") for r in pairs.read_text(encoding="utf-8").splitlines()[1:]]
    (tmp / "zh.txt").write_text("\n".join(r[0] for r in rows) * 3 + "\n", encoding="utf-8")
    (tmp / "en.txt").write_text("\n".join(r[1] for r in rows) * 3 + "\n", encoding="utf-8")
    short = ("--train.max_steps=20", "--data.vocab_size=300", "--model.block_size=32")
    for name, text, extra in (("gpt-zh", "zh.txt", ()), ("gpt-en", "en.txt", ()),
                              ("bert-zh", "zh.txt", ("--model.name=bert", "--model.pos_emb=rope", "--model.norm_first=true")),
                              ("gpt-sin", "en.txt", ("--model.pos_emb=sinusoidal",))):
        assert main(pretrain_argv(tmp / text, tmp / name, *short, *extra)) == 0
    return tmp, pairs


def _cfg(tmp, pairs, **ft):
    cfg = RunConfig(task="translate", translate=TranslateConfig(data=str(pairs), tokenizer="separate"))
    cfg.model.name = "seq2seq"
    for k, v in ft.items():
        setattr(cfg.finetune, k, str(tmp / v))
    return cfg


def _started(tmp, pairs, **ft):
    from lmforge.models import build

    cfg = _cfg(tmp, pairs, **ft)
    starts = load_starts(cfg)
    cfg.model.vocab_size = cfg.model.vocab_size or 300  # a side without a base: the recipe sizes it from its tokenizer
    torch.manual_seed(0)
    model = build(cfg.model).eval()
    n = apply_starts(model, starts, cfg)
    return cfg, model, n


def _tanh_gelu(model: nn.Module) -> None:
    """The GPT's MLP uses the tanh GELU, the seq2seq's the exact one: match them to test the map exactly."""
    for m in model.modules():
        if isinstance(m, nn.GELU):
            m.approximate = "tanh"


def test_decoder_from_a_gpt_computes_the_gpt_when_cross_attention_is_silent(bases):
    tmp, pairs = bases
    cfg, model, n = _started(tmp, pairs, encoder_base="gpt-zh", decoder_base="gpt-en")
    m = cfg.model
    assert (m.n_layer, m.decoder_layers, m.n_embd, m.n_head, m.pos_emb, m.norm_first) == (2, 2, 64, 2, "learned", True)
    assert m.block_size == 32 and m.source_vocab_size > 0 and n > 20
    _, gpt, _ = load_run(tmp / "gpt-en")
    _tanh_gelu(model)
    with torch.no_grad():
        for block in model.decoder.h:
            block.cross.c_proj.weight.zero_()
            block.cross.c_proj.bias.zero_()
        tgt = torch.randint(0, m.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
        src = torch.randint(0, m.source_vocab_size, (3, 7), generator=torch.Generator().manual_seed(2))
        ours = model(src, torch.ones(3, 7, dtype=torch.bool), tgt)
        torch.testing.assert_close(ours, gpt(tgt), rtol=0, atol=1e-5)


def test_encoder_from_a_gpt_computes_the_gpt_on_a_one_token_source(bases):
    tmp, pairs = bases
    cfg, model, _ = _started(tmp, pairs, encoder_base="gpt-zh")
    _, gpt, _ = load_run(tmp / "gpt-zh")
    _tanh_gelu(model)
    with torch.no_grad():
        src = torch.tensor([[5], [17], [40]])  # one token: bidirectional and causal attention agree
        memory = model.encode(src, torch.ones(3, 1, dtype=torch.bool))
        memory = memory[0] if isinstance(memory, tuple) else memory
        torch.testing.assert_close(memory, gpt.features(src), rtol=0, atol=1e-5)
    assert torch.equal(model.src_wte.weight, gpt.transformer.wte.weight)
    assert cfg.model.decoder_layers == 2  # no decoder base: the recipe's count (decoder_layers 0 = its n_layer, 2)


def test_encoder_from_a_masked_lm(bases):
    tmp, pairs = bases
    cfg, model, _ = _started(tmp, pairs, encoder_base="bert-zh")
    _, bert, _ = load_run(tmp / "bert-zh")
    sd = bert.state_dict()
    assert cfg.model.pos_emb == "rope" and cfg.model.norm_first
    for k, v in model.state_dict().items():
        if k.startswith("encoder.h."):
            assert torch.equal(v, sd["bert." + k[len("encoder."):]]), k
    assert torch.equal(model.src_wte.weight, sd["bert.wte.weight"])


def test_start_config_refuses_bases_that_disagree(bases):
    tmp, pairs = bases
    with pytest.raises(Exception, match="finetune.decoder_base: model.pos_emb learned differs from finetune.encoder_base's rope"):
        load_starts(_cfg(tmp, pairs, encoder_base="bert-zh", decoder_base="gpt-en"))  # rope vs learned
    cfg = _cfg(tmp, pairs)
    assert start_config(cfg.model, None, None) is cfg.model


def test_train_with_starts_takes_the_bases_tokenizers_and_resumes_without_them(bases, tmp_path):
    tmp, pairs = bases
    recipe = translation_recipe(tmp_path, pairs, steps=20)
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    shutil.copytree(tmp / "gpt-zh", enc)
    shutil.copytree(tmp / "gpt-en", dec)
    run = tmp_path / "run"
    assert main(["train", "--config", recipe, "--finetune.encoder_base", str(enc), "--finetune.decoder_base", str(dec),
                 "--translate.tokenizer", "separate", "--train.max_steps=10", "--out", str(run)]) == 0
    assert (run / "tokenizer.json").read_bytes() == (dec / "tokenizer.json").read_bytes()
    assert (run / "source_tokenizer.json").read_bytes() == (enc / "tokenizer.json").read_bytes()
    cfg, model, _ = load_run(run)
    assert (cfg.model.n_embd, cfg.model.decoder_layers, cfg.model.norm_first) == (64, 2, True)
    shutil.rmtree(enc)
    shutil.rmtree(dec)  # a resume has its checkpoint and tokenizers: it reads neither base
    assert main(["train", "--resume", str(run), "--train.max_steps=20"]) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in recs) == 20


@pytest.mark.parametrize("flags, message", [
    (["--finetune.decoder_base", "bert-zh"], "finetune.decoder_base: a bert model cannot start the decoder; it takes a GPT"),
    (["--finetune.decoder_base", "gpt-sin"], "finetune.decoder_base: model.pos_emb: sinusoidal bases are not supported"),
    (["--finetune.encoder_base", "gpt-zh", "--finetune.decoder_base", "gpt-en", "--translate.tokenizer", "joint"],
     "translate.tokenizer: joint needs one tokenizer, but finetune.encoder_base"),
    (["--finetune.encoder_base", "gpt-zh", "--model.name", "lstm_seq2seq"],
     "finetune.encoder_base / decoder_base start a seq2seq model (model.name: seq2seq), not lstm_seq2seq"),
    (["--finetune.encoder_base", "nowhere"], "nowhere"),
])
def test_bad_bases_are_one_line_and_leave_nothing(bases, tmp_path, capsys, flags, message):
    tmp, pairs = bases
    recipe = translation_recipe(tmp_path, pairs, steps=5)
    flags = [str(tmp / f) if f in ("bert-zh", "gpt-sin", "gpt-zh", "gpt-en", "nowhere") else f for f in flags]
    before = tree_digest(tmp / "gpt-en")
    assert main(["train", "--config", recipe, *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and tree_digest(tmp / "gpt-en") == before
