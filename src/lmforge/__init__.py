"""lmforge: the whole life of a Transformer model on modest hardware.

The Python API is what the CLI calls; each verb is one function here, imported on first use (so
``import lmforge`` stays light)::

    import lmforge

    lmforge.recipes.pretrain("configs/gpt-tiny.yaml", {"data.path": "corpus.txt"}, out="runs/lm")
    lmforge.recipes.finetune(None, {"finetune.data": "train.tsv", "finetune.base": "runs/lm"}, out="runs/clf")
    lmforge.tools.evaluate("runs/clf", data="test.tsv")          # accuracy, P / R / F1, confusion
    lmforge.predict("runs/clf", ["a gorgeous, witty film"])  # [(label, probability, text)]
    cfg, model, tokenizer = lmforge.load_run("runs/clf")     # the model itself, in eval mode
    lmforge.train("configs/translate-zh-en.yaml", out="runs/zh-en")  # any task's recipe
    lmforge.translate("runs/zh-en", ["我们明天去北京。"], beam=5)       # ["..."]
"""

from __future__ import annotations

__version__ = "0.1.0"

from lmforge.errors import UserError  # noqa: E402,F401

# public name -> (module, attribute): the verbs of the CLI, as functions
_API = {
    "pretrain": ("lmforge.recipes.pretrain", "pretrain"),
    "finetune": ("lmforge.recipes.finetune", "finetune"),
    "train": ("lmforge.recipes.train", "train"),
    "translate": ("lmforge.tools.translate", "translate_run"),
    "evaluate": ("lmforge.tools.evaluate", "evaluate_run"),
    "predict": ("lmforge.tools.evaluate", "predict_texts"),
    "generate": ("lmforge.tools.generate", "complete"),
    "compress": ("lmforge.tools.compress", "compress"),
    "distill": ("lmforge.tools.compress.distill", "distill"),
    "export": ("lmforge.tools.export", "export_run"),
    "explain": ("lmforge.tools.explain", "explain"),
    "serve": ("lmforge.tools.serve", "serve"),
    "train_tokenizer": ("lmforge.tools.train_tokenizer", "train_from_spec"),
    "load_run": ("lmforge.runs.loader", "load_run"),
}
__all__ = ["UserError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
