"""The one configuration object.

`cli.py` builds a `Settings` from flags and environment; `app.create_app(settings)`
builds everything else from it. Nothing reads `sys.argv` or the environment at
import time, so tests build isolated apps from plain `Settings(...)` values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Optional, Tuple

BackendName = Literal["auto", "faster-whisper", "torch", "simulstreaming"]  # see asr/backends/__init__.py
PolicyName = Literal["localagreement", "simulstreaming"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
GpuPolicy = Literal["least-loaded", "round-robin"]


@dataclass(frozen=True)
class Settings:
    # --- server -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    drain_timeout_s: float = 30.0  # on SIGTERM/SIGINT: how long active streams may keep going
    forwarded_allow_ips: str = ""  # proxies whose X-Forwarded-For is believed (comma-separated IPs/CIDRs, "*": any)

    # --- connections (see http_guard.py) -------------------------------------------
    header_timeout_s: float = 5.0  # a request's headers must arrive within this (slowloris)
    max_header_bytes: int = 16_384  # request line + headers
    max_headers: int = 100
    max_open_connections: int = 0  # 0: half the process's descriptor limit
    write_timeout_s: float = 15.0  # a WebSocket client that reads nothing for this long is dropped

    # --- security -----------------------------------------------------------------
    api_token: Optional[str] = None  # required on /asr (query `token` or `Authorization: Bearer`)
    protect_status: bool = False  # also require the token on /gpu-status, /dashboard, /metrics
    allowed_origins: Optional[Tuple[str, ...]] = None  # None: any Origin
    auth_max_failures: int = 10  # failed token checks per address and window before refusing unchecked
    auth_failure_window_s: float = 60.0

    # --- limits (0: off) ----------------------------------------------------------
    max_session_s: float = 0.0
    idle_timeout_s: float = 60.0  # seconds without decoded audio
    start_grace_s: float = 10.0  # after admission, before the audio-rate rule applies; also its window
    min_audio_rate: float = 0.5  # seconds of decoded audio per wall-clock second (a live client sends 1.0)
    max_connections_per_ip: int = 0
    max_backlog_s: float = 60.0  # audio received but not yet transcribed

    # --- model --------------------------------------------------------------------
    model: str = "tiny.en"
    model_dir: Optional[str] = None
    cache_dir: Optional[str] = None  # joined model parts; None: cache_root()'s default
    backend: BackendName = "auto"  # auto: the first installed backend that runs the policy
    backend_policy: PolicyName = "localagreement"
    compute_type: str = "auto"
    language: str = "auto"
    task: Literal["transcribe", "translate"] = "transcribe"
    device: DeviceChoice = "auto"
    preload: bool = True
    model_per_connection: bool = False

    # --- streaming policy ---------------------------------------------------------
    min_chunk_size_s: float = 1.0  # the step once the device is loaded
    fast_step_s: float = 0.4  # the step while the device has spare capacity (engine.py); 0: off (see docs/architecture.md)
    beam_size: int = 1
    buffer_trimming_s: float = 8.0
    min_encoder_window_s: float = 10.0
    vac: bool = True
    vad_threshold: float = 0.4
    pause_segmentation_s: float = 1.0
    no_audio_timeout_s: float = 0.0  # status "no_audio_detected" until speech after this much audio (0: from the start, as WhisperLiveKit)

    # --- diarization --------------------------------------------------------------
    diarization: bool = False
    diarization_backend: str = "auto"  # auto: sortformer on GPUs where NeMo is installed, else embedding
    diarization_model: Optional[str] = None
    max_speakers: int = 4
    sortformer_chunk_len: int = 6
    sortformer_right_context: int = 7
    sortformer_fifo_len: int = 188
    sortformer_spkcache_len: int = 188

    # --- SimulStreaming (AlignAtt) policy ------------------------------------------
    frame_threshold: int = 25  # encoder frames (20 ms) from the audio's end where emission stops
    audio_max_len_s: float = 30.0
    max_context_tokens: int = 128
    init_prompt: Optional[str] = None
    allow_download: bool = True  # --model names missing here may come from the Hugging Face hub

    # --- input --------------------------------------------------------------------
    pcm_input: bool = False
    max_frame_bytes: int = 1_048_576

    # --- files (POST /v1/audio/transcriptions) --------------------------------------
    file_beam_size: int = 5  # beam search for whole files (live streams use beam_size)
    max_file_bytes: int = 26_214_400  # 25 MiB, OpenAI's own limit; larger uploads get 413

    # --- GPU allocation -----------------------------------------------------------
    gpus: Optional[Tuple[int, ...]] = None
    max_connections_per_gpu: int = 4  # hard caps on top of the measured load (max_realtime_load)
    max_cpu_connections: int = 32
    min_free_memory_gb: float = 0.0
    gpu_policy: GpuPolicy = "least-loaded"
    queue_timeout_s: float = 0.0
    cpu_fallback: bool = True
    simulate_gpus: int = 0
    unhealthy_backoff_s: float = 30.0
    max_realtime_load: float = 0.9  # admission by measured load (gpu/manager.py): the capacity model; 0: off

    # --- batching -----------------------------------------------------------------
    max_batch_size: int = 0  # 0: auto (8 on GPU; 1 on CPU, where batching measured slower)
    batch_window_ms: float = 10.0
    cpu_threads: int = 0

    def __post_init__(self) -> None:
        """Resolve `--backend auto` and the `simulstreaming` shorthand, then check the pair against the
        backend table, so a policy a backend cannot run fails here with what to pass instead."""
        from whisperlivekit.asr.backends import BACKEND_ALIASES, backend_for_policy, check_combination

        backend, policy = self.backend, self.backend_policy
        if backend in BACKEND_ALIASES:
            backend, policy = BACKEND_ALIASES[backend]
        elif backend == "auto":
            backend = backend_for_policy(policy)
        check_combination(backend, policy)
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "backend_policy", policy)

    def with_changes(self, **changes: object) -> "Settings":
        """A copy with some fields changed (tests and the CLI use this)."""
        return replace(self, **changes)


def user_cache_home() -> Path:
    """`$XDG_CACHE_HOME`, else `~/.cache`: the base both this server and openai-whisper cache under.

    Read when called (never at import), so a test's environment is the one that counts."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def cache_root(cache_dir: "str | Path | None" = None) -> Path:
    """Where joined model parts (`models/`) live:
    `--cache-dir`, else `$XDG_CACHE_HOME/whisperlivekit`. The one place that default is computed."""
    return Path(cache_dir).expanduser() if cache_dir else user_cache_home() / "whisperlivekit"


__all__ = ["Settings", "cache_root", "user_cache_home"]
