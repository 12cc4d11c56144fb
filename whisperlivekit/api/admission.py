"""A connection's engine on its slot, shared by every streaming protocol in `api/`.

A device fault while the engine is built (CUDA error, out of memory: `DeviceError`) takes that GPU
out of rotation and the connection is tried once more on another GPU; any other failure is a bug
and is raised as it is (the GPU stays in rotation, the client gets 1011).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

from whisperlivekit.api.errors import is_device_fault
from whisperlivekit.audio.decode import InputFormat
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.services import Services

logger = logging.getLogger(__name__)


async def build_on_slot(
    services: Services, slot: Slot, language: Optional[str], input_format: Optional[InputFormat] = None,
) -> Tuple[Slot, TranscriptionEngine]:
    """(the slot the engine runs on, the running engine); the slot may differ after a device fault."""
    manager = services.manager
    options = {} if input_format is None else {"input_format": input_format}
    for attempt in (1, 2):
        try:
            return slot, await services.engine_factory(services, slot, language, **options)
        except Exception as exc:
            manager.release(slot)
            if not is_device_fault(exc) or slot.gpu_id is None or attempt == 2:
                raise
            manager.mark_unhealthy(slot.gpu_id, f"engine build failed: {exc}")
            logger.warning("engine build failed on %s (%s); retrying on another GPU", slot.label, exc,
                           extra={"connection_id": slot.connection_id, "device": slot.label})
            slot = manager.acquire(slot.connection_id, exclude=(slot.gpu_id,))
    raise AssertionError("unreachable")
