"""Starting ``factlearn serve``: the checks that come before anything listens, then uvicorn."""

from __future__ import annotations

import gc
import importlib.util
import socket
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .settings import ServeSettings, check_host

# The serve extra (pyproject.toml): module names, and what pip calls them.
EXTRA = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def check_extra() -> None:
    """A UserError naming what is missing when the ``serve`` extra is not installed."""
    missing = [pip for module, pip in EXTRA.items()
               if importlib.util.find_spec(module) is None
               and not (module == "python_multipart" and importlib.util.find_spec("multipart") is not None)]
    if missing:
        raise UserError(f"factlearn serve needs {', '.join(missing)}: pip install 'factlearn[serve]'")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: one the system picks); a host that does not
    resolve or a port in use is a UserError naming it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UserError(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # from here on connections queue, before uvicorn's loop accepts them
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}") from None
    return sock


def serve_run(run_dir: str | Path, host: str, port: int, settings: ServeSettings,
              announce: Callable[[str], None] = print) -> None:
    """Serve ``run_dir`` until Ctrl-C (or SIGTERM). Refused with a UserError before anything
    listens: a host other than loopback without a token, a missing ``serve`` extra, a run
    directory with no completed task, an address that cannot be bound. ``announce`` gets one
    line once the first checkpoint is loaded and the socket bound (with the real port)."""
    check_host(host, settings.token)
    check_extra()
    import uvicorn

    from .app import create_app

    app = create_app(run_dir, settings)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announce(f"serving {run_dir} (the checkpoint after {app.state.live.current.task}) on "
             f"http://{shown}:{bound}/ ; Ctrl-C stops")
    # Everything alive now (torch, transformers, the model) lives as long as the server: out of the
    # collector's sight, a full collection no longer walks it and stalls every request at once
    # (docs/serve.md, Throughput).
    gc.freeze()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
