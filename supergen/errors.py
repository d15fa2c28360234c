"""Errors a user can act on.

Everything raised as :class:`SuperGenError` is the user's to fix (a bad size, an unknown config key, a
missing image). The CLI prints these as one message with no traceback; anything else is our bug and
keeps its traceback.
"""


class SuperGenError(ValueError):
    """A problem with the user's input, described so that they can fix it."""


class ConfigError(SuperGenError):
    """An unknown config key, a wrong type or a value outside the valid choices."""
