"""The base of every error a user can act on.

Stages catch ``SoupExpError`` at the top and print its message alone (no traceback);
anything else is a bug and keeps its traceback.
"""


class SoupExpError(Exception):
    """A problem the user can fix: a path, a dataset layout, a config value, a checkpoint."""


class ConfigError(SoupExpError, ValueError):
    """An unknown or invalid configuration value."""


class OutputConflictError(SoupExpError):
    """An output directory already holds a different experiment."""
