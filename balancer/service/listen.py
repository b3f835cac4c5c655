"""The API's listening socket, shared by the single-instance and the HA serve paths."""

from __future__ import annotations

import socket

from balancer.errors import ServiceError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (inheritable, so uvicorn can take it over)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(f"api.listen: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
