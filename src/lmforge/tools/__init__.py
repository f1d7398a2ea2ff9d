"""Tools that take finished run dirs: ``evaluate`` / ``predict``, ``generate``, ``export``, ``compress``
(int8, pruning, distillation, report) and ``serve`` (the HTTP API)."""
