"""Bad input gets a clear error or close code; nothing leaks; everyone else keeps being served."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import websockets

from conftest import run, running_server, wer
from helpers import close_code_after, drop_tcp, eventually, ffmpeg_children, messages_until_close, open_session
from whisperlivekit.client import stream


@pytest.fixture(scope="module")
def server():
    with running_server("--max-frame-bytes", "100000", "--max-cpu-connections", "32") as s:
        yield s


def test_undecodable_bytes_get_an_error_status_and_a_clean_close(server):
    async def scenario():
        ws, config, _ = await open_session(server.ws_url)
        await ws.send(os.urandom(20_000))
        await ws.send(b"")
        return await messages_until_close(ws), ws.close_code

    messages, code = run(scenario())
    errors = [m for m in messages if m.get("status") == "error"]
    assert errors and "Could not decode audio" in errors[-1]["error"]
    assert code == 1007
    assert eventually(lambda: not ffmpeg_children(server.proc.pid))


def test_text_frame_is_a_protocol_error_closed_with_1003(server):
    async def scenario():
        ws, _, _ = await open_session(server.ws_url)
        await ws.send("hello")
        messages = await messages_until_close(ws)
        return messages, ws.close_code, ws.close_reason

    messages, code, reason = run(scenario())
    assert code == 1003 and "binary" in reason
    assert messages[-1]["type"] == "error"


def test_oversized_frame_is_closed_with_1009(server):
    async def scenario():
        ws, _, _ = await open_session(server.ws_url)
        await ws.send(b"\0" * 200_000)
        messages = await messages_until_close(ws)
        return messages, ws.close_code, ws.close_reason

    messages, code, reason = run(scenario())
    assert code == 1009 and "100000" in reason


def test_bad_language_parameter_gets_an_error_then_4400(server):
    async def scenario():
        ws = await websockets.connect(server.ws_url + "?language=english!!")
        messages = await messages_until_close(ws)
        return messages, ws.close_code

    messages, code = run(scenario())
    assert code == 4400 and "invalid language" in messages[0]["error"]


@pytest.mark.slow
def test_any_sample_rate_and_container_is_resampled_by_ffmpeg(server, speech_pcm, tmp_path):
    pcm, reference = speech_pcm("arctic_a0009")
    wav = tmp_path / "stereo44k.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "-",
                    "-ar", "44100", "-ac", "2", str(wav)], input=pcm, check=True)
    result = run(stream(server.ws_url, wav.read_bytes(), pcm=False, speed=4.0))
    assert result.ended_with_ready_to_stop and wer(reference, result.text) <= 0.10, result.text


def test_20_aborted_connections_leave_no_ffmpeg_process_and_no_slot(server, speech_pcm, webm):
    pcm, _ = speech_pcm("harvard")
    payload = webm(pcm)

    async def one(i: int):
        ws, _, _ = await open_session(server.ws_url)
        await ws.send(payload[: 4000 + 500 * i])
        await asyncio.sleep(0.05 * (i % 5))
        drop_tcp(ws)

    async def scenario():
        await asyncio.gather(*(one(i) for i in range(20)))

    run(scenario())
    assert eventually(lambda: not ffmpeg_children(server.proc.pid)), [p.pid for p in ffmpeg_children(server.proc.pid)]
    assert eventually(lambda: server.get("/gpu-status").json()["total_connections"] == 0)


def test_a_client_that_never_reads_does_not_stall_others(server, speech_pcm, webm):
    pcm, reference = speech_pcm("arctic_a0007")
    payload = webm(pcm)

    async def scenario():
        slow = await websockets.connect(server.ws_url, max_queue=1)  # stops reading after one message
        for i in range(0, len(payload), 2000):
            await slow.send(payload[i : i + 2000])
        good = await stream(server.ws_url, payload, pcm=False, speed=4.0)
        drop_tcp(slow)
        return good

    good = run(scenario())
    assert good.ended_with_ready_to_stop and wer(reference, good.text) <= 0.10
    assert eventually(lambda: server.get("/gpu-status").json()["total_connections"] == 0)


def test_unknown_model_refuses_to_start_with_a_one_line_cause(tmp_path):
    done = subprocess.run([sys.executable, "-m", "whisperlivekit.cli", "--model", "no-such-model", "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("whisperlivekit-server: error: Model 'no-such-model' is not available")
    assert "--model" in last


def test_corrupt_model_directory_refuses_to_start(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"not a model")
    (tmp_path / "config.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "whisperlivekit.cli", "--model", str(tmp_path), "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Could not load faster-whisper model" in done.stderr.strip().splitlines()[-1]
