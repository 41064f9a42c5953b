"""`sweep dashboard` as a user starts it: it prints where it answers, serves until Ctrl-C (exit
0), asks for a token off loopback (printed once), and says in one line when the port is taken."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage import Store
from tests.dashboard.dashboard_helpers import fetch, write_sweep
from tests.sweep.cli_runner import interruptible

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    with Store(url) as store:
        write_sweep(store, "s", 8)
    return url


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweep", "dashboard", *args]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SWEEP_DASHBOARD_TOKEN", None)
    return env


@contextmanager
def _dashboard(*args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """The command running, and the lines it printed up to its address."""
    process = subprocess.Popen(
        _command(*args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=_env(), preexec_fn=interruptible,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("dashboard of"):
                if "?token=" in line:
                    lines.append(process.stderr.readline().rstrip("\n"))
                break
        assert lines and lines[-1], f"no address printed: {lines}"
        yield process, lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_it_serves_on_loopback_until_ctrl_c(tmp_path: Path) -> None:
    url = _store(tmp_path)
    with _dashboard("--port", "0", "--storage", url) as (process, lines):
        address = re.fullmatch(
            rf"dashboard of {re.escape(url)}: (http://127\.0\.0\.1:\d+/)", lines[0]
        )
        assert address is not None, lines
        assert fetch(address.group(1) + "api/sweeps")[0] == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()


def test_off_loopback_it_prints_a_token_once_and_asks_for_it(tmp_path: Path) -> None:
    url = _store(tmp_path)
    with _dashboard("--host", "0.0.0.0", "--port", "0", "--storage", url) as (_, lines):
        host = re.escape(socket.gethostname())
        found = re.fullmatch(rf"dashboard of .*: http://{host}:(\d+)/\?token=(\S+)", lines[0])
        assert found is not None, lines
        assert lines[1] == "the token above is shown once; anyone who has it can read this store"
        port, token = found.groups()
        assert len(token) >= 30
        api = f"http://127.0.0.1:{port}/api/sweeps"
        assert fetch(api)[0] == 401
        assert fetch(api, {"authorization": f"Bearer {token}"})[0] == 200


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    url = _store(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            _command("--port", str(port), "--storage", url),
            capture_output=True, text=True, env=_env(), timeout=120,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: --port: {port} is in use; pick another, or 0 for any"]
