"""Errors of the service's operations, mapped to HTTP statuses by the API.

They extend :class:`balancer.errors.InputError` (exit code 2 in the CLI): all of them are
answers to a request that cannot be carried out as asked.
"""

from __future__ import annotations

from balancer.errors import InputError


class NotFoundError(InputError):
    """The named VM, host, recommendation, plan, migration or task does not exist (404)."""


class ConflictError(InputError):
    """The request is valid but the state of the cluster or service refuses it (409)."""


class UnavailableError(InputError):
    """The service is not ready for this yet (no snapshot or no policy) or is stopping (503)."""
