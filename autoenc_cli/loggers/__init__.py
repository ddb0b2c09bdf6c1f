"""Experiment trackers (the ``logger`` config group): TensorBoard, MLflow, Weights & Biases.

The run folder's own files (history.csv, metrics.json, figures/) are written whatever is chosen; a logger
also sends the run to a tool researchers compare runs in. ``logger=[tensorboard,mlflow]`` selects several.
"""

from autoenc_cli.loggers.base import Logger, LoggerConfig
from autoenc_cli.loggers.run_loggers import RunLoggers, finish_sweep

__all__ = ["Logger", "LoggerConfig", "RunLoggers", "finish_sweep"]
