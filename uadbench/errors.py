"""User-facing errors: each carries one line that says what went wrong and what to do.

The CLI prints ``str(err)`` on one line and exits with status 2; anything that is not a
:class:`UadbenchError` is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib


class UadbenchError(Exception):
    """An error caused by input or environment, with a one-line actionable message."""


class UnknownNameError(UadbenchError, KeyError):
    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        lower = {c.lower(): c for c in choices}
        close = [
            lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.5)
        ]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = ", ".join(choices) if choices else "none"
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Available: {avail} (see `uadbench ls {kind}s`)."
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ConfigError(UadbenchError):
    """A bad ``key=value`` option or config file."""


class MissingCheckpointError(UadbenchError):
    """A victim's weights were not found in any of the places searched."""

    def __init__(self, name: str, searched: list[str], how: str):
        self.name, self.searched = name, searched
        where = "; ".join(searched) if searched else "nowhere"
        super().__init__(f"no checkpoint for victim {name!r} (looked in: {where}). {how}")


class DataError(UadbenchError):
    """An unreadable image, a broken annotation or an empty dataset; names the file."""


class RunDirError(UadbenchError):
    """A run directory that cannot be used for this run (other config, locked, …)."""
