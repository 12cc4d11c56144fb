"""Who may use the server: the API token, failed-token throttling, WebSocket Origin checks, CORS, API docs.

Tokens are compared in constant time and never logged (`logging_setup` masks the `token` query
parameter by its decoded name and drops query strings from uvicorn's lines). An address that
presents `--auth-max-failures` wrong tokens within `--auth-failure-window` seconds is refused
without a comparison until its oldest failure leaves the window: guessing runs at that rate.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Optional

from fastapi import FastAPI, HTTPException, Request
from starlette.datastructures import Headers, QueryParams
from starlette.middleware.cors import CORSMiddleware

from whisperlivekit.api.errors import ending_for
from whisperlivekit.config import Settings
from whisperlivekit.errors import AuthThrottled, Unauthorized
from whisperlivekit.services import Services

_MAX_TRACKED_ADDRESSES = 10_000


class AuthThrottle:
    """Failed token checks per client address within a sliding window; thread-safe, bounded memory."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: Dict[str, Deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> Deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def retry_after_s(self, address: str) -> float:
        """0 when `address` may try a token; else seconds until its oldest failure leaves the window."""
        if not self.max_failures:
            return 0.0
        with self._lock:
            now = self._clock()
            failures = self._recent(address, now)
            if len(failures) < self.max_failures:
                return 0.0
            return max(0.0, failures[0] + self.window_s - now)

    def failed(self, address: str) -> None:
        if not self.max_failures:
            return
        with self._lock:
            now = self._clock()
            if len(self._failures) >= _MAX_TRACKED_ADDRESSES:  # forget addresses whose failures expired
                for stale in [a for a, f in self._failures.items() if not f or f[-1] <= now - self.window_s]:
                    del self._failures[stale]
            failures = self._failures.setdefault(address, deque(maxlen=self.max_failures))
            failures.append(now)


def token_refusal(settings: Settings, throttle: AuthThrottle, address: str, headers: Headers, query: QueryParams,
                  wrong_token: str = "Unauthorized",
                  throttled: str = "Too many failed attempts: try again later") -> Optional[Unauthorized]:
    """None when the request may pass; else the typed refusal: `AuthThrottled` while the address has
    failed too often lately (refused without comparing), `Unauthorized` for a wrong or missing token.
    Every route that takes the token asks this, so the check and the throttle are written once."""
    if not settings.api_token:
        return None
    if throttle.retry_after_s(address) > 0:
        return AuthThrottled(throttled)
    if token_ok(settings, headers, query):
        return None
    throttle.failed(address)
    return Unauthorized(wrong_token)


def presented_token(headers: Headers, query: QueryParams) -> Optional[str]:
    """The token from `Authorization: Bearer …` (or `Token …`, what Deepgram's SDK sends), else
    from the `token` query parameter."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return query.get("token")


def token_ok(settings: Settings, headers: Headers, query: QueryParams) -> bool:
    """True when no token is configured, or the presented one matches (constant-time)."""
    if not settings.api_token:
        return True
    presented = presented_token(headers, query)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), settings.api_token.encode())


def origin_ok(settings: Settings, headers: Headers) -> bool:
    """Browsers send `Origin`; non-browser clients may omit it, which is allowed unless a list is set."""
    if settings.allowed_origins is None:
        return True
    origin = headers.get("origin")
    return origin is not None and origin.rstrip("/") in settings.allowed_origins


def require_status_token(request: Request) -> None:
    """Dependency for /gpu-status, /dashboard and /metrics: HTTP 401 under `--protect-status`
    (429 while the address is throttled for wrong tokens)."""
    services: Services = request.app.state.services
    if not services.settings.protect_status:
        return
    address = request.client.host if request.client else "unknown"
    refusal = token_refusal(services.settings, services.auth_throttle, address, request.headers, request.query_params,
                            throttled="Too many failed attempts")
    if isinstance(refusal, AuthThrottled):
        retry_after = services.auth_throttle.retry_after_s(address)
        raise HTTPException(status_code=ending_for(refusal).http_status, detail=str(refusal),
                            headers={"Retry-After": str(max(1, round(retry_after)))})
    if refusal is not None:
        raise HTTPException(status_code=ending_for(refusal).http_status, detail=str(refusal), headers={"WWW-Authenticate": "Bearer"})


def api_docs_urls(settings: Settings) -> dict:
    """FastAPI's /docs, /redoc and /openapi.json: off under `--protect-status` (they describe the
    protected routes, and Swagger's page could not send the token to fetch its schema)."""
    if settings.protect_status:
        return {"docs_url": None, "redoc_url": None, "openapi_url": None}
    return {}


def add_cors(app: FastAPI, settings: Settings) -> None:
    origins = list(settings.allowed_origins) if settings.allowed_origins is not None else ["*"]
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET"], allow_headers=["Authorization"])
