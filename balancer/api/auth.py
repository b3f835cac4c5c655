"""Bearer tokens with roles: ``agent`` only posts host samples (``balancer agent``), ``viewer``
reads, ``operator`` migrates and runs maintenance, ``admin`` also changes automation and pauses.
Tokens come from the settings (each from an environment variable or a file); with
``api.anonymous_viewer`` a request without a token is a viewer (a read-only dashboard)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntEnum

from balancer.settings import Api


class Role(IntEnum):
    AGENT = 0  # below viewer: reads nothing, may only post its host's samples
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    user: str
    role: Role


ANONYMOUS = Principal(user="anonymous", role=Role.VIEWER)


class TokenBook:
    """Maps a presented token to its user and role (constant-time comparison)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def lookup(self, token: str) -> Principal | None:
        found: Principal | None = None
        for t in self.api.tokens:
            secret = t.secret()
            if secret and hmac.compare_digest(secret.encode(), token.encode()):
                found = Principal(user=t.user, role=Role[t.role.upper()])
        return found

    @property
    def anonymous_viewer(self) -> bool:
        return self.api.anonymous_viewer
