"""Prometheus metrics at `GET /metrics`, in a registry per app (tests build isolated apps).

Event counters (accepted, refused, audio seconds, slot waits, commit lags) are updated by
`api/asr.py`; each engine measures its commit lags with a `CommitLagMeter`; live values (connections per device, inference stats, NVML readings, model
load times) are read at scrape time by a custom collector, so they are never stale.
"""

from __future__ import annotations

import bisect
import time
from typing import Callable, Iterable, List, Sequence, Tuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "whisperlivekit"


class CommitLagMeter:
    """Per committed word: wall seconds from the arrival of the audio at its end to its commit.

    Arrivals older than a few seconds before the policy's offset can no longer be matched by a
    new commit and are forgotten, so memory stays flat on long sessions.
    """

    KEEP_S = 5.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._arrivals: List[Tuple[float, float]] = []  # (stream time of the chunk's end, wall time)
        self.lags_s: List[float] = []

    def audio_arrived(self, stream_s: float) -> None:
        self._arrivals.append((stream_s, self._clock()))

    def arrival_of(self, stream_s: float) -> float:
        """Wall time at which the audio at `stream_s` arrived (now if it has not, or is forgotten)."""
        i = bisect.bisect_right(self._arrivals, (stream_s, float("inf")))
        return self._arrivals[i][1] if i < len(self._arrivals) else self._clock()

    def committed(self, word_ends_s: Sequence[float], offset_s: float) -> None:
        now = self._clock()
        for end_s in word_ends_s:
            i = bisect.bisect_left(self._arrivals, (end_s, 0.0))
            if i < len(self._arrivals):
                self.lags_s.append(now - self._arrivals[i][1])
        del self._arrivals[: max(0, bisect.bisect_left(self._arrivals, (offset_s - self.KEEP_S, 0.0)))]


class _LiveCollector(Collector):
    """Reads the GPU manager and the device workers at scrape time."""

    def __init__(self, services) -> None:
        self.services = services

    def collect(self) -> Iterable:
        manager, pool = self.services.manager, self.services.pool
        snapshot = manager.snapshot()
        active = GaugeMetricFamily(f"{PREFIX}_connections_active", "Connections holding a slot, per GPU (or cpu)", labels=["gpu"])
        capacity = GaugeMetricFamily(f"{PREFIX}_connections_capacity", "Slots per GPU (or cpu)", labels=["gpu"])
        healthy = GaugeMetricFamily(f"{PREFIX}_gpu_healthy", "1 while the GPU is in rotation", labels=["gpu"])
        memory_used = GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "NVML memory used (whole device)", labels=["gpu"])
        memory_total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "NVML memory total", labels=["gpu"])
        utilisation = GaugeMetricFamily(f"{PREFIX}_gpu_utilization_ratio", "NVML utilisation (0-1)", labels=["gpu"])
        for gpu in snapshot["gpus"]:
            label = str(gpu["gpu_id"])
            active.add_metric([label], gpu["active_connections"])
            capacity.add_metric([label], gpu["max_connections"])
            healthy.add_metric([label], 1.0 if gpu["healthy"] else 0.0)
            if gpu["used_memory_gb"] is not None:
                memory_used.add_metric([label], gpu["used_memory_gb"] * 2**30)
                memory_total.add_metric([label], gpu["total_memory_gb"] * 2**30)
            if gpu["utilization_percent"] is not None:
                utilisation.add_metric([label], gpu["utilization_percent"] / 100.0)
        cpu = snapshot["cpu"]
        active.add_metric(["cpu"], cpu["active_connections"])
        capacity.add_metric(["cpu"], cpu["max_connections"])
        yield from (active, capacity, healthy, memory_used, memory_total, utilisation)

        queued = GaugeMetricFamily(f"{PREFIX}_connections_queued", "Connections waiting for a slot")
        queued.add_metric([], snapshot["queued"])
        draining = GaugeMetricFamily(f"{PREFIX}_draining", "1 while the server drains before shutting down")
        draining.add_metric([], 1.0 if self.services.draining else 0.0)
        yield from (queued, draining)

        compute = CounterMetricFamily(f"{PREFIX}_inference_seconds", "Inference compute time per device", labels=["device"])
        batches = CounterMetricFamily(f"{PREFIX}_inference_batches", "Inference batches run per device", labels=["device"])
        requests = CounterMetricFamily(f"{PREFIX}_inference_requests", "Transcription requests served per device", labels=["device"])
        batch_size = GaugeMetricFamily(f"{PREFIX}_batch_size_mean", "Mean batch size over the last 1000 batches", labels=["device"])
        load = GaugeMetricFamily(f"{PREFIX}_realtime_load", "Compute seconds per wall second per lane (10 s window)", labels=["device"])
        queue_depth = GaugeMetricFamily(f"{PREFIX}_inference_queue_depth", "Requests waiting for a lane", labels=["device"])
        for device, worker in pool.workers().items():
            compute.add_metric([device], worker.compute_s_total)
            batches.add_metric([device], worker.batches)
            requests.add_metric([device], worker.requests)
            sizes = list(worker.batch_sizes)
            batch_size.add_metric([device], sum(sizes) / len(sizes) if sizes else 0.0)
            load.add_metric([device], worker.realtime_load())
            queue_depth.add_metric([device], worker.queue_depth())
        yield from (compute, batches, requests, batch_size, load, queue_depth)

        vad_calls = CounterMetricFamily(f"{PREFIX}_vad_calls", "Silero VAD runs per device (each takes one window "
                                        "of every stream batched into it)", labels=["device"])
        vad_windows = CounterMetricFamily(f"{PREFIX}_vad_windows", "32 ms windows VAD classified per device: "
                                          "windows / calls is the VAD batching achieved", labels=["device"])
        for device, worker in pool.workers().items():
            if getattr(worker, "vad_model", None) is not None:
                vad_calls.add_metric([device], worker.vad_model.calls)
                vad_windows.add_metric([device], worker.vad_model.windows)
        yield from (vad_calls, vad_windows)
        yield from self._scheduler(pool.workers())

        load_times = GaugeMetricFamily(f"{PREFIX}_model_load_seconds", "Time taken to load the model, per device", labels=["device"])
        for device, seconds in dict(pool.load_times_s).items():
            load_times.add_metric([device], seconds)
        yield load_times


    @staticmethod
    def _scheduler(workers: dict) -> Iterable:
        """The deadline-first scheduler's histograms per device (runtime/step_stats.py)."""
        helps = {
            "step_interval_seconds": "Per stream: start of one transcription step to the start of the next",
            "queue_wait_seconds": "Submission of a device job to a lane taking it",
            "schedule_lag_seconds": "At a step's start, age of the stream's oldest uncommitted audio",
            "batch_size": "Requests per transcription batch",
            "decoded_tokens": "Tokens the model chose per transcription step (a forced prefix excluded)",
        }
        families = {name: HistogramMetricFamily(f"{PREFIX}_step_{name}", text, labels=["device"]) for name, text in helps.items()}
        retries = CounterMetricFamily(f"{PREFIX}_degenerate_retries", "Steps redone on the full 30 s window because the "
                                      "first hypothesis looked degenerate", labels=["device"])
        loops_cut = CounterMetricFamily(f"{PREFIX}_loops_cut", "Steps whose hypothesis ran on past its audio in a "
                                        "loop: the repeated copies cut instead of a retry", labels=["device"])
        for device, worker in workers.items():
            stats = getattr(worker, "stats", None)
            if stats is None:
                continue
            for name, histogram in stats.histograms().items():
                buckets, total, _ = histogram.state()
                families[name].add_metric([device], buckets, total)
            retries.add_metric([device], worker.retries)
            loops_cut.add_metric([device], worker.loops_cut)
        yield from families.values()
        yield retries
        yield loops_cut


class Metrics:
    """The app's registry and its event metrics."""

    def __init__(self, services) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(f"{PREFIX}_connections_accepted", "Connections admitted (given a slot)", registry=r)
        self.streams = Counter(f"{PREFIX}_streams", "Admitted streams, by protocol (asr, deepgram, ...)", ["protocol"], registry=r)
        self.refused = Counter(f"{PREFIX}_connections_refused", "Connections refused, by reason", ["reason"], registry=r)
        self.closed = Counter(f"{PREFIX}_connections_closed", "Admitted connections ended, by outcome", ["outcome"], registry=r)
        self.slot_wait = Histogram(f"{PREFIX}_slot_wait_seconds", "Time from connect to slot granted", registry=r,
                                   buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60))
        self.audio_received = Counter(f"{PREFIX}_audio_received_seconds", "Audio decoded from clients", registry=r)
        self.audio_transcribed = Counter(f"{PREFIX}_audio_transcribed_seconds", "Audio processed by the transcription policy", registry=r)
        self.commit_lag = Histogram(f"{PREFIX}_commit_lag_seconds", "Audio arrival → its words committed", registry=r,
                                    buckets=(0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 20))
        r.register(_LiveCollector(services))

    def session_ended(self, engine, outcome: str) -> None:
        self.closed.labels(outcome).inc()
        self.audio_received.inc(max(0.0, engine.received_s))
        self.audio_transcribed.inc(max(0.0, engine.transcribed_s))
        for lag in engine.commit_lags_s:
            self.commit_lag.observe(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)
