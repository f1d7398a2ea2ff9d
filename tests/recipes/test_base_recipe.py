"""finetune.base_recipe: a fine-tuning recipe that pretrains its own base model first (once)."""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO, make_corpus, make_labelled

from lmforge.__main__ import main
from lmforge.runs.files import CONFIG, WEIGHTS, saved_step


@pytest.fixture
def recipe(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "gpt-tiny.yaml").read_text())
    cfg.setdefault("data", {})["path"] = str(make_corpus(tmp_path / "corpus.txt"))
    cfg["train"].update(max_steps=20, save_interval=10, eval_interval=0)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def ft(tmp, recipe, out, *extra):
    return main(["finetune", "--finetune.data", str(make_labelled(tmp / "train.tsv", n=64)), "--finetune.base_recipe", str(recipe),
                 "--finetune.base", str(tmp / "base"), "--train.max_steps=4", "--train.batch_size=8",
                 "--train.eval_interval=0", "--out", str(tmp / out), *extra])


def test_base_is_pretrained_once_then_reused(tmp_path, recipe, capsys):
    assert ft(tmp_path, recipe, "ft1") == 0
    assert "pretraining the base model first" in capsys.readouterr().out
    assert saved_step(tmp_path / "base") == 20 and (tmp_path / "ft1" / WEIGHTS).exists()
    stamp = (tmp_path / "base" / WEIGHTS).stat().st_mtime_ns
    assert ft(tmp_path, recipe, "ft2") == 0
    assert "base model" not in capsys.readouterr().out
    assert (tmp_path / "base" / WEIGHTS).stat().st_mtime_ns == stamp


def test_unfinished_base_is_resumed(tmp_path, recipe, capsys):
    assert main(["pretrain", "--config", str(recipe), "--out", str(tmp_path / "base")]) == 0
    cfg = yaml.safe_load((tmp_path / "base" / CONFIG).read_text())
    cfg["train"]["max_steps"] = 30  # as if the pretraining had stopped at step 20 of 30
    (tmp_path / "base" / CONFIG).write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert ft(tmp_path, recipe, "ft") == 0
    assert "continuing the base model's pretraining: " in capsys.readouterr().out
    assert saved_step(tmp_path / "base") == 30


def test_bad_base_recipe(tmp_path, recipe, capsys):
    data = str(make_labelled(tmp_path / "train.tsv", n=64))
    assert main(["finetune", "--finetune.data", data, "--finetune.base_recipe", str(recipe), "--out", str(tmp_path / "a")]) == 2
    assert "finetune.base_recipe: also set finetune.base" in capsys.readouterr().err
    assert ft(tmp_path, tmp_path / "missing.yaml", "b") == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "base").exists()
