"""Run directories, the unit of exchange between verbs.

``runs.files`` reads and writes a run's files (safetensors weights, the training state, metrics.jsonl,
atomically) and knows no model or task: it is foundation, below the models. ``runs.loader`` opens and
checks run dirs and rebuilds a run's model through its task: it sits above the training loop.
"""
