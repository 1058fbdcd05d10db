"""What ``factlearn serve`` is told: its settings, the bearer token and the loopback rule.

Nothing here imports FastAPI, so the CLI can check a user's options (and say that the ``serve``
extra is missing) before the web stack is loaded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class ServeSettings:
    """How the server answers. Every default is the CLI's.

    Attributes:
        top_k: facts per image (or per fact query) when a request does not say.
        max_top_k: the most a request may ask for.
        device: where the model runs (``auto``, ``cpu``, ``cuda``).
        index_kind: the fact index, ``flat`` (exact, as ``factlearn query``), ``hnsw`` or ``ivf``.
        all_facts: search every fact of the run, not only the tasks trained so far.
        token: the bearer token every API request must send (None: no token, loopback only).
        batch_wait_ms: how long the first request of a micro-batch waits for others to join it
            (only while other requests are still being read; 0: never wait).
        max_batch: the most images embedded in one forward pass (1: no micro-batching).
        poll_s: seconds between looks at the run directory for a newly completed task.
        max_upload_bytes: the largest request body (all of its images together).
        max_images: the most images in one request.
    """

    top_k: int = 5
    max_top_k: int = 100
    device: str = "auto"
    index_kind: str = "flat"
    all_facts: bool = False
    token: str | None = None
    batch_wait_ms: float = 5.0
    max_batch: int = 64
    poll_s: float = 2.0
    max_upload_bytes: int = 20 * 2**20
    max_images: int = 32


def read_token(path: str | Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped); a missing, unreadable or
    empty file is a UserError naming it."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"--token-file {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--token-file {path}: cannot read it ({exc})") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--token-file {path}: expected one token (no spaces), found "
                        + ("nothing" if not token else "whitespace inside"))
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address (or ``localhost``) only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_host(host: str, token: str | None) -> None:
    """Anything but loopback is answered only with a token: a UserError otherwise."""
    if token is None and not is_loopback(host):
        raise UserError(f"--host {host} is reachable from other machines: give --token-file FILE so that "
                        "only clients sending its bearer token are answered")
