"""Run an ASGI app on uvicorn in a background thread, bound to 127.0.0.1 on a free port.

The flight service and the browser's web server are real HTTP servers so that tools talk to them
exactly as they would to a remote service (httpx, status codes, redirects). They only ever listen
on the loopback interface, and the port is chosen by the OS, so parallel test runs never clash.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from typing import Any

import httpx
import uvicorn

from tooltune.registry import ToolError


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def http_client(timeout: float) -> httpx.Client:
    """An httpx client for the tools: no redirects followed (callers check every hop against an
    allow-list), no proxy settings from the environment, and a shared TLS context, since
    building one per client costs ~40 ms and every episode builds its own tools. Connections
    are not kept alive: tool sets are dropped without being closed, and must not leave sockets
    open behind them."""
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        verify=_ssl_context(),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed response, refused (a ToolError) once it passes `limit` bytes, so
    that a huge or endless page cannot fill the memory of the process the tools run in."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise ToolError(f"{what} larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class LocalServer:
    """A uvicorn server for `app` running in a daemon thread; use as a context manager.

    `start()` returns the base URL (`http://127.0.0.1:PORT`) once the server accepts requests;
    `stop()` shuts it down and joins the thread. Both are idempotent.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", startup_timeout: float = 10.0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("LocalServer only binds to the loopback interface")
        self.app = app
        self.host = host
        self.startup_timeout = startup_timeout
        self.base_url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    def start(self) -> str:
        if self.base_url is not None:
            return self.base_url
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server, self._sock = server, sock
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"tooltune-server-{port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if self._error is not None or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start in time")
            time.sleep(0.01)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to start(); a thread must not die silently
            self._error = exc

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None
        self.base_url = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
