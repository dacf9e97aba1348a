"""A tracking server that may stop answering: its health check, and calls retried within a time budget.

MLflow's own HTTP retries (7, with exponential back-off, 120 s per request: minutes against a dead server)
give way to :func:`call_with_deadline`: one try per request, tries repeated with back-off until
``tracking.timeout_s`` is spent, each request given at most what is left of it.
"""

from __future__ import annotations

import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

T = TypeVar("T")
_TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
"""MLflow error codes of a server that did not answer (MLflow reports a refused connection as the first)."""


def server_reachable(uri: str, timeout: float = 5.0) -> bool:
    """Whether an ``http(s)://`` tracking server answers its health check."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Degraded(Exception):
    """The tracking server did not answer within ``tracking.timeout_s``: log to the spool from now on."""


def call_with_deadline(request: Callable[[], T], timeout_s: float, *, retry: bool = True) -> T:
    """``request()``, retried with back-off while the server does not answer, for at most ``timeout_s``.

    Args:
        request: One call to the tracking store.
        timeout_s: The budget, from the start of the call.
        retry: False for a local store, whose errors are never "no answer".

    Raises:
        Degraded: the server did not answer within ``timeout_s``.
        Exception: anything else the call raises (a refused request is not retried).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        if retry:  # MLflow reads it per request: no single request outlasts the budget
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(deadline - time.monotonic())))
        try:
            return request()
        except Exception as exc:
            if not (retry and _unanswered(exc)):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise Degraded(str(exc)) from exc
            log.debug("tracking server did not answer (%s); retrying", exc)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 4.0)


def bound_http_retries(timeout_s: float) -> None:
    """Turn MLflow's own HTTP retries off and cap a request at ``timeout_s`` (module doc)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))


def _unanswered(exc: Exception) -> bool:
    """Whether ``exc`` means the server did not answer (as opposed to refusing a bad request)."""
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return isinstance(exc, OSError | ConnectionError) or type(exc).__module__.startswith(
        ("requests", "urllib3")
    )
