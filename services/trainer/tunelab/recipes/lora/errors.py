"""Typed errors of the LoRA recipe. `__main__` maps them to one stderr line and an exit code."""

from __future__ import annotations


class RecipeError(Exception):
    """Bad input: a config, data file, model directory or argument the user has to change."""

    exit_code = 2


class ConfigError(RecipeError):
    """The YAML config (or a --set override) is invalid."""


class DataError(RecipeError):
    """A data file is missing, empty or has a malformed line."""


class ModelError(RecipeError):
    """MODEL_DIR is not a loadable causal language model, or LoRA can't be applied to it."""


class CheckpointError(RecipeError):
    """The checkpoint asked for does not exist or is incomplete."""


class TrainingFailed(RecipeError):
    """Training started but could not go on (for example the loss became NaN or inf)."""

    exit_code = 3


class StopRequested(Exception):
    """SIGTERM arrived (cancel, Kueue preemption); a checkpoint has been written."""

    exit_code = 143
