"""The browser pages: `GET /` (live transcription), `GET /dashboard` (GPU slots), `/static/*` files,
and `GET /close-codes.json`: the close-code table of `api/errors.py`, which the live page reads
to explain a close and to decide whether to reconnect (open like the page itself: a refused
client needs it most).

The pages are plain HTML, CSS and JavaScript modules shipped inside the package
(`whisperlivekit/web/`): no build step, no CDN, so they work offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from whisperlivekit.api.errors import page_table
from whisperlivekit.api.security import require_status_token

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

router = APIRouter()


@router.get("/", include_in_schema=False)
def live_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/dashboard", include_in_schema=False, dependencies=[Depends(require_status_token)])
def dashboard_page() -> FileResponse:
    return FileResponse(WEB_DIR / "dashboard.html", media_type="text/html")


@router.get("/close-codes.json", include_in_schema=False)
def close_codes() -> dict:
    return page_table()


def static_files() -> StaticFiles:
    """Mounted at `/static` by `create_app` (routers cannot carry mounts)."""
    return StaticFiles(directory=WEB_DIR)
