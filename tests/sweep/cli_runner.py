"""Running the ``sweep`` command line inside the test process."""

from __future__ import annotations

import signal
import sys

import pytest

from sweep import cli


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run ``sweep ARGS`` through ``main()``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sweep", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def interruptible() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT, as Ctrl-C would: a shell
    starts background jobs (a test run among them) with SIGINT ignored, which children inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
