"""Hyperparameter search on validation (`llmrec tune`): search spaces and Optuna study helpers."""
