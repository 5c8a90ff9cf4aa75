"""Errors a user can fix: each message says what is wrong, which key or file, and what to do.

Every stage's entry point (`cli.stage_entry`) prints these as one line and exits
non-zero instead of a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or environment, explained in the message. Exit code 1."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config key is unknown, of the wrong type or out of range. Exit code 2."""

    exit_code = 2


class DataError(UserError, RuntimeError):
    """The dataset, a manifest or an image cannot be used."""


class ModelError(UserError, RuntimeError):
    """A model or its weights cannot be built or loaded."""


class TrackingError(UserError, RuntimeError):
    """The tracking server or store cannot be used."""
