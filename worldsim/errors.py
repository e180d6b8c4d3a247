"""Errors a user can cause. Each message says what was wrong and what to do."""


class WorldsimError(Exception):
    """Base class: the CLI prints these as one clean line instead of a traceback."""


class DatasetError(WorldsimError, ValueError):
    """A recorded-play dataset or episode file is missing, corrupt or mismatched."""


class CheckpointError(WorldsimError, ValueError):
    """A checkpoint is missing, corrupt, of another version or for another env."""


class ConfigError(WorldsimError, ValueError):
    """An option or a combination of options that cannot work."""
