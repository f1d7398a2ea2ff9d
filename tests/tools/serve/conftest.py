"""Fixtures of the `lmforge serve` tests: the tiny run dirs of every kind, their loaded models (plus slow
stand-ins for timeouts), and the app under a real uvicorn server on a free loopback port."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.serve import Slow, SlowClassifier, make_runs, running

httpx = pytest.importorskip("httpx")

from lmforge.tools.serve.app import create_app  # noqa: E402
from lmforge.tools.serve.limits import Limits  # noqa: E402
from lmforge.tools.serve.registry import load_models  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def models(runs):
    return load_models([str(p) for p in runs.values()])


@pytest.fixture(scope="module")
def slow_models(models):
    """``models`` plus "slow": the LM at 20 ms per token, without eos, and "slow-clf": 1 s per forward pass."""
    lm, clf = models["lm"], models["clf-gpt"]
    return {**models, "slow": dataclasses.replace(lm, id="slow", model=Slow(lm.model, lm.tok.eos_id)),
            "slow-clf": dataclasses.replace(clf, id="slow-clf", model=SlowClassifier(clf.model))}


@pytest.fixture(scope="module")
def url(models):
    with running(create_app(models, Limits(max_completion_tokens=200, max_prompt_tokens=40, max_inputs=8))) as u:
        yield u


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c
