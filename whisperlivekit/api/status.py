"""`/health`, `/ready`, `/gpu-status` (and its history), `/metrics` (the last three behind the token under `--protect-status`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from whisperlivekit.api.security import require_status_token
from whisperlivekit.gpu import report

from whisperlivekit.services import Services, get_services

router = APIRouter()


@router.get("/health")
def health(services: Services = Depends(get_services)) -> dict:
    return {"status": "ok", "model": services.settings.model, "backend": services.settings.backend,
            "active_connections": services.manager.held()}


@router.get("/ready")
def ready(services: Services = Depends(get_services)) -> JSONResponse:
    if services.draining:
        return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
    if not services.manager.has_free_slot():  # the same rule `acquire` applies
        return JSONResponse({"ready": False, "reason": "no free slot"}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("/gpu-status", dependencies=[Depends(require_status_token)])
def gpu_status(services: Services = Depends(get_services)) -> dict:
    snapshot = report.gpu_status(services.manager.view())
    snapshot["devices"] = {
        device: {"realtime_load": round(worker.realtime_load(), 3), "queue_depth": worker.queue_depth(),
                 "batches": worker.batches, "requests": worker.requests, "scheduler": worker.scheduler_status()}
        for device, worker in services.pool.workers().items()
    }
    return snapshot


@router.get("/gpu-status/history", dependencies=[Depends(require_status_token)])
def gpu_status_history(request: Request, since: float = Query(0.0, description="only samples taken after this time (s)")) -> dict:
    """The dashboard's charts: samples every 2 s over the last 15 minutes (whisperlivekit/history.py)."""
    history = request.app.state.history
    return {"interval_s": history.interval_s, "window_s": history.window_s,
            "started_at": request.app.state.services.started_at, "samples": history.samples(since)}


@router.get("/metrics", dependencies=[Depends(require_status_token)])
def metrics(services: Services = Depends(get_services)) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
