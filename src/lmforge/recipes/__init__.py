"""Recipes: ``pretrain`` and ``finetune`` wire data, a task, a model and ``fit()`` into a run dir."""
