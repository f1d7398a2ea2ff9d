"""``data:``, ``train:``, ``finetune:``, ``lora:``, ``compress:`` and ``distill:``: what a run reads, how it
trains, and what the task / compression verbs add."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.fields import F, check_choice, check_float, check_int, check_positive, show
from lmforge.errors import UserError


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
        if isinstance(self.vocab_size, int) and self.vocab_size < 261:
            raise UserError(f"data.vocab_size: expected at least 261 (256 bytes + 5 special tokens), got {self.vocab_size}")
        check_int("data.vocab_size", self.vocab_size, 261, 2**32 - 1)  # token ids are stored as uint16 / uint32
        check_float("data.val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True, what="a fraction")
        check_choice("data", "objective", self.objective, ("auto", "clm", "mlm", "rtd"))
        check_float("data.mask_prob", self.mask_prob, 0.0, 1.0, hi_open=True, what="a fraction")


@dataclass
class TrainConfig:
    max_steps: int = F(100, "optimizer steps to train")
    batch_size: int = F(8, "global batch: sequences per optimizer step, summed over processes and accumulation")
    grad_accum: int = F(1, "micro-batches accumulated per optimizer step (per process)")
    optimizer: str = F("adamw", "adamw | sgd | rmsprop | muon (Muon on the Transformer blocks' weight matrices, AdamW "
                                "with beta1 / beta2 on everything else)")
    lr: float = F(1e-3, "peak learning rate")
    min_lr_ratio: float = F(0.1, "final LR as a fraction of lr (cosine schedules)")
    schedule: str = F("cosine", "LR schedule: cosine | constant | step | cosine_restarts | inverse_sqrt (lr * "
                                "sqrt(warmup_steps / step), the Transformer paper's; all after warmup)")
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
    keep_best: str = F("", "also keep best.safetensors, the weights of the evaluation with the best validation "
                           "figure: loss (lowest) | accuracy | bleu | chrf (highest); empty = off")
    save_interval: int = F(50, "write a resumable checkpoint every N steps (and at the end)")
    log_interval: int = F(10, "append train loss to metrics.jsonl every N steps")
    seed: int = F(1337, "random seed: weights, batches, dropout")
    device: str = F("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = F("float32", "compute dtype via autocast: float32 | bfloat16 | float16 (weights stay float32)")
    compile: bool = F(False, "torch.compile the model")
    num_threads: int = F(0, "CPU threads for torch; 0 = leave torch's default")

    def __post_init__(self) -> None:
        check_choice("train", "optimizer", self.optimizer, ("adamw", "sgd", "rmsprop", "muon"))
        check_choice("train", "schedule", self.schedule, ("cosine", "constant", "step", "cosine_restarts", "inverse_sqrt"))
        check_choice("train", "keep_best", self.keep_best, ("", "loss", "accuracy", "bleu", "chrf"))
        check_choice("train", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        for k in ("max_steps", "batch_size", "grad_accum", "step_size", "restart_period", "eval_batches", "save_interval", "log_interval"):
            check_positive("train", k, getattr(self, k))
        for k in ("warmup_steps", "weight_decay", "grad_clip", "eval_interval"):
            check_positive("train", k, getattr(self, k), allow_zero=True)
        check_int("train.num_threads", self.num_threads, 0, 4096)
        check_int("train.seed", self.seed, 0, 2**32 - 1)  # batches are drawn with seed * 1_000_003 + step: 64 bits
        check_positive("train", "lr", self.lr)
        check_positive("train", "muon_lr_scale", self.muon_lr_scale)
        check_float("train.gamma", self.gamma, 0.0, 1.0, what="a factor")
        for k, what in (("beta1", "a beta"), ("beta2", "a beta"), ("momentum", "a momentum"), ("muon_momentum", "a momentum"),
                        ("ema_decay", "a decay")):
            check_float(f"train.{k}", getattr(self, k), 0.0, 1.0, lo_open=False, hi_open=True, what=what)
        check_float("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, lo_open=False, what="a fraction")
        if isinstance(self.grad_accum, int) and isinstance(self.batch_size, int) and self.batch_size % self.grad_accum:
            raise UserError(f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum}): "
                            "each optimizer step sums grad_accum equal micro-batches")


@dataclass
class FinetuneConfig:
    data: str = F("", "labelled data: a registered set (chn-reviews, movie-snippets) or a CSV / TSV / JSONL file")
    text_column: str = F("text", "column (or JSON key) holding the text")
    label_column: str = F("label", "column (or JSON key) holding the class label")
    tsv_quoting: str = F("none", "how a .tsv file is read: none (plain tab-separated lines, as IANA text/tab-separated-values: "
                                 "a \" is text, a field holds no tab or line break) | csv (fields quoted the CSV way)")
    labels: str = F("", "class names, comma-separated; empty = the sorted labels of the training data")
    base: str = F("", "an lmforge run dir whose weights start the backbone (--base)")
    base_hf: str = F("", "a Hugging Face model folder or a registered model such as minilm-l6 (--base-hf)")
    base_recipe: str = F("", "a pretraining recipe (YAML) that `lmforge pretrain` runs into finetune.base first, "
                             "when that run dir is missing or unfinished")
    encoder_base: str = F("", "translate: an lmforge GPT or masked-LM (bert) run that starts the seq2seq encoder (blocks, "
                              "positions, embedding; its tokenizer becomes the source side's)")
    decoder_base: str = F("", "translate: an lmforge GPT run that starts the seq2seq decoder (its tokenizer becomes the "
                              "target side's); the cross-attention starts random")
    pooling: str = F("auto", "how a sequence becomes one vector: auto (cls for bert, last for gpt) | cls | mean | last | max | "
                            "concat ([last; max; mean])")
    max_length: int = F(128, "texts are truncated to this many tokens")
    head_dropout: float = F(0.1, "dropout before the classification head")
    dropout: float = F(-1.0, "dropout inside the backbone while fine-tuning (its model.dropout); -1 keeps the base "
                             "model's (a base pretrained without dropout may want some here)")
    group_by_length: bool = F(False, "batch texts of similar length together: less padding, but a batch's labels follow length")
    mode: str = F("full", "what trains: full (everything) | head (the head only) | lora (adapters + head)")
    freeze_layers: int = F(0, "full mode: freeze the embeddings and the lowest N blocks")
    layer_lr_decay: float = F(1.0, "full mode: LR of block i is lr * decay ** (n_layer - i); embeddings get the lowest")

    def __post_init__(self) -> None:
        check_choice("finetune", "pooling", self.pooling, ("auto", "cls", "mean", "last", "max", "concat"))
        check_choice("finetune", "mode", self.mode, ("full", "head", "lora"))
        check_choice("finetune", "tsv_quoting", self.tsv_quoting, ("none", "csv"))  # lmforge.data.tables.TSV_QUOTINGS
        check_positive("finetune", "max_length", self.max_length)
        check_positive("finetune", "freeze_layers", self.freeze_layers, allow_zero=True)
        check_float("finetune.layer_lr_decay", self.layer_lr_decay, 0.0, 1.0, what="a factor")
        check_float("finetune.head_dropout", self.head_dropout, 0.0, 1.0, lo_open=False, hi_open=True, what="a probability")
        if not (self.dropout == -1.0 or (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0)):
            raise UserError(f"finetune.dropout: expected a probability in [0, 1), or -1 to keep the base's, got {show(self.dropout)}")
        if self.labels and len(self.label_names) < 2:
            raise UserError(f"finetune.labels: expected at least two class names separated by commas, got {show(self.labels)}")
        if self.base and self.base_hf:
            raise UserError("finetune.base and finetune.base_hf: give one starting point, not both")
        if self.base_recipe and not self.base:
            raise UserError("finetune.base_recipe: also set finetune.base, the run dir to pretrain into")

    @property
    def label_names(self) -> list[str]:
        return [x.strip() for x in self.labels.split(",") if x.strip()]


@dataclass
class LoRAConfig:
    """LoRA's settings: the ``lora:`` section of a run's config and what :func:`lmforge.models.lora.apply_lora`
    takes (one class for both). ``targets`` may be given as a sequence; it is kept as the comma-separated
    string config.yaml holds, and :attr:`patterns` splits it.

    >>> LoRAConfig(targets=("c_attn", "mlp.*")).targets, LoRAConfig(targets="c_attn, mlp.*").patterns
    ('c_attn,mlp.*', ('c_attn', 'mlp.*'))
    """

    rank: int = F(8, "LoRA rank r (finetune.mode=lora): the adapter adds r * (in + out) parameters per Linear")
    alpha: float = F(16.0, "LoRA scaling numerator: the update is scaled by alpha / rank")
    dropout: float = F(0.0, "dropout on the LoRA input")
    targets: str = F("c_attn", "comma-separated Linear module names or fnmatch patterns to adapt, e.g. c_attn,c_proj "
                               "or mlp.* or *")

    def __post_init__(self) -> None:
        if isinstance(self.targets, (tuple, list)):  # from Python: a sequence of patterns
            self.targets = ",".join(str(t).strip() for t in self.targets)
        check_int("lora.rank", self.rank, 1)
        check_positive("lora", "alpha", self.alpha)
        check_float("lora.dropout", self.dropout, 0.0, 1.0, lo_open=False, hi_open=True, what="a probability")
        if not isinstance(self.targets, str) or not self.patterns or not all(self.patterns):
            raise UserError(f"lora.targets: expected module names or patterns such as 'c_attn', got {show(self.targets)}")

    @property
    def patterns(self) -> tuple[str, ...]:
        """``targets`` as a tuple of patterns."""
        return tuple(t.strip() for t in self.targets.split(",") if t.strip())


@dataclass
class CompressSection:
    """Written by `lmforge compress` into the run it makes; ``quantize`` tells load_run how to rebuild the model."""

    quantize: str = F("", "weight storage: empty (float32) | int8 (dynamic int8 Linear layers)")
    sparsity: float = F(0.0, "`lmforge compress --method prune`: share of the pruned weights set to zero, or of the "
                             "heads / neurons cut (structured)")
    structured: str = F("", "structured pruning applied: empty | heads | neurons | channels (image runs)")
    source: str = F("", "the run dir this run was compressed from")

    def __post_init__(self) -> None:
        for name, value, choices in (("quantize", self.quantize, ("int8",)), ("structured", self.structured, ("heads", "neurons", "channels"))):
            if value not in ("", *choices):
                raise UserError(f"compress.{name}: expected empty or one of {', '.join(choices)}, got {show(value)}")
        check_float("compress.sparsity", self.sparsity, 0.0, 1.0, lo_open=False, hi_open=True, what="a fraction")


@dataclass
class DistillSection:
    """`lmforge compress --method distill`: how the student learns from the teacher (see lmforge.tools.compress.distill)."""

    temperature: float = F(2.0, "softmax temperature T of the soft targets (teacher and student logits / T); the soft "
                                "loss is scaled by T^2")
    alpha: float = F(0.5, "weight of the soft loss KL(teacher || student); the hard-label loss gets 1 - alpha")
    hidden_weight: float = F(0.0, "weight of the hidden-state loss: MSE between the vectors the teacher's and the "
                                  "student's output heads read, through a learned projection when the widths differ; 0 = off")
    init_embedding: bool = F(False, "start the student's token embedding from the teacher's (projected on its top "
                                    "principal directions when the student is narrower), at the student's initial scale")

    def __post_init__(self) -> None:
        check_positive("distill", "temperature", self.temperature)
        check_positive("distill", "hidden_weight", self.hidden_weight, allow_zero=True)
        check_float("distill.alpha", self.alpha, 0.0, 1.0, lo_open=False, what="a weight")
