"""Every error the toolkit raises on purpose, in one place.

Each carries a one-line message meant for the user; the CLI prints it and exits
non-zero. Messages name the valid choices where there are any.
"""

from __future__ import annotations


class RsicrcError(Exception):
    """Base of all expected, user-facing failures."""


class ConfigError(RsicrcError):
    """A model or training configuration is unknown, malformed or inconsistent."""


class DataError(RsicrcError):
    """A dataset folder, annotation file or pairs list is missing or malformed."""


class ImageError(DataError):
    """An image cannot be read, is empty, or does not fit its partner."""


class VocabularyError(RsicrcError):
    """A vocabulary file is malformed or lacks the special tokens."""


class CheckpointError(RsicrcError):
    """A checkpoint folder is missing, incomplete or does not match its config."""


class ModelFolderError(RsicrcError):
    """An exported model folder is missing, incomplete or has been tampered with."""


class ContractError(ModelFolderError):
    """A graph does not match the graph contract (names, dtypes or shapes)."""


class ExportError(RsicrcError):
    """Export failed, or an exported graph disagrees with PyTorch."""


class DeviceError(RsicrcError):
    """The requested device or backend is not available on this machine."""


class DependencyError(RsicrcError):
    """An optional dependency needed for this feature is not installed."""


class IndexFolderError(RsicrcError):
    """A retrieval index folder is missing, damaged, or was made with another model."""


class ClusterError(RsicrcError):
    """A Ray cluster cannot be reached or started, lacks the resources asked for, or lost the work."""


class ServiceBusyError(RsicrcError):
    """The service cannot take a request now (queue full, model still loading, shutting down)."""


class AccessError(RsicrcError):
    """A request names a file outside the folder the service was allowed to read."""


class RequestTooLargeError(RsicrcError):
    """A request body is larger than the service accepts."""
