"""The one exception hierarchy of recon (its root and the two errors the kernels raise live in
recon.kernels._base, the bottom layer).

Boundaries (CLI arguments, wire messages, files, weights) raise these with a message that says what failed,
where we looked and the command that fixes it; internals may still `assert` shape invariants.
"""

from recon.kernels._base import ConfigError, MissingDependencyError, ReconError

__all__ = ["ReconError", "ConfigError", "MissingDependencyError", "WeightsNotFoundError", "CheckpointMismatchError",
           "StateError", "ProtocolError", "IncompatibleVersionError", "SequenceError", "CorruptFrameError",
           "BackendError"]

class WeightsNotFoundError(ReconError, FileNotFoundError):
    """Model weights are not installed; the message names the file, the places searched and the fix."""

class CheckpointMismatchError(ReconError, RuntimeError):
    """A checkpoint does not match the model: lists missing and unexpected keys."""

class StateError(ReconError, RuntimeError):
    """A saved session state cannot be restored: other backend, state version or configuration, or a damaged file."""

class ProtocolError(ReconError, ValueError):
    """A wire message is malformed (bad header, sizes, dtype, payload count)."""

class IncompatibleVersionError(ProtocolError):
    """A wire message carries a major version this build cannot read."""

class SequenceError(ReconError):
    """A sequence (folder, video, dataset) cannot be read; the message names the path."""

class CorruptFrameError(SequenceError):
    """One frame of a sequence is missing or cannot be decoded; the message names the file."""

class BackendError(ReconError, RuntimeError):
    """A backend refused an input (for example a resolution change inside a session)."""

