"""The error types a user's input raises (the command lines print them as ``error: ...``, exit code 2);
anything else is a bug and keeps its traceback."""
from __future__ import annotations

__all__ = ["CheckpointError", "UnknownNameError"]


class UnknownNameError(KeyError):
    """A name that no registry holds (model preset, weights, rain preset). A ``KeyError``, printed without
    the quotes ``KeyError`` adds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, does not fit the model, or (shipped weights) fails its checksum."""
