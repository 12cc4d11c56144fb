"""whisperlivekit: a real-time, multi-GPU speech transcription server.

The public entry points are `Settings` (all configuration) and `create_app`
(a FastAPI application built from it); `whisperlivekit-server` wires the two
to uvicorn.
"""

from whisperlivekit.config import Settings

__all__ = ["Settings", "create_app"]
__version__ = "0.1.0"


def create_app(settings: Settings, **kwargs):  # noqa: ANN201 - re-export
    """Lazy re-export so `import whisperlivekit` stays cheap (no FastAPI/torch import)."""
    from whisperlivekit.app import create_app as _create_app

    return _create_app(settings, **kwargs)
