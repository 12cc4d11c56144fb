"""On a real CUDA host: the model and each connection's work live on the slot's cuda:N.

Skipped without CUDA (conftest marks `gpu` tests). Run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import in_process_server, run
from helpers import open_session
from whisperlivekit.app import create_app
from whisperlivekit.config import Settings
from whisperlivekit.gpu.nvml import NvmlProbe

pytestmark = pytest.mark.gpu


def weights_device(backend) -> str:
    """Where the backend's weights really are: our PyTorch Whisper's parameters, or CTranslate2's model."""
    model = backend._model
    if hasattr(model, "parameters"):
        return str(next(model.parameters()).device)
    return f"{model.model.device}:{list(model.model.device_index)[0]}"


@pytest.mark.parametrize("backend", ["torch", "faster-whisper"])
def test_model_and_connection_run_on_the_slot_gpu_and_memory_grows_there_only(speech_pcm, backend):
    if backend == "faster-whisper":
        pytest.importorskip("ctranslate2")  # not on the lent GPU host (docs/gpu-check.md)
    probe = NvmlProbe()
    before = {i: probe.read(i).used_memory_gb for i in range(probe.count())}
    app = create_app(Settings(pcm_input=True, device="cuda", gpus=(0,), max_connections_per_gpu=2, backend=backend))
    services = app.state.services
    pcm, _ = speech_pcm("harvard")
    with in_process_server(app) as base:
        async def scenario():
            ws, config, _ = await open_session(base.replace("http", "ws") + "/asr")
            try:  # closed whatever happens: an open socket holds the in-process server's shutdown
                await ws.send(pcm[: 16000 * 2 * 4])
                deadline = asyncio.get_running_loop().time() + 60
                while not any(e.worker.requests for e in services.active_engines):  # a transcription ran on the device
                    assert asyncio.get_running_loop().time() < deadline, "no transcription within 60 s"
                    await asyncio.sleep(0.05)
                engine = next(iter(services.active_engines))
                backend = engine.worker.backend
                return config, (engine.slot.device, engine.worker.device, backend.device, weights_device(backend))
            finally:
                await ws.close()

        config, placement = run(scenario())
        after = {i: probe.read(i).used_memory_gb for i in range(probe.count())}
    assert config["device"] == "cuda:0" and config["gpu_id"] == 0
    assert placement == ("cuda:0", "cuda:0", "cuda:0", "cuda:0")
    assert after[0] - before[0] >= 0.03, (before, after)  # tiny.en fp16 + buffers: tens of MB at least
    for i in range(1, probe.count()):
        assert abs(after[i] - before[i]) < 0.02, f"GPU {i} memory moved: {before[i]} -> {after[i]}"


def test_gpu_status_reports_real_nvml_numbers():
    probe = NvmlProbe()
    app = create_app(Settings(device="cuda", preload=False))
    snapshot = app.state.services.manager.snapshot()
    assert snapshot["total_gpus"] == probe.count() >= 1
    gpu = snapshot["gpus"][0]
    assert gpu["simulated"] is False and gpu["total_memory_gb"] > 1 and gpu["utilization_percent"] is not None


def test_the_torch_whisper_on_a_gpu_turns_cudnn_attention_off():
    """cuDNN attention plans every new shape; the decoder's growing keys are a new shape each step (load.py)."""
    import torch

    from whisperlivekit.asr.backends.torch_whisper.load import load_torch_whisper
    from whisperlivekit.runtime.model_pool import ModelPool

    loaded = load_torch_whisper(ModelPool(Settings(device="cuda", backend="torch")).model_path(), "cuda:0")
    assert str(next(loaded.model.parameters()).device) == "cuda:0" and loaded.dtype == torch.float16
    assert torch.backends.cuda.cudnn_sdp_enabled() is False


def test_the_torch_whisper_on_a_gpu_decodes_mixed_windows_as_one_batch_with_each_rows_own_words():
    """`mixes_windows` is on by default on CUDA: one decode for requests of several windows, each row's
    words as it gets them alone (float16 on the GPU: the same words; times within two frames)."""
    import audio_assets

    from whisperlivekit.asr.backends.torch_whisper import TorchWhisperBackend
    from whisperlivekit.asr.types import TranscribeRequest
    from whisperlivekit.runtime.model_pool import ModelPool

    backend = TorchWhisperBackend(ModelPool(Settings(device="cuda", backend="torch")).model_path(), device="cuda:0")
    try:
        assert backend.mixes_windows
        audio = audio_assets.read_wav(audio_assets.harvard()[0])
        requests = [TranscribeRequest(audio[: int(s * 16000)], language="en") for s in (3.0, 6.5, 10.8)]
        requests.append(TranscribeRequest(audio, prompt="Committed words came before this buffer."))
        assert len({backend.window_frames(r) for r in requests}) > 1
        alone = [backend.transcribe_batch([r])[0] for r in requests]
        together = backend.transcribe_batch(requests)
        for a, b in zip(together, alone):
            assert [w.text for w in a.words] == [w.text for w in b.words]
            assert max((abs(x.start - y.start) + abs(x.end - y.end) for x, y in zip(a.words, b.words)), default=0) < 0.041
    finally:
        backend.close()
