"""Configuration: one dataclass per concern, YAML recipes and ``--section.key=value`` overrides.

A recipe (``configs/*.yaml``) only sets fields of these dataclasses::

    model: {n_layer: 2, n_embd: 64}
    train: {lr: 3.0e-3, max_steps: 200}

Precedence: dataclass defaults < YAML recipe < command-line overrides. ``__post_init__`` validates
and raises :class:`UserError` naming the field; unknown keys and wrong types name the key too.

The sections live in ``model.py`` (the architecture) and ``sections.py`` (the rest); this module
joins them into :class:`RunConfig` and reads / writes / overrides it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.config.fields import show
from lmforge.config.image import ImageConfig
from lmforge.config.model import ModelConfig
from lmforge.config.sections import CompressSection, DataConfig, DistillSection, FinetuneConfig, LoRAConfig, TrainConfig
from lmforge.config.translate import TranslateConfig
from lmforge.errors import UserError

__all__ = ["CompressSection", "DataConfig", "DistillSection", "FinetuneConfig", "ImageConfig", "LoRAConfig", "ModelConfig",
           "RunConfig", "TrainConfig", "TranslateConfig", "apply_overrides", "coerce", "from_dict", "load_config", "load_yaml",
           "option_specs", "save_config"]


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``RUN_DIR/config.yaml``.

    ``task`` names the kind of work (``lm``, ``mlm``, ``rtd``, ``classify`` or a registered one, see
    :mod:`lmforge.tasks`): the recipes write it into every run dir; "" (a run dir written before it
    existed) is derived from the rest by ``lmforge.tasks.of``.
    """

    task: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    compress: CompressSection = field(default_factory=CompressSection)
    distill: DistillSection = field(default_factory=DistillSection)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    image: ImageConfig = field(default_factory=ImageConfig)

    def __post_init__(self) -> None:
        # A run that trains its own tokenizer (no data.tokenizer, no base model, not made from another run) gets
        # one of at least 256 bytes + 5 special tokens: a smaller model.vocab_size can only fail, so fail now,
        # before the tokenizer is trained, not after.
        VISION = ("cnn", "resnet", "vit")  # lmforge.models.VISION: image models read pixels, no tokenizer
        MIN_VOCAB_SIZE = 261  # lmforge.tokenizer.MIN_VOCAB_SIZE, without importing tokenizers here
        m, ft = self.model, self.finetune
        own_tokenizer = not (self.data.tokenizer or ft.base or ft.base_hf or self.compress.source or m.name in VISION)
        if own_tokenizer and 0 < m.vocab_size < MIN_VOCAB_SIZE:
            raise UserError(f"model.vocab_size: expected 0 (take the tokenizer's) or at least {MIN_VOCAB_SIZE} (the "
                            f"tokenizer trained on data.path has 256 bytes + 5 special tokens), got {m.vocab_size}")

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
                             "finetune": FinetuneConfig, "lora": LoRAConfig, "compress": CompressSection,
                             "distill": DistillSection, "translate": TranslateConfig, "image": ImageConfig}


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
            raise UserError(f"{where}: expected a boolean (true/false), got {show(value)}")
        try:
            return int(s) if typ is int else float(s)
        except ValueError:
            raise UserError(f"{where}: expected {'an integer' if typ is int else 'a number'}, got {show(value)}") from None
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected a boolean (true/false), got {show(value)}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {show(value)}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond any float
                raise UserError(f"{where}: expected a finite number, got {show(value)}") from None
        raise UserError(f"{where}: expected a number, got {show(value)}")
    if typ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise UserError(f"{where}: expected a string, got {show(value)}")
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
        if section == "task":  # the one top-level value: the task's name
            merged["task"] = coerce(values, str, f"{source}: task")
            continue
        if section not in SECTIONS:
            raise UserError(f"{source}: unknown section {show(section)} (expected task or one of: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {show(section)} must be a mapping of keys to values")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types:
                raise UserError(f"{source}: unknown key '{section}.{show(key)[1:-1] if isinstance(key, str) else show(key)}' (known: {', '.join(types)})")
            merged[section][key] = coerce(value, types[key], f"{source}: {section}.{key}")
    return build(merged, source)


def build(merged: dict, source: str) -> RunConfig:
    """Construct the dataclasses (running their validation) from a complete nested dict."""
    try:
        return RunConfig(task=merged.get("task", ""), **{name: SECTIONS[name](**merged[name]) for name in SECTIONS})
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
        raise UserError(f"{where}: invalid YAML ({show(getattr(e, 'problem', None) or str(e))[1:-1]})") from None
    except (ValueError, OverflowError, RecursionError) as e:  # an int of more than 4300 digits, a too deep nesting
        raise UserError(f"{p}: invalid YAML ({show(str(e) or type(e).__name__)[1:-1]})") from None
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
