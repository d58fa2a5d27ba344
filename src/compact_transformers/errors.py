"""The library's own errors: mistakes in what a user asked for, each reported by ``cct`` as one line.

Anything else raised inside the library is a bug and keeps its traceback. Every class also derives from the
built-in exception that the same mistake raised before (``ValueError``), so ``except ValueError`` still works.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: a setting, a name, a file. ``cct`` prints it as one line, exit 2."""


class ConfigError(UserError, ValueError):
    """A setting that is invalid or unknown: an option, a YAML key, a model name, a device."""


class DatasetError(UserError, ValueError):
    """A dataset is missing, incomplete or corrupt (the message names the file and where it was expected)."""


class CheckpointError(UserError, ValueError):
    """A weight file that cannot be used: missing, corrupt, unsafe, or not matching the model."""


class DivergedError(UserError, FloatingPointError):
    """Training produced a non-finite loss (usually a learning rate too high for the model)."""


class ExportError(UserError, RuntimeError):
    """An exported model does not compute what the PyTorch model computes; nothing was written."""


class HubError(UserError):
    """The Hugging Face Hub could not be reached or refused an upload (network, login, permissions)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (like Ctrl-C for SIGINT) where no graceful stop is possible: set-up, final evaluation, eval/predict.

    ``cct`` exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells do.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
