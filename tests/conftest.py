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


# Shared inputs. They are read-only: a test that needs to change a file makes its own with helpers.make_*.
@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The generated ~25 KB mixed English / Chinese corpus (helpers.make_corpus, 400 lines)."""
    from helpers import make_corpus

    return make_corpus(tmp_path_factory.mktemp("shared") / "corpus.txt")


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    """The generated two-class .tsv (helpers.make_labelled, 240 rows, positive iff 'bread' or 'sing')."""
    from helpers import make_labelled

    return make_labelled(tmp_path_factory.mktemp("shared") / "train.tsv")
