"""``model:``: the architecture of every family (gpt, bert, electra, lstm), validated as a whole."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.fields import F, check_choice, check_float, check_int, check_positive, show
from lmforge.errors import UserError


@dataclass
class ModelConfig:
    name: str = F("gpt", "model family: gpt (causal decoder) | bert (bidirectional encoder) | electra (a bert encoder "
                         "pretrained by replaced-token detection) | lstm (baseline classifier) | seq2seq (encoder-decoder "
                         "Transformer, for translation) | lstm_seq2seq (LSTM encoder-decoder with attention) | cnn (conv -> ReLU -> "
                         "pool blocks, then fully connected) | resnet (a small residual network) | vit (vision Transformer)")
    vocab_size: int = F(0, "vocabulary size; 0 = take it from the tokenizer (seq2seq: the target side's)")
    source_vocab_size: int = F(0, "seq2seq, lstm_seq2seq: source vocabulary of a run with one tokenizer per side (a "
                                  "separate encoder embedding); 0 = one joint vocabulary and one embedding shared by "
                                  "encoder and decoder")
    block_size: int = F(128, "context length in tokens")
    n_layer: int = F(2, "number of Transformer blocks (seq2seq: encoder blocks; lstm: LSTM layers)")
    decoder_layers: int = F(0, "seq2seq, lstm_seq2seq: decoder blocks / LSTM layers; 0 = n_layer")
    n_head: int = F(2, "attention heads per block")
    n_embd: int = F(64, "embedding / residual width")
    dropout: float = F(0.0, "dropout probability (embeddings, attention output, MLP)")
    bias: bool = F(True, "use biases in Linear and LayerNorm layers (GPT-2 does)")
    pos_emb: str = F("learned", "position embeddings: learned | sinusoidal | rope (gpt, bert, electra, seq2seq: "
                                "rotary, on q and k of every self-attention layer; no position table)")
    rope_theta: float = F(10000.0, "rope: base of the rotary frequencies")
    norm: str = F("layernorm", "gpt: normalization layers: layernorm | rmsnorm (a gain, no bias)")
    mlp: str = F("gelu", "gpt: MLP: gelu | swiglu (silu(gate) * up; default width round(8/3 * n_embd) rounded up to "
                         "a multiple of 64, so about the parameters of gelu's 4 * n_embd) | relu2 (relu(x)^2)")
    norm_first: bool = F(False, "bert, electra, seq2seq: pre-LN layers (x + attn(ln(x)), a final LayerNorm) instead of BERT's "
                                "post-LN; trains from scratch at high LRs without a long warmup")
    qk_norm: bool = F(False, "gpt: RMSNorm each head's queries and keys before attention (and before rope)")
    tie_weights: bool = F(True, "share the token embedding with the output head")
    norm_eps: float = F(1e-5, "LayerNorm / RMSNorm epsilon (q / k norms too)")
    type_vocab_size: int = F(2, "bert: number of token types (segment A / B)")
    attention: str = F("luong", "lstm_seq2seq: luong (general, multiplicative) | bahdanau (additive) attention")
    generator_layers: int = F(1, "electra: layers of the masked-LM generator (width n_embd, embeddings shared with the "
                                 "encoder)")
    image_size: int = F(0, "cnn, resnet, vit: input height = width in pixels; 0 = the data's (the recipe sets it)")
    in_channels: int = F(0, "cnn, resnet, vit: input channels; 0 = the data's (the recipe sets it)")
    num_classes: int = F(0, "cnn, resnet, vit: output classes; 0 = the data's labels (the recipe sets it)")
    channels: str = F("", "cnn, resnet: width of each stage, comma-separated; empty = 32,64 (cnn) or 16,32,64 (resnet). "
                          "A cnn stage is n_layer conv-BN-ReLU then a 2x2 max-pool, a resnet stage n_layer basic blocks")
    batch_norm: bool = F(True, "cnn: batch norm after each convolution")
    patch_size: int = F(4, "vit: patch side in pixels (image_size must be a multiple of it)")
    pooling: str = F("cls", "vit: cls (a class token) | mean (the mean of the patch tokens)")
    channels_last: bool = F(False, "cnn, resnet: keep activations in channels-last memory format")
    layer_channels: str = F("", "cnn: output channels of each convolution; resnet: the inner width (first conv) of each "
                                "basic block; comma-separated (set by structured channel pruning); empty = the stage widths")
    layer_n_head: str = F("", "heads in each block, comma-separated (set by structured pruning); empty = n_head in "
                              "every block. The head size stays n_embd // n_head")
    layer_n_inner: str = F("", "MLP width of each block, comma-separated (set by structured pruning); empty = 4 * n_embd "
                               "(swiglu: see model.mlp)")

    def __post_init__(self) -> None:
        check_choice("model", "name", self.name, ("gpt", "bert", "electra", "lstm", "seq2seq", "lstm_seq2seq", "cnn",
                                                  "resnet", "vit"))
        self._check_vision()
        check_choice("model", "attention", self.attention, ("luong", "bahdanau"))
        check_int("model.decoder_layers", self.decoder_layers, 0)
        check_int("model.source_vocab_size", self.source_vocab_size, 0)
        check_positive("model", "generator_layers", self.generator_layers)
        check_choice("model", "pos_emb", self.pos_emb, ("learned", "sinusoidal", "rope"))
        check_choice("model", "norm", self.norm, ("layernorm", "rmsnorm"))
        check_choice("model", "mlp", self.mlp, ("gelu", "swiglu", "relu2"))
        check_positive("model", "rope_theta", self.rope_theta)
        check_float("model.norm_eps", self.norm_eps, 0.0, 1.0, hi_open=True)
        check_int("model.type_vocab_size", self.type_vocab_size, 1)
        gpt_only = (("norm", "rmsnorm"), ("mlp", "swiglu"), ("mlp", "relu2"), ("qk_norm", True))
        if self.norm_first and self.name in ("gpt", "lstm", "lstm_seq2seq"):
            raise UserError(f"model.norm_first: only for model.name=bert, electra or seq2seq (a gpt is always pre-LN), "
                            f"not {self.name}")
        no_positions = self.name in ("lstm", "lstm_seq2seq")
        not_here = () if self.name == "gpt" else gpt_only + ((("pos_emb", "rope"),) if no_positions else ())
        for k, value in not_here:
            if getattr(self, k) == value:
                where = "gpt, bert, electra or seq2seq" if k == "pos_emb" else "gpt"
                raise UserError(f"model.{k}: {str(value).lower()} is only for model.name={where}, not {self.name}")
        for k in ("block_size", "n_layer", "n_head", "n_embd"):
            check_positive("model", k, getattr(self, k))
        check_int("model.vocab_size", self.vocab_size, 0)
        check_float("model.dropout", self.dropout, 0.0, 1.0, lo_open=False, hi_open=True, what="a probability")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.pos_emb == "rope" and self.head_size % 2:
            raise UserError(f"model.pos_emb: rope needs an even head size (model.n_embd / model.n_head), got {self.head_size}")
        for k in ("layer_n_head", "layer_n_inner"):
            _per_layer(k, getattr(self, k), self.n_layer)
        self._check_seq2seq()

    def _check_vision(self) -> None:
        """The fields only the image models read, checked whatever the family (each a UserError naming the field)."""
        for k in ("image_size", "in_channels", "num_classes"):
            check_int(f"model.{k}", getattr(self, k), 0)
        check_positive("model", "patch_size", self.patch_size)
        check_choice("model", "pooling", self.pooling, ("cls", "mean"))
        if self.channels:
            parts = [p.strip() for p in self.channels.split(",")]
            if not all(p.isdigit() and int(p) > 0 for p in parts):
                raise UserError(f"model.channels: expected positive integers separated by commas, got {show(self.channels)}")
        vision = self.name in ("cnn", "resnet", "vit")
        if not vision and (self.image_size or self.in_channels or self.num_classes or self.channels):
            k = next(k for k in ("image_size", "in_channels", "num_classes", "channels") if getattr(self, k))
            raise UserError(f"model.{k}: only for model.name=cnn, resnet or vit, not {self.name}")
        if self.name == "vit" and self.image_size and self.image_size % self.patch_size:
            raise UserError(f"model.patch_size: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.layer_channels:
            if self.name not in ("cnn", "resnet"):
                raise UserError(f"model.layer_channels: only for model.name=cnn or resnet, not {self.name}")
            _per_layer("layer_channels", self.layer_channels, len(self.stage_widths) * self.n_layer)

    def conv_widths(self) -> list[int]:
        """cnn: the output width of each convolution; resnet: the inner width of each basic block (stage order)."""
        if self.layer_channels:
            return _per_layer("layer_channels", self.layer_channels, len(self.stage_widths) * self.n_layer)
        return [w for w in self.stage_widths for _ in range(self.n_layer)]

    @property
    def stage_widths(self) -> list[int]:
        """cnn / resnet: the width of each stage (``channels``, or the family's default)."""
        if self.channels:
            return [int(p) for p in self.channels.split(",")]
        return [16, 32, 64] if self.name == "resnet" else [32, 64]

    def _check_seq2seq(self) -> None:
        """The fields only an encoder-decoder reads, and what it cannot take (each a UserError naming the field)."""
        seq2seq = self.name in ("seq2seq", "lstm_seq2seq")
        if not seq2seq and (self.decoder_layers or self.source_vocab_size):
            field = "decoder_layers" if self.decoder_layers else "source_vocab_size"
            raise UserError(f"model.{field}: only for model.name=seq2seq or lstm_seq2seq, not {self.name}")
        if self.attention != "luong" and self.name != "lstm_seq2seq":
            raise UserError(f"model.attention: {self.attention} is only for model.name=lstm_seq2seq, not {self.name}")
        if seq2seq and (self.layer_n_head or self.layer_n_inner):
            raise UserError(f"model.{'layer_n_head' if self.layer_n_head else 'layer_n_inner'}: per-block sizes (structured "
                            f"pruning) are not supported for model.name={self.name}")
        if self.name == "lstm_seq2seq" and self.n_embd % 2:
            raise UserError(f"model.n_embd: lstm_seq2seq needs an even width (two encoder directions of n_embd / 2), "
                            f"got {self.n_embd}")

    @property
    def n_decoder_layers(self) -> int:
        """Decoder blocks of a seq2seq model (``decoder_layers``, or ``n_layer`` when 0)."""
        return self.decoder_layers or self.n_layer

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
        raise UserError(f"model.{name}: expected {n_layer} positive integers separated by commas (one per block), got {show(text)}")
    return values
