"""One sweep, one driver: who owns a sweep, whether it is alive, and the fence on its writes.

A driver takes a sweep when it creates it (``launch``) or resumes it, recording a random run id,
its host and pid in the sweep's row. It is *alive* while the sweep is RUNNING and its row was
written within ``stale_after_s`` (every driver write, and a heartbeat when idle, sets
``updated_at``), unless it ran on this very host and its process is gone (a killed driver can be
resumed at once; a stopped one still exists). Taking a sweep whose driver is alive is refused;
taking a STALE one (its driver was killed, stopped or lost its machine) is allowed, and from then
on the old driver is *fenced*: each of its writes checks, in the same transaction and under the
row's lock, that the row still names its run id, and otherwise writes nothing and raises
:class:`FencedError`.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from storage._errors import DriverAliveError, FencedError
from storage._models import SweepModel, SweepStatus


@dataclass(frozen=True)
class Driver:
    """The process that runs a sweep: a random run id, and where it runs (for messages)."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


def _age_s(row: SweepModel, now: datetime) -> float:
    updated = row.updated_at
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=timezone.utc)
    return (now - updated).total_seconds()


def _who(row: SweepModel) -> str:
    if row.driver_pid is None:
        return "a driver of an earlier sweep version"
    return f"pid {row.driver_pid} on {row.driver_host}"


def _gone_here(row: SweepModel) -> bool:
    """Whether the driver ran on this host and its process no longer exists: dead for sure,
    without waiting for its heartbeat to go stale (a stopped process still exists)."""
    if row.driver_host != socket.gethostname() or not row.driver_pid:
        return False
    try:
        os.kill(row.driver_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process holds the pid: it exists
        return False
    return False


def driver_alive(
    status: str, updated_at: datetime, driver_gone: bool, stale_after_s: float, now: datetime
) -> bool:
    """The one rule for a sweep's driver being alive: the sweep is RUNNING, its row was written
    within ``stale_after_s``, and its process is not known to be gone (``driver_gone``: it ran
    on this host and no longer exists). `sweep status` shows a RUNNING sweep whose driver is not
    alive as STALE; `sweep resume` and `launch --replace` may take it over."""
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=timezone.utc)
    age = (now - updated_at).total_seconds()
    return status == "RUNNING" and age <= stale_after_s and not driver_gone


def gone_here(row: SweepModel) -> bool:
    """Whether a RUNNING sweep's driver ran on this host and its process no longer exists."""
    return row.status == SweepStatus.RUNNING and _gone_here(row)


def refuse_if_alive(row: SweepModel, stale_after_s: float, now: datetime, action: str) -> None:
    """Raise :class:`DriverAliveError` when ``row``'s driver is alive; ``action`` is what was
    asked (``replace``, ``resume``)."""
    age = _age_s(row, now)
    if not driver_alive(row.status.name, row.updated_at, gone_here(row), stale_after_s, now):
        return
    raise DriverAliveError(
        f"cannot {action} sweep {row.name!r}: its driver is alive ({_who(row)}, last wrote "
        f"{max(age, 0.0):.0f} s ago); let it finish or stop it, or resume once it has not "
        f"written for {stale_after_s:.0f} s"
    )


def take(row: SweepModel, driver: Driver) -> None:
    row.driver_id, row.driver_host, row.driver_pid = driver.run_id, driver.host, driver.pid


def check_owner(row: SweepModel | None, name: str, driver: Driver) -> SweepModel:
    """``row``, if it is still ``driver``'s; else (None: gone) raise :class:`FencedError`."""
    if row is not None and row.driver_id == driver.run_id:
        return row
    taken = "was deleted" if row is None else f"was taken over by another driver ({_who(row)})"
    raise FencedError(
        f"sweep {name!r} {taken}; this driver stopped without writing (the trials it had "
        "running belong to the sweep's new driver)"
    )
