import pytest

from lmforge.config import RunConfig, apply_overrides, coerce, load_config, save_config
from lmforge.errors import UserError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "model: {n_layer: 3}\ntrain: {lr: 0.01, max_steps: 5}\n")
    cfg = load_config(p, {"train.lr": "3e-4", "model.n_embd": "96", "train.compile": "true"})
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 96
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.max_steps == 5 and cfg.train.compile is True
    assert cfg.data.vocab_size == RunConfig().data.vocab_size


def test_round_trip_through_yaml(tmp_path):
    cfg = apply_overrides(RunConfig(), {"model.pos_emb": "sinusoidal", "data.path": "x.txt"})
    p = write(tmp_path, save_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train: {lrr: 0.1}\n", "unknown key 'train.lrr'"),
        ("trian: {lr: 0.1}\n", "unknown section 'trian'"),
        ("train: {lr: fast}\n", "train.lr: expected a number"),
        ("model: {n_layer: 2.5}\n", "model.n_layer: expected an integer"),
        ("train: {compile: maybe}\n", "train.compile: expected a boolean"),
        ("model: {n_embd: 65, n_head: 2}\n", "divisible"),
        ("train: {optimizer: lion}\n", "train.optimizer: expected one of"),
        ("finetune: {dropout: 1.5}\n", "finetune.dropout: expected a probability"),
        ("finetune: {head_dropout: -0.1}\n", "finetune.head_dropout: expected a probability"),
        ("- a\n- b\n", "expected a mapping"),
        ("model: {n_layer: [\n", "invalid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_config(p)
    assert needle in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override():
    with pytest.raises(UserError, match="command line: train.max_steps: expected an integer"):
        apply_overrides(RunConfig(), {"train.max_steps": "ten"})
    with pytest.raises(UserError, match="unknown key 'model.layers'"):
        apply_overrides(RunConfig(), {"model.layers": "2"})


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_coerce():
    assert coerce(3, float, "x") == 3.0 and isinstance(coerce(3, float, "x"), float)
    assert coerce("off", bool, "x") is False
    with pytest.raises(UserError):
        coerce(True, int, "x")


def test_the_vocab_size_check_spares_runs_with_their_own_tokenizer():
    """model.vocab_size below 261 is refused only where lmforge trains the tokenizer (a BERT WordPiece or a
    Hugging Face base may be smaller)."""
    from lmforge.config import RunConfig, apply_overrides
    from lmforge.errors import UserError

    for given in ({"data.tokenizer": "vocab/tokenizer.json"}, {"finetune.base_hf": "some-folder"},
                  {"finetune.base": "runs/base"}, {"compress.source": "runs/teacher"}):
        assert apply_overrides(RunConfig(), {"model.vocab_size": "30", **given}).model.vocab_size == 30
    with pytest.raises(UserError, match="model.vocab_size"):
        apply_overrides(RunConfig(), {"model.vocab_size": "260"})
    assert apply_overrides(RunConfig(), {"model.vocab_size": "261"}).model.vocab_size == 261


@pytest.mark.parametrize("kw, needle", [
    (dict(name="gpt", decoder_layers=2), "model.decoder_layers: only for model.name=seq2seq"),
    (dict(name="bert", source_vocab_size=500), "model.source_vocab_size: only for"),
    (dict(name="seq2seq", attention="bahdanau"), "model.attention: bahdanau is only for model.name=lstm_seq2seq"),
    (dict(name="seq2seq", n_layer=2, layer_n_head="2,1"), "model.layer_n_head: per-block sizes"),
    (dict(name="lstm_seq2seq", n_embd=33, n_head=1), "model.n_embd: lstm_seq2seq needs an even width"),
    (dict(name="lstm_seq2seq", norm_first=True), "model.norm_first: only for"),
    (dict(name="lstm_seq2seq", pos_emb="rope"), "model.pos_emb: rope is only for"),
])
def test_seq2seq_fields_are_checked_where_declared(kw, needle):
    from lmforge.config import ModelConfig
    from lmforge.errors import UserError

    with pytest.raises(UserError, match=needle):
        ModelConfig(**kw)
    assert ModelConfig(name="lstm_seq2seq", attention="bahdanau", decoder_layers=2).n_decoder_layers == 2
