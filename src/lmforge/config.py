"""Configuration: one dataclass per concern, YAML recipes and ``--section.key=value`` overrides.

A recipe (``configs/*.yaml``) only sets fields of these dataclasses::

    model: {n_layer: 2, n_embd: 64}
    train: {lr: 3.0e-3, max_steps: 200}

Precedence: dataclass defaults < YAML recipe < command-line overrides. ``__post_init__`` validates
and raises :class:`UserError` naming the field; unknown keys and wrong types name the key too.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import UserError


def F(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best in the field list
    """A dataclass field with a one-line help text (shown by ``lmforge <verb> --help``)."""
    return field(default=default, metadata={"help": help})


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{section}.{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def _check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{section}.{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


@dataclass
class ModelConfig:
    name: str = F("gpt", "model family: gpt (causal decoder) | bert (bidirectional encoder) | electra (a bert encoder "
                         "pretrained by replaced-token detection) | lstm (baseline classifier)")
    vocab_size: int = F(0, "vocabulary size; 0 = take it from the tokenizer")
    block_size: int = F(128, "context length in tokens")
    n_layer: int = F(2, "number of Transformer blocks")
    n_head: int = F(2, "attention heads per block")
    n_embd: int = F(64, "embedding / residual width")
    dropout: float = F(0.0, "dropout probability (embeddings, attention output, MLP)")
    bias: bool = F(True, "use biases in Linear and LayerNorm layers (GPT-2 does)")
    pos_emb: str = F("learned", "position embeddings: learned | sinusoidal | rope (gpt, bert, electra: rotary, on q "
                                "and k in every attention layer; no position table)")
    rope_theta: float = F(10000.0, "rope: base of the rotary frequencies")
    norm: str = F("layernorm", "gpt: normalization layers: layernorm | rmsnorm (a gain, no bias)")
    mlp: str = F("gelu", "gpt: MLP: gelu | swiglu (silu(gate) * up; default width round(8/3 * n_embd) rounded up to "
                         "a multiple of 64, so about the parameters of gelu's 4 * n_embd) | relu2 (relu(x)^2)")
    norm_first: bool = F(False, "bert, electra: pre-LN layers (x + attn(ln(x)), a final LayerNorm) instead of BERT's "
                                "post-LN; trains from scratch at high LRs without a long warmup")
    qk_norm: bool = F(False, "gpt: RMSNorm each head's queries and keys before attention (and before rope)")
    tie_weights: bool = F(True, "share the token embedding with the output head")
    norm_eps: float = F(1e-5, "LayerNorm / RMSNorm epsilon (q / k norms too)")
    type_vocab_size: int = F(2, "bert: number of token types (segment A / B)")
    generator_layers: int = F(1, "electra: layers of the masked-LM generator (width n_embd, embeddings shared with the "
                                 "encoder)")
    layer_n_head: str = F("", "heads in each block, comma-separated (set by structured pruning); empty = n_head in "
                              "every block. The head size stays n_embd // n_head")
    layer_n_inner: str = F("", "MLP width of each block, comma-separated (set by structured pruning); empty = 4 * n_embd "
                               "(swiglu: see model.mlp)")

    def __post_init__(self) -> None:
        _check_choice("model", "name", self.name, ("gpt", "bert", "electra", "lstm"))
        _check_positive("model", "generator_layers", self.generator_layers)
        _check_choice("model", "pos_emb", self.pos_emb, ("learned", "sinusoidal", "rope"))
        _check_choice("model", "norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("model", "mlp", self.mlp, ("gelu", "swiglu", "relu2"))
        _check_positive("model", "rope_theta", self.rope_theta)
        gpt_only = (("norm", "rmsnorm"), ("mlp", "swiglu"), ("mlp", "relu2"), ("qk_norm", True))
        if self.norm_first and self.name in ("gpt", "lstm"):
            raise UserError(f"model.norm_first: only for model.name=bert or electra (a gpt is always pre-LN), not {self.name}")
        not_here = () if self.name == "gpt" else gpt_only + ((("pos_emb", "rope"),) if self.name == "lstm" else ())
        for k, value in not_here:
            if getattr(self, k) == value:
                where = "gpt, bert or electra" if k == "pos_emb" else "gpt"
                raise UserError(f"model.{k}: {str(value).lower()} is only for model.name={where}, not {self.name}")
        for k in ("block_size", "n_layer", "n_head", "n_embd"):
            _check_positive("model", k, getattr(self, k))
        _check_positive("model", "vocab_size", self.vocab_size, allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.pos_emb == "rope" and self.head_size % 2:
            raise UserError(f"model.pos_emb: rope needs an even head size (model.n_embd / model.n_head), got {self.head_size}")
        for k in ("layer_n_head", "layer_n_inner"):
            _per_layer(k, getattr(self, k), self.n_layer)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def n_head_at(self, layer: int) -> int:
        """Heads in block ``layer`` (``layer_n_head`` if set, else ``n_head``)."""
        return _per_layer("layer_n_head", self.layer_n_head, self.n_layer)[layer] if self.layer_n_head else self.n_head

    def n_inner_at(self, layer: int) -> int:
        """MLP width of block ``layer``: ``layer_n_inner`` if set, else 4 * n_embd, or for swiglu round(8/3 * n_embd)
        rounded up to a multiple of 64 (its c_fc then has twice that many outputs: gate and up)."""
        if self.layer_n_inner:
            return _per_layer("layer_n_inner", self.layer_n_inner, self.n_layer)[layer]
        return -(-round(8 * self.n_embd / 3) // 64) * 64 if self.mlp == "swiglu" else 4 * self.n_embd


def _per_layer(name: str, text: str, n_layer: int) -> list[int]:
    """'4,3' -> [4, 3]: one positive integer per block (an empty string gives [])."""
    if not text:
        return []
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n_layer or min(values, default=0) < 1:
        raise UserError(f"model.{name}: expected {n_layer} positive integers separated by commas (one per block), got {text!r}")
    return values


@dataclass
class DataConfig:
    path: str = F("", "data set name (see `lmforge data list`), a .txt file / folder of .txt files, or several joined by commas; a labelled set gives its texts")
    tokenizer: str = F("", "tokenizer.json (or a folder holding one); empty = train one on the data into the run dir")
    vocab_size: int = F(4096, "vocabulary size when a tokenizer is trained")
    val_fraction: float = F(0.05, "share of a local text held out for validation (registry sets have fixed splits)")
    objective: str = F("auto", "pretraining objective: auto (clm for gpt, mlm for bert, rtd for electra) | clm (next "
                               "token) | mlm (masked tokens) | rtd (replaced-token detection)")
    mask_prob: float = F(0.15, "mlm / rtd: share of tokens to mask (80% masked, 10% random, 10% kept)")

    def __post_init__(self) -> None:
        if self.vocab_size < 261:
            raise UserError(f"data.vocab_size: expected at least 261 (256 bytes + 5 special tokens), got {self.vocab_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction: expected a fraction in (0, 1), got {self.val_fraction!r}")
        _check_choice("data", "objective", self.objective, ("auto", "clm", "mlm", "rtd"))
        if not 0.0 < self.mask_prob < 1.0:
            raise UserError(f"data.mask_prob: expected a fraction in (0, 1), got {self.mask_prob!r}")


@dataclass
class TrainConfig:
    max_steps: int = F(100, "optimizer steps to train")
    batch_size: int = F(8, "global batch: sequences per optimizer step, summed over processes and accumulation")
    grad_accum: int = F(1, "micro-batches accumulated per optimizer step (per process)")
    optimizer: str = F("adamw", "adamw | sgd | rmsprop | muon (Muon on the Transformer blocks' weight matrices, AdamW "
                                "with beta1 / beta2 on everything else)")
    lr: float = F(1e-3, "peak learning rate")
    min_lr_ratio: float = F(0.1, "final LR as a fraction of lr (cosine schedules)")
    schedule: str = F("cosine", "LR schedule: cosine | constant | step | cosine_restarts (all after warmup)")
    warmup_steps: int = F(0, "linear warmup steps")
    step_size: int = F(1000, "step schedule: decay the LR every N steps")
    gamma: float = F(0.5, "step schedule: multiply the LR by this at each decay")
    restart_period: int = F(1000, "cosine_restarts: steps in each cosine cycle")
    weight_decay: float = F(0.1, "weight decay on matrices (not on biases, norms)")
    beta1: float = F(0.9, "AdamW beta1")
    beta2: float = F(0.95, "AdamW beta2; RMSprop smoothing constant (alpha)")
    momentum: float = F(0.9, "SGD / RMSprop momentum")
    muon_momentum: float = F(0.95, "muon: momentum of the Muon updates (Nesterov)")
    muon_lr_scale: float = F(1.0, "muon: LR of the Muon matrices as a multiple of the scheduled LR (their updates are "
                                  "scaled to AdamW's RMS, so 1 is a fair start)")
    grad_clip: float = F(1.0, "clip the gradient norm to this; 0 = off")
    ema_decay: float = F(0.0, "keep an exponential moving average of the weights (e.g. 0.998): evaluations and the "
                              "saved model use it; 0 = off")
    eval_interval: int = F(50, "evaluate on the validation split every N steps (and at the end); 0 = only at the end")
    eval_batches: int = F(10, "batches per evaluation")
    save_interval: int = F(50, "write a resumable checkpoint every N steps (and at the end)")
    log_interval: int = F(10, "append train loss to metrics.jsonl every N steps")
    seed: int = F(1337, "random seed: weights, batches, dropout")
    device: str = F("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = F("float32", "compute dtype via autocast: float32 | bfloat16 | float16 (weights stay float32)")
    compile: bool = F(False, "torch.compile the model")
    num_threads: int = F(0, "CPU threads for torch; 0 = leave torch's default")

    def __post_init__(self) -> None:
        _check_choice("train", "optimizer", self.optimizer, ("adamw", "sgd", "rmsprop", "muon"))
        _check_choice("train", "schedule", self.schedule, ("cosine", "constant", "step", "cosine_restarts"))
        _check_choice("train", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        for k in ("max_steps", "batch_size", "grad_accum", "step_size", "restart_period", "eval_batches", "save_interval", "log_interval"):
            _check_positive("train", k, getattr(self, k))
        for k in ("warmup_steps", "weight_decay", "grad_clip", "eval_interval", "num_threads"):
            _check_positive("train", k, getattr(self, k), allow_zero=True)
        _check_positive("train", "lr", self.lr)
        _check_positive("train", "muon_lr_scale", self.muon_lr_scale)
        if not 0.0 <= self.muon_momentum < 1.0:
            raise UserError(f"train.muon_momentum: expected a momentum in [0, 1), got {self.muon_momentum!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"train.ema_decay: expected a decay in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"train.min_lr_ratio: expected a fraction in [0, 1], got {self.min_lr_ratio!r}")


@dataclass
class FinetuneConfig:
    data: str = F("", "labelled data: a registered set (chn-reviews, movie-snippets) or a CSV / TSV / JSONL file")
    text_column: str = F("text", "column (or JSON key) holding the text")
    label_column: str = F("label", "column (or JSON key) holding the class label")
    labels: str = F("", "class names, comma-separated; empty = the sorted labels of the training data")
    base: str = F("", "an lmforge run dir whose weights start the backbone (--base)")
    base_hf: str = F("", "a Hugging Face model folder or a registered model such as minilm-l6 (--base-hf)")
    base_recipe: str = F("", "a pretraining recipe (YAML) that `lmforge pretrain` runs into finetune.base first, "
                             "when that run dir is missing or unfinished")
    pooling: str = F("auto", "how a sequence becomes one vector: auto (cls for bert, last for gpt) | cls | mean | last | max | "
                            "concat ([last; max; mean])")
    max_length: int = F(128, "texts are truncated to this many tokens")
    head_dropout: float = F(0.1, "dropout before the classification head")
    group_by_length: bool = F(False, "batch texts of similar length together: less padding, but a batch's labels follow length")
    mode: str = F("full", "what trains: full (everything) | head (the head only) | lora (adapters + head)")
    freeze_layers: int = F(0, "full mode: freeze the embeddings and the lowest N blocks")
    layer_lr_decay: float = F(1.0, "full mode: LR of block i is lr * decay ** (n_layer - i); embeddings get the lowest")

    def __post_init__(self) -> None:
        _check_choice("finetune", "pooling", self.pooling, ("auto", "cls", "mean", "last", "max", "concat"))
        _check_choice("finetune", "mode", self.mode, ("full", "head", "lora"))
        _check_positive("finetune", "max_length", self.max_length)
        _check_positive("finetune", "freeze_layers", self.freeze_layers, allow_zero=True)
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise UserError(f"finetune.layer_lr_decay: expected a factor in (0, 1], got {self.layer_lr_decay!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise UserError(f"finetune.head_dropout: expected a probability in [0, 1), got {self.head_dropout!r}")
        if self.base and self.base_hf:
            raise UserError("finetune.base and finetune.base_hf: give one starting point, not both")
        if self.base_recipe and not self.base:
            raise UserError("finetune.base_recipe: also set finetune.base, the run dir to pretrain into")

    @property
    def label_names(self) -> list[str]:
        return [x.strip() for x in self.labels.split(",") if x.strip()]


@dataclass
class LoRASection:
    rank: int = F(8, "LoRA rank (finetune.mode=lora)")
    alpha: float = F(16.0, "LoRA scaling numerator: the update is scaled by alpha / rank")
    dropout: float = F(0.0, "dropout on the LoRA input")
    targets: str = F("c_attn", "comma-separated module name patterns to adapt, e.g. c_attn,c_proj or mlp.*")


@dataclass
class CompressSection:
    """Written by `lmforge compress` into the run it makes; ``quantize`` tells load_run how to rebuild the model."""

    quantize: str = F("", "weight storage: empty (float32) | int8 (dynamic int8 Linear layers)")
    sparsity: float = F(0.0, "`lmforge compress --method prune`: share of the pruned weights set to zero, or of the "
                             "heads / neurons cut (structured)")
    structured: str = F("", "structured pruning applied: empty | heads | neurons")
    source: str = F("", "the run dir this run was compressed from")

    def __post_init__(self) -> None:
        for name, value, choices in (("quantize", self.quantize, ("int8",)), ("structured", self.structured, ("heads", "neurons"))):
            if value not in ("", *choices):
                raise UserError(f"compress.{name}: expected empty or one of {', '.join(choices)}, got {value!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"compress.sparsity: expected a fraction in [0, 1), got {self.sparsity!r}")


@dataclass
class DistillSection:
    """`lmforge compress --method distill`: how the student learns from the teacher (see lmforge.compress.distill)."""

    temperature: float = F(2.0, "softmax temperature T of the soft targets (teacher and student logits / T); the soft "
                                "loss is scaled by T^2")
    alpha: float = F(0.5, "weight of the soft loss KL(teacher || student); the hard-label loss gets 1 - alpha")
    hidden_weight: float = F(0.0, "weight of the hidden-state loss: MSE between the vectors the teacher's and the "
                                  "student's output heads read, through a learned projection when the widths differ; 0 = off")
    init_embedding: bool = F(False, "start the student's token embedding from the teacher's (projected on its top "
                                    "principal directions when the student is narrower), at the student's initial scale")

    def __post_init__(self) -> None:
        _check_positive("distill", "temperature", self.temperature)
        _check_positive("distill", "hidden_weight", self.hidden_weight, allow_zero=True)
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"distill.alpha: expected a weight in [0, 1], got {self.alpha!r}")


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``RUN_DIR/config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoRASection = field(default_factory=LoRASection)
    compress: CompressSection = field(default_factory=CompressSection)
    distill: DistillSection = field(default_factory=DistillSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def classifier_max_length(self) -> int:
        """Tokens a fine-tuned classifier reads per text: ``finetune.max_length``, within a Transformer's
        ``block_size`` (an LSTM has none)."""
        ft = self.finetune
        return ft.max_length if self.model.name == "lstm" else min(ft.max_length, self.model.block_size)

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> "RunConfig":
        return from_dict(d, source)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
                             "finetune": FinetuneConfig, "lora": LoRASection, "compress": CompressSection,
                             "distill": DistillSection}


def _field_types(section_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def coerce(value: Any, typ: type, where: str) -> Any:
    """Check / convert one value to a field's type; strings (from the CLI) are parsed.

    >>> coerce("3e-4", float, "train.lr")
    0.0003
    >>> coerce("yes", bool, "train.compile")
    True
    """
    if isinstance(value, str) and typ is not str:
        s = value.strip()
        if typ is bool:
            low = s.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise UserError(f"{where}: expected a boolean (true/false), got {value!r}")
        try:
            return int(s) if typ is int else float(s)
        except ValueError:
            raise UserError(f"{where}: expected {'an integer' if typ is int else 'a number'}, got {value!r}") from None
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected a boolean (true/false), got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise UserError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {typ} at {where}")


def from_dict(d: Any, source: str = "config", base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from a nested dict, on top of ``base`` (defaults if None).

    Unknown sections / keys and wrong types raise UserError naming ``source`` and the key.
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}, got {type(d).__name__}")
    merged = (base or RunConfig()).to_dict()
    for section, values in d.items():
        if section not in SECTIONS:
            raise UserError(f"{source}: unknown section {section!r} (expected one of: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {section!r} must be a mapping of keys to values")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types:
                raise UserError(f"{source}: unknown key '{section}.{key}' (known: {', '.join(types)})")
            merged[section][key] = coerce(value, types[key], f"{source}: {section}.{key}")
    return build(merged, source)


def build(merged: dict, source: str) -> RunConfig:
    """Construct the dataclasses (running their validation) from a complete nested dict."""
    try:
        return RunConfig(**{name: SECTIONS[name](**merged[name]) for name in SECTIONS})
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file into a dict; a missing / unreadable / malformed file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found (expected a YAML recipe such as configs/gpt-tiny.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 text file (expected a YAML recipe)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    return data if data is not None else {}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < YAML file < ``overrides`` ({'train.lr': '3e-4', ...})."""
    cfg = from_dict(load_yaml(path), str(path))
    return apply_overrides(cfg, overrides or {})


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], source: str = "command line") -> RunConfig:
    """Apply dotted ``section.key`` overrides (values may be strings from the CLI)."""
    nested: dict[str, dict] = {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise UserError(f"{source}: option --{dotted} must be --section.key (e.g. --train.lr)")
        nested.setdefault(section, {})[key] = value
    return from_dict(nested, source, base=cfg)


def save_config(cfg: RunConfig) -> str:
    """The YAML text of a config (all fields, so a run dir is self-describing)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def option_specs() -> list[tuple[str, type, Any, str]]:
    """(dotted name, type, default, help) for every field: the CLI turns these into options."""
    out = []
    for section, cls in SECTIONS.items():
        types = _field_types(cls)
        for f in dataclasses.fields(cls):
            out.append((f"{section}.{f.name}", types[f.name], f.default, f.metadata.get("help", "")))
    return out
