"""The training loop (``loop.fit``), optimizers and LR schedules (``optim``), torchrun / DDP helpers
(``distributed``) and stop signals (``stopping``). Knows no model family and no task: it trains any module
with the loss, batches and evaluator it is handed, and saves through ``runs.files``."""
