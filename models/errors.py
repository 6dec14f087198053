"""The project's error for bad input, shared by the model side and the engine."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: a flag, a file, a model config, a dataset, a checkpoint or a hyperparameter.

    The entry points print its message as one line and exit with status 2 (``engine.cli.run_command``); any
    other exception is a bug and keeps its traceback. Subclasses name the kind of input (``ConfigError``,
    ``DatasetError``, ``CheckpointError``, ``SourceError``).
    """


class MissingDependencyError(ImportError):
    """An optional package (onnx, onnxruntime, openvino, nncf, tensorboard) that the requested action needs is not
    installed; the message says how to install it."""
