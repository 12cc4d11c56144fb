"""Device faults are typed where a library reports them, and only they take a device out of rotation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from whisperlivekit.asr.types import TranscribeRequest
from whisperlivekit.errors import DecodeError, DeviceError, device_faults
from whisperlivekit.runtime.device_worker import DeviceWorker


@pytest.mark.parametrize("message", [
    "CUDA failed with error out of memory",  # CTranslate2
    "cuBLAS failed with status CUBLAS_STATUS_EXECUTION_FAILED",  # CTranslate2
    "CUDA error: device-side assert triggered",  # torch
])
def test_a_library_device_failure_becomes_a_device_error_naming_the_device(message):
    with pytest.raises(DeviceError, match=f"inference failed on cuda:1: {message}") as caught:
        with device_faults("cuda:1", "inference"):
            raise RuntimeError(message)
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize("bug", [RuntimeError("shape mismatch in the decoder"), ValueError("CUDA"), KeyError("cuda"),
                                 DecodeError("Could not decode audio: CUDA")])
def test_any_other_failure_passes_through_unchanged(bug):
    with pytest.raises(type(bug)) as caught:
        with device_faults("cuda:0", "inference"):
            raise bug
    assert caught.value is bug


class _FailingBackend:
    name = "failing"

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def transcribe_batch(self, requests):
        raise self.error

    def close(self) -> None:
        pass


def _transcribe_with(error: BaseException):
    """(what the connection got, the device failures reported) for one request on a backend that fails."""
    reported = []

    class Health:  # the DeviceHealth interface the pool gives each worker
        def report_fault(self, device: str, reason: str) -> None:
            reported.append(device)

    worker = DeviceWorker("cuda:0", _FailingBackend(error), health=Health())

    async def one() -> BaseException:
        try:
            await worker.transcribe(TranscribeRequest(np.zeros(1600, np.float32)))
        except BaseException as exc:  # noqa: BLE001
            return exc
        raise AssertionError("the failing backend returned a result")

    try:
        return asyncio.run(one()), reported
    finally:
        worker.close()


def test_a_device_error_from_the_backend_takes_the_device_out_of_rotation():
    got, reported = _transcribe_with(DeviceError("inference failed on cuda:0: CUDA failed with error out of memory"))
    assert isinstance(got, DeviceError) and reported == ["cuda:0"]


def test_a_plain_bug_in_the_backend_leaves_the_device_in_rotation():
    got, reported = _transcribe_with(RuntimeError("CUDA-unrelated bug: index out of range"))
    assert isinstance(got, DeviceError) and "index out of range" in str(got)  # the connection still ends 1011
    assert reported == []
