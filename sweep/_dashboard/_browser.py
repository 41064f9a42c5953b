"""Headless Chromium for the dashboard's screenshots, benchmark and browser tests: one rule for
finding the binary (the one ``scripts/install_chromium.sh`` checks) and the flags that keep it
off the network. Playwright (a development dependency) is imported by the caller."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

# Headless, and nothing that reaches out of this machine (updates, sync, QUIC probes): on a
# closed network Chromium's own connections are refused, many at a time.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class NoChromiumError(FileNotFoundError):
    """No Chromium to drive; the message says how to get one."""


def find_chromium(given: str | None = None) -> str:
    """``given`` (a path or a command), else ``$SWEEP_CHROMIUM``, ``chromium`` or
    ``chromium-browser`` on the PATH."""
    searched = [os.environ.get("SWEEP_CHROMIUM"), "chromium", "chromium-browser"]
    candidates = [given] if given else searched
    for candidate in candidates:
        found = candidate and shutil.which(candidate)
        if found:
            return found
    named = f"{given!r} is not a Chromium binary" if given else "no Chromium found"
    raise NoChromiumError(
        f"{named}: install Debian's (apt-get install chromium), or set SWEEP_CHROMIUM to a "
        "Chromium or Chrome binary"
    )


def launch_chromium(playwright: Playwright, executable: str | None = None) -> Browser:
    """Headless Chromium (see :func:`find_chromium`) with :data:`CHROMIUM_ARGS`."""
    return playwright.chromium.launch(
        executable_path=find_chromium(executable), args=list(CHROMIUM_ARGS)
    )
