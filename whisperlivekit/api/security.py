"""Who may use the server: the API token, WebSocket Origin checks and CORS.

Tokens are compared in constant time and never logged; uvicorn's access log
(which would print `?token=...`) is kept at WARNING by `logging_setup`.
"""

from __future__ import annotations

import hmac
from typing import Optional

from fastapi import FastAPI, HTTPException, Request
from starlette.datastructures import Headers, QueryParams
from starlette.middleware.cors import CORSMiddleware

from whisperlivekit.api.errors import ending_for
from whisperlivekit.config import Settings
from whisperlivekit.errors import Unauthorized
from whisperlivekit.services import Services


def presented_token(headers: Headers, query: QueryParams) -> Optional[str]:
    """The token from `Authorization: Bearer …`, else from the `token` query parameter."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
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
    """Dependency for /gpu-status, /dashboard and /metrics: HTTP 401 under `--protect-status`."""
    services: Services = request.app.state.services
    if services.settings.protect_status and not token_ok(services.settings, request.headers, request.query_params):
        refusal = Unauthorized("Unauthorized")
        raise HTTPException(status_code=ending_for(refusal).http_status, detail=str(refusal), headers={"WWW-Authenticate": "Bearer"})


def add_cors(app: FastAPI, settings: Settings) -> None:
    origins = list(settings.allowed_origins) if settings.allowed_origins is not None else ["*"]
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET"], allow_headers=["Authorization"])
