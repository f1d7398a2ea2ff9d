import os

import pytest
import torch

# Tiny models run faster on one thread on this machine, and one thread makes runs bit-reproducible.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _lmforge_cache(request, tmp_path_factory, monkeypatch):
    """Unit tests never touch the user's cache: prepared data goes to a per-session temp dir.

    Tests marked ``data`` keep the real cache (LMFORGE_CACHE or ~/.cache/lmforge) so that a re-run is fast.
    """
    if request.node.get_closest_marker("data") is None:
        monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path_factory.getbasetemp() / "lmforge-cache"))
