"""`/metrics` after real streams, and JSON logs that tag every connection line with its id and device."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from conftest import pace, run, running_server
from whisperlivekit.client import stream


def _samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_metrics_after_a_stream_and_json_logs_tag_connection_lines(speech_pcm):
    pcm, _ = speech_pcm("arctic_a0007")
    with running_server("--pcm-input", "--log-format", "json") as server:
        result = run(stream(server.ws_url, pcm, pcm=True, speed=pace(4.0)))
        assert result.ended_with_ready_to_stop
        connection_id = result.config["connection_id"]
        samples = _samples(server.get("/metrics").text)
        scheduler = server.get("/gpu-status").json()["devices"]["cpu"]["scheduler"]
        log = server.log()

    def total(name, **labels):
        return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))

    assert total("whisperlivekit_connections_accepted_total") >= 1
    assert total("whisperlivekit_audio_received_seconds_total") > 1.0
    assert total("whisperlivekit_audio_transcribed_seconds_total") > 1.0
    assert total("whisperlivekit_slot_wait_seconds_count") >= 1
    assert total("whisperlivekit_commit_lag_seconds_count") >= 1
    assert total("whisperlivekit_connections_active", gpu="cpu") == 0
    assert total("whisperlivekit_inference_batches_total") >= 1
    assert total("whisperlivekit_model_load_seconds") > 0
    assert total("whisperlivekit_connections_closed_total", outcome="completed") >= 1
    # the deadline-first scheduler's histograms: one stream took several steps of a few tokens each
    steps = total("whisperlivekit_step_batch_size_count", device="cpu")
    assert steps >= 2 and total("whisperlivekit_step_batch_size_sum", device="cpu") == steps  # CPU: no batching
    assert total("whisperlivekit_step_step_interval_seconds_count", device="cpu") >= 1
    assert total("whisperlivekit_step_queue_wait_seconds_count", device="cpu") == steps
    assert total("whisperlivekit_step_schedule_lag_seconds_bucket", device="cpu", le="+Inf") == steps
    assert total("whisperlivekit_step_decoded_tokens_sum", device="cpu") > 0
    assert total("whisperlivekit_degenerate_retries_total", device="cpu") == 0, "healthy speech needs no retry"
    assert scheduler["batch_size"]["count"] >= steps and scheduler["step_interval_seconds"]["p95"] > 0
    assert scheduler["degenerate_retries"] == 0
    assert "whisperlivekit_loops_cut_total" in samples and isinstance(scheduler["loops_cut"], int)
    # VAD classified the clip's 4 s in 32 ms windows (one stream: about one window per call)
    vad_windows, vad_calls = total("whisperlivekit_vad_windows_total", device="cpu"), total("whisperlivekit_vad_calls_total", device="cpu")
    assert vad_windows >= 3.5 / 0.032 and vad_windows >= vad_calls >= 1, (vad_windows, vad_calls)

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [e for e in lines if e.get("connection_id") == connection_id or connection_id in e["message"]]
    assert len(mine) >= 2, log[-2000:]
    for entry in mine:
        assert entry.get("connection_id") == connection_id and entry.get("device") == "CPU", entry
