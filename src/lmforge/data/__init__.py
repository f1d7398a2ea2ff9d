"""Data: the registry of real data sets (``registry``: fetch from PyPI, verify, cache), text cleaning and
splits (``corpora``), labelled files (``labelled``), token shards (``shards``) and the batch sources
``fit()`` draws from (``batches``). Knows no model, task or training loop."""
