"""Pretrained starts of a translation run: ``finetune.encoder_base`` / ``finetune.decoder_base`` run dirs.

Read once, when a run starts (a resume has its checkpoint and its tokenizers, and needs neither base):
each base's config fixes the seq2seq's shape (:func:`lmforge.models.seq2seq_starts.start_config`), its
tokenizer becomes its side's, and its weights are copied in after the model is built. With
``translate.tokenizer: joint`` one tokenizer serves both sides, so two bases must share it; with
``separate`` a side without a base trains its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from lmforge.config import ModelConfig, RunConfig
from lmforge.errors import UserError
from lmforge.tokenizer import Tokenizer


@dataclass
class Base:
    role: str  # "encoder" | "decoder"
    path: Path
    model: ModelConfig
    weights: dict[str, Tensor]
    tok: Tokenizer


@dataclass
class Starts:
    bases: dict[str, Base] = field(default_factory=dict)

    def tokenizers(self, joint: bool) -> tuple[Tokenizer | None, Tokenizer | None]:
        """(target, source) tokenizers the bases fix; None = train one on that side's text."""
        enc, dec = self.bases.get("encoder"), self.bases.get("decoder")
        if joint:
            if enc and dec and enc.tok.sha256 != dec.tok.sha256:
                raise UserError(f"translate.tokenizer: joint needs one tokenizer, but finetune.encoder_base ({enc.path}) and "
                                f"finetune.decoder_base ({dec.path}) have different ones; set translate.tokenizer: separate")
            one = (dec or enc).tok
            return one, one
        return (dec.tok if dec else None), (enc.tok if enc else None)


def _load(role: str, path: str) -> Base:
    from lmforge import tasks
    from lmforge.runs.loader import load_run, require_run_dir

    run = require_run_dir(path)
    cfg, model, tok = load_run(run)
    kind = tasks.of(cfg).name
    if kind not in ("lm", "mlm"):
        raise UserError(f"finetune.{role}_base: {run} is a {kind} run; it takes a pretraining run (lmforge pretrain --out)")
    if cfg.compress.quantize:
        raise UserError(f"finetune.{role}_base: {run} is {cfg.compress.quantize}-quantized; start from the float run")
    sd = model.state_dict()
    if cfg.model.name == "bert":  # a masked-LM run: the backbone without its head
        sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
    return Base(role, run, cfg.model, sd, tok)


def load_starts(cfg: RunConfig) -> Starts | None:
    """The bases ``cfg.finetune`` names, with ``cfg.model`` reshaped to take them (printed); None without bases."""
    from lmforge.models.seq2seq_starts import start_config

    ft = cfg.finetune
    if not (ft.encoder_base or ft.decoder_base):
        return None
    if cfg.model.name != "seq2seq":
        raise UserError(f"finetune.encoder_base / decoder_base start a seq2seq model (model.name: seq2seq), not {cfg.model.name}")
    if cfg.data.tokenizer:
        raise UserError("data.tokenizer: a run with pretrained starts takes the bases' tokenizers; leave data.tokenizer empty")
    starts = Starts({role: _load(role, p) for role, p in (("encoder", ft.encoder_base), ("decoder", ft.decoder_base)) if p})
    enc, dec = starts.bases.get("encoder"), starts.bases.get("decoder")
    cfg.model = start_config(cfg.model, enc.model if enc else None, dec.model if dec else None)
    joint = cfg.translate.tokenizer == "joint"
    starts.tokenizers(joint)  # two bases with different tokenizers cannot share one: say so before anything runs
    if dec or joint:
        cfg.model.vocab_size = (dec or enc).model.vocab_size
    if enc and not joint:
        cfg.model.source_vocab_size = enc.model.vocab_size
    m = cfg.model
    print(f"pretrained starts: {', '.join(f'{b.role} <- {b.path}' for b in starts.bases.values())}; model: "
          f"{m.n_layer} + {m.decoder_layers} layers, width {m.n_embd}, {m.n_head} heads, {m.pos_emb} positions, "
          f"{'pre' if m.norm_first else 'post'}-LN", flush=True)
    return starts


def apply_starts(model: nn.Module, starts: Starts, cfg: RunConfig) -> int:
    """Copy the bases' weights into a freshly built seq2seq; the number of tensors copied."""
    from lmforge.models.seq2seq_starts import decoder_weights, encoder_weights
    from lmforge.models.seq2seq_starts import load_starts as copy_in

    weights: dict[str, Tensor] = {}
    enc, dec = starts.bases.get("encoder"), starts.bases.get("decoder")
    if enc:
        embedding = "src_wte.weight" if cfg.model.source_vocab_size else (None if dec else "wte.weight")
        weights.update(encoder_weights(enc.weights, enc.model, embedding))
    if dec:
        weights.update(decoder_weights(dec.weights, dec.model, cfg.model.tie_weights))
    return len(copy_in(model, weights))
