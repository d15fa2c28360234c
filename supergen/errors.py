"""Errors a user can act on.

Everything raised as :class:`SuperGenError` is the user's to fix (a bad size, an unknown config key, a
missing image). The CLI prints these as one message with no traceback; anything else is our bug and
keeps its traceback.
"""


class SuperGenError(ValueError):
    """A problem with the user's input, described so that they can fix it."""


class ConfigError(SuperGenError):
    """An unknown config key, a wrong type or a value outside the valid choices."""


def install_hint(extra: str, package_dir: str | None = None) -> str:
    """The command that installs the optional ``extra`` here: an editable install of the source
    checkout supergen runs from, else the published package."""
    from pathlib import Path

    package = Path(package_dir or __file__).resolve()
    package = package if package.is_dir() else package.parent
    root = package.parent
    if (root / "pyproject.toml").is_file():  # a source checkout: the package sits beside pyproject.toml
        return f'pip install -e "{root}[{extra}]"'
    return f'pip install "supergen[{extra}]"'
