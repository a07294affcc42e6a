"""The one exception hierarchy of recon.

Boundaries (CLI arguments, wire messages, files, weights) raise these with a message that says what failed,
where we looked and the command that fixes it; internals may still `assert` shape invariants.
"""


class ReconError(Exception):
    """Base class of every error recon raises on purpose."""


class ConfigError(ReconError, ValueError):
    """An option or configuration value is invalid; the message names the field and the value."""


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


class DeviceNotConnectedError(ReconError, ConnectionError):
    """A camera or node was used before it was connected."""


class MissingDependencyError(ReconError, ImportError):
    """An optional package is needed; the message gives the pip extra that installs it."""
