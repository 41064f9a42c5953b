"""User-facing exceptions raised by :mod:`storage`.

Every message is a single line that says what went wrong and how to fix it, so the CLI can print
``str(exc)`` as is. Messages never contain database passwords.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by the sweep store; the message is one user-facing line."""


class SweepNotFoundError(StorageError):
    """Raised when a sweep name does not exist in the store."""

    def __init__(self, sweep: str, url: str | None = None) -> None:
        self.sweep = sweep
        where = f" in {url}" if url else ""
        super().__init__(
            f"sweep {sweep!r} not found{where}; run `sweep status` to list the existing sweeps"
        )


class DuplicateSweepError(StorageError):
    """Raised when creating a sweep whose name is already taken."""

    def __init__(self, sweep: str, url: str | None = None) -> None:
        self.sweep = sweep
        where = f" in {url}" if url else ""
        super().__init__(
            f"sweep {sweep!r} already exists{where}; choose another name with --name, "
            "or resume the existing sweep"
        )


class WhereError(StorageError):
    """Raised for a ``--where`` expression that cannot be parsed or refers to unknown columns."""


class StorageFullError(StorageError):
    """Raised when the database cannot grow: the disk is full or a file size limit is reached.

    Not the user's mistake: the command line exits 1. The failed transaction is rolled back, so
    everything written before stays intact.
    """


class DriverAliveError(StorageError):
    """Raised when a sweep to replace or resume still has a live driver (a fresh heartbeat)."""


class FencedError(StorageError):
    """Raised on a write of a driver whose sweep was taken over (resumed or replaced by another
    driver): the write is not made, and the driver must stop. Not a user's mistake: exit 1."""
