"""The top-level Python API: each verb of the CLI is one function of ``lmforge``, imported on first use."""

from __future__ import annotations

import subprocess
import sys

from helpers import env1

import lmforge


def test_import_lmforge_is_light():
    code = "import sys, lmforge; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env1(), check=True).stdout
    assert out.strip() == "False"


def test_every_verb_is_a_function():
    for name in lmforge.__all__:
        if name not in ("UserError", "__version__"):
            assert callable(getattr(lmforge, name)), name
    from lmforge.recipes.pretrain import pretrain
    from lmforge.tools.evaluate import evaluate_run

    assert lmforge.pretrain is pretrain and lmforge.evaluate is evaluate_run
