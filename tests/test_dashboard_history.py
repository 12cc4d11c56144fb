"""`GET /gpu-status/history` (the dashboard's charts) and the Grafana dashboard over `/metrics`.

The history is a ring buffer the server fills every 2 s from the same calls `/gpu-status`
makes, so both agree at the same moment; the Grafana dashboard may only query metric
names that a running server really exports.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import run, running_server
from helpers import open_session
from whisperlivekit.app import create_app
from whisperlivekit.client import stream
from whisperlivekit.config import Settings
from whisperlivekit.gpu.nvml import SimulatedProbe
from whisperlivekit.history import History, p95

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "whisperlivekit.json"


class StepClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _app(**settings):
    probe = SimulatedProbe(settings.pop("gpus", 2))
    app = create_app(Settings(preload=False, **settings), probe=probe)
    return app, probe


# --- the ring buffer ---------------------------------------------------------------


def test_the_buffer_keeps_15_minutes_of_2_s_samples_and_forgets_older_ones():
    app, _ = _app()
    clock = StepClock()
    history = History(app.state.services, clock=clock)
    for _ in range(460):
        history.sample()
        clock.now += 2.0
    samples = history.samples()
    assert len(samples) == 450  # 15 min / 2 s
    assert samples[-1]["t"] - samples[0]["t"] == pytest.approx(898.0)
    assert samples[0]["t"] == 1_000.0 + 10 * 2.0  # the ten oldest were dropped
    assert [s["t"] for s in history.samples(since=samples[-2]["t"])] == [samples[-1]["t"]]


def test_p95_is_the_nearest_rank_95th_percentile():
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([float(i) for i in range(1, 21)]) == 19.0


def test_a_sample_reads_the_same_numbers_as_gpu_status():
    app, probe = _app(gpus=2, max_connections_per_gpu=3)
    manager = app.state.services.manager
    for name in ("a", "b", "c"):
        manager.acquire(name)
    probe.set_free_memory(1, 5.25)
    client = TestClient(app)
    status = client.get("/gpu-status").json()
    sample = app.state.history.sample()

    assert sample["connections"] == status["total_connections"] == 3
    assert sample["capacity"] == 2 * 3
    assert sample["queued"] == status["queued"] == 0
    for gpu in status["gpus"]:
        device = sample["devices"][str(gpu["gpu_id"])]
        assert device["connections"] == gpu["active_connections"]
        assert device["max_connections"] == gpu["max_connections"] == 3
        assert device["memory_used_gb"] == gpu["used_memory_gb"]
        assert device["memory_total_gb"] == gpu["total_memory_gb"]
        assert device["utilization_percent"] == gpu["utilization_percent"]
    assert sample["devices"]["1"]["memory_used_gb"] == pytest.approx(15.75 - 5.25)
    assert sorted(d["connections"] for k, d in sample["devices"].items() if k != "cpu") == [1, 2]
    assert sample["devices"]["cpu"]["connections"] == status["cpu"]["active_connections"] == 0


def test_commit_lag_p95_is_per_device_over_30_s_and_counts_a_stream_that_ended_between_samples():
    class Stream:  # what the history reads of an engine: its slot and its commit lags
        def __init__(self, slot, commit_lags_s):
            self.slot, self.commit_lags_s = slot, commit_lags_s

    app, _ = _app(gpus=2)
    services = app.state.services
    clock = StepClock()
    history = History(services, clock=clock)
    slot = services.manager.acquire("talker")
    talker = Stream(slot, [0.5, 1.0, 4.0])
    services.active_engines.add(talker)
    assert history.sample()["devices"][str(slot.gpu_id)]["commit_lag_p95_s"] == 4.0
    assert history.sample()["devices"][str(1 - slot.gpu_id)]["commit_lag_p95_s"] is None

    talker.commit_lags_s += [9.0]  # its last words, then the stream ends before the next sample
    services.active_engines.discard(talker)
    clock.now += 2.0
    assert history.sample()["devices"][str(slot.gpu_id)]["commit_lag_p95_s"] == 9.0
    clock.now += 31.0
    assert history.sample()["devices"][str(slot.gpu_id)]["commit_lag_p95_s"] is None  # older than 30 s


def test_capacity_counts_only_healthy_gpus_and_the_cpu_once_no_gpu_is_left():
    app, probe = _app(gpus=2, max_connections_per_gpu=4, max_cpu_connections=6)
    history = app.state.history
    assert history.sample()["capacity"] == 8
    probe.fail(0)
    assert history.sample()["capacity"] == 4
    probe.fail(1)
    assert history.sample()["capacity"] == 6  # CPU fallback serves


def test_history_is_sampled_from_start_up_and_needs_the_token_under_protect_status():
    app, _ = _app(api_token="s3cret", protect_status=True)
    with TestClient(app) as client:  # runs the lifespan: the sampler takes a sample at once
        assert client.get("/gpu-status/history").status_code == 401
        body = client.get("/gpu-status/history", params={"token": "s3cret"}).json()
        assert body["interval_s"] == 2.0 and body["window_s"] == 900.0
        assert len(body["samples"]) >= 1 and set(body["samples"][0]["devices"]) == {"0", "1", "cpu"}
        later = client.get("/gpu-status/history", params={"token": "s3cret", "since": body["samples"][-1]["t"]}).json()
        assert all(s["t"] > body["samples"][-1]["t"] for s in later["samples"])


# --- on a running server -----------------------------------------------------------


async def _next_sample(base_url: str, after: float, timeout_s: float = 10.0) -> dict:
    """The first history sample taken after wall-clock time `after`."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            samples = (await client.get("/gpu-status/history", params={"since": after})).json()["samples"]
            if samples:
                return samples[0]
            await asyncio.sleep(0.3)
    raise AssertionError(f"no history sample after {after} within {timeout_s} s")


def test_samples_match_gpu_status_with_five_clients_on_four_gpus_and_count_refusals():
    async def scenario(server):
        held = []
        for _ in range(5):
            ws, config, code = await open_session(server.ws_url)
            assert config and config["type"] == "config", code
            held.append((ws, config))
        settled_at = time.time()
        status = server.get("/gpu-status").json()
        sample = await _next_sample(server.base_url, settled_at)
        per_gpu = Counter(config["gpu_id"] for _, config in held)
        assert sample["connections"] == status["total_connections"] == 5
        assert sample["capacity"] == 8  # 4 GPUs × 2
        for gpu in status["gpus"]:
            device = sample["devices"][str(gpu["gpu_id"])]
            assert device["connections"] == gpu["active_connections"] == per_gpu.get(gpu["gpu_id"], 0)
            assert (device["memory_used_gb"], device["utilization_percent"]) == (gpu["used_memory_gb"], gpu["utilization_percent"])

        for _ in range(4):  # fill the last 3 slots, then one more is refused
            ws, config, code = await open_session(server.ws_url)
            held.append((ws, config))
        refused = [config for _, config in held if config is None]
        assert len(refused) == 1
        full_at = time.time()
        sample = await _next_sample(server.base_url, full_at)
        samples = (await asyncio.to_thread(server.get, "/gpu-status/history")).json()["samples"]
        assert sample["connections"] == 8
        assert sum(s["refused"] for s in samples) == 1

        for ws, _ in held:
            await ws.close()
        closed_at = time.time()
        await asyncio.sleep(0.5)  # the server releases the slots as it notices the closes
        sample = await _next_sample(server.base_url, closed_at + 0.5)
        assert sample["connections"] == 0 and all(d["connections"] == 0 for d in sample["devices"].values())

    flags = ("--simulate-gpus", "4", "--max-connections-per-gpu", "2", "--no-cpu-fallback")
    with running_server(*flags) as server:
        run(scenario(server))


@pytest.mark.slow
def test_commit_lag_p95_follows_the_gpu_its_stream_runs_on(speech_pcm):
    pcm, _ = speech_pcm("harvard")

    async def scenario(server):
        result = await stream(server.ws_url, pcm, pcm=True, speed=1.0)
        assert result.ended_with_ready_to_stop
        return result.config["gpu_id"]

    with running_server("--pcm-input", "--simulate-gpus", "2") as server:
        gpu_id = run(scenario(server))
        samples = server.get("/gpu-status/history").json()["samples"]
    streamed = [s for s in samples if s["devices"][str(gpu_id)]["connections"] == 1]
    assert len(streamed) >= 3, "the stream lasted ~11 s: several samples saw it"
    lags = [s["devices"][str(gpu_id)]["commit_lag_p95_s"] for s in samples]
    assert any(lag is not None and 0 < lag < 30 for lag in lags), lags
    other = str(1 - gpu_id)
    assert all(s["devices"][other]["commit_lag_p95_s"] is None for s in samples)


# --- Grafana -------------------------------------------------------------------------


def _exported_names(metrics_text: str) -> set:
    """Every series name `/metrics` can hold, including families with no sample yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created")}
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def _grafana_queries() -> list:
    dashboard = json.loads(GRAFANA.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        queries.append(query.get("query", "") if isinstance(query, dict) else "")
    return queries


def test_every_metric_the_grafana_dashboard_queries_exists_on_a_running_server():
    queries = _grafana_queries()
    used = {name for query in queries for name in re.findall(r"\bwhisperlivekit_[a-z0-9_]+", query)}
    assert len(used) >= 15, used
    with running_server("--simulate-gpus", "2") as server:
        exported = _exported_names(server.get("/metrics").text)
    assert not used - exported, f"the dashboard queries metrics the server does not export: {sorted(used - exported)}"
    for wanted in ("connections_refused_total", "realtime_load", "batch_size_mean", "commit_lag_seconds_bucket",
                   "gpu_memory_used_bytes", "gpu_utilization_ratio", "model_load_seconds"):
        assert f"whisperlivekit_{wanted}" in used, f"the issue asks for a panel over {wanted}"


def test_the_grafana_dashboard_imports_anywhere_and_its_panels_do_not_overlap():
    dashboard = json.loads(GRAFANA.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        mine = {(box["x"] + dx, box["y"] + dy) for dx in range(box["w"]) for dy in range(box["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
