"""Serving the dashboard: the listening socket, the token rule, uvicorn."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from storage import Store
from sweep._config import ConfigError
from sweep._dashboard._app import create_app

STARTUP_S = 30.0


class ServeError(ConfigError):
    """The dashboard cannot listen as asked: one line naming the option and the fix (a
    ConfigError: the command line reports it as every other option's mistake)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Listening:
    """Where the dashboard answers, and the token it asks for (None on loopback by default)."""

    sock: socket.socket
    url: str
    token: str | None
    token_generated: bool


def listen(host: str, port: int, token: str | None) -> Listening:
    """Bind ``host:port`` (0: a free port). Off loopback a token is required: the one given,
    else a new one, shown once."""
    if not 0 <= port <= 65535:
        raise ServeError(f"--port: {port} is not a port; use 1 to 65535 (0: any free port)")
    if token is not None and len(token) < 16:
        raise ServeError("--token: use at least 16 characters (leave it out to get one)")
    generated = token is None and not is_loopback(host)
    if generated:
        token = secrets.token_urlsafe(24)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"--host: {host!r} is not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if port and exc.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise ServeError(f"--port: {port} is in use; pick another, or 0 for any") from None
        raise ServeError(f"--host/--port: cannot listen on {host}:{port} ({exc})") from None
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    # Every address of the machine: the address to open from elsewhere names the machine.
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return Listening(sock, f"http://{shown}:{bound_port}/", token, generated)


def _listening_app(
    store: Store, host: str, port: int, token: str | None
) -> tuple[Listening, Starlette]:
    """The bound socket and the app over ``store`` that guards it as its host asks."""
    listening = listen(host, port, token)
    return listening, create_app(store, token=listening.token, loopback=is_loopback(host))


@contextmanager
def running(
    store: Store, host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> Iterator[Listening]:
    """The dashboard over ``store`` served from a thread of this process while the block runs
    (tests, benchmarks, screenshots); ``port`` 0 takes a free one."""
    listening, app = _listening_app(store, host, port, token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listening.sock]}, name="dashboard", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            listening.sock.close()
            raise ServeError(f"the dashboard did not start within {STARTUP_S:.0f} s")
        time.sleep(0.02)
    try:
        yield listening
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_S)
        listening.sock.close()


def serve(
    store: Store,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    *,
    on_listening: Callable[[Listening], None] | None = None,
) -> None:
    """Serve the dashboard over ``store`` until interrupted (Ctrl-C)."""
    listening, app = _listening_app(store, host, port, token)
    if on_listening is not None:
        on_listening(listening)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[listening.sock])
    finally:
        listening.sock.close()
