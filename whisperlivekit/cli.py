"""`whisperlivekit-server`: flags (and WLK_* environment variables) → Settings → uvicorn.

Every flag maps to one Settings field. The model is resolved and loaded before
the server binds its port, so a bad model fails start-up with a one-line cause.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from typing import List, Mapping, Optional, Sequence

from whisperlivekit.asr.backends import BACKEND_ALIASES, backend_names
from whisperlivekit.config import Settings

logger = logging.getLogger("whisperlivekit")
DEFAULTS = Settings()


def _gpu_list(text: str):
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes comma-separated indices such as 0,2,3, not {text!r}")


def _origin_list(text: str):
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    return None if not origins or "*" in origins else origins


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisperlivekit-server",
        description="Real-time speech transcription over WebSocket (/asr), one GPU slot per connection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    server = p.add_argument_group("server")
    server.add_argument("--host", default=DEFAULTS.host)
    server.add_argument("--port", type=int, default=DEFAULTS.port)
    server.add_argument("--ssl-certfile", default=None, help="serve HTTPS/WSS with this certificate")
    server.add_argument("--ssl-keyfile", default=None)
    server.add_argument("--log-level", default=DEFAULTS.log_level, choices=["debug", "info", "warning", "error"])
    server.add_argument("--log-format", default=DEFAULTS.log_format, choices=["text", "json"])
    server.add_argument("--drain-timeout", dest="drain_timeout_s", type=float, default=DEFAULTS.drain_timeout_s,
                        help="on SIGTERM/SIGINT, seconds active streams may continue before they are finished (0: close at once)")
    server.add_argument("--forwarded-allow-ips", default=DEFAULTS.forwarded_allow_ips,
                        help="comma-separated proxy IPs/networks whose X-Forwarded-For gives the client address "
                             "(per-address limits behind a proxy); empty: trust none, *: trust any")

    conns = p.add_argument_group("connections (slow or silent clients)")
    conns.add_argument("--header-timeout", dest="header_timeout_s", type=float, default=DEFAULTS.header_timeout_s,
                       help="seconds a client has to send a request's headers")
    conns.add_argument("--max-header-bytes", type=int, default=DEFAULTS.max_header_bytes,
                       help="request line and headers together; larger requests get 431")
    conns.add_argument("--max-headers", type=int, default=DEFAULTS.max_headers, help="header lines per request")
    conns.add_argument("--max-open-connections", type=int, default=DEFAULTS.max_open_connections,
                       help="open TCP connections; past it the slowest unfinished request is dropped, else 503 "
                            "(0: half the descriptor limit)")
    conns.add_argument("--write-timeout", dest="write_timeout_s", type=float, default=DEFAULTS.write_timeout_s,
                       help="drop a WebSocket client that reads nothing for this many seconds while data waits for it")

    security = p.add_argument_group("security")
    security.add_argument("--api-token", default=None, help="token required on /asr (query ?token= or Authorization: Bearer); env WLK_API_TOKEN")
    security.add_argument("--protect-status", action="store_true", help="also require the token on /gpu-status, /dashboard and /metrics")
    security.add_argument("--allowed-origins", type=_origin_list, default=None,
                          help="comma-separated Origins allowed on /asr and for CORS (default: any)")
    security.add_argument("--auth-max-failures", type=int, default=DEFAULTS.auth_max_failures,
                          help="wrong tokens per address within --auth-failure-window before it is refused unchecked (0: off)")
    security.add_argument("--auth-failure-window", dest="auth_failure_window_s", type=float, default=DEFAULTS.auth_failure_window_s)

    limits = p.add_argument_group("limits (0: off)")
    limits.add_argument("--max-session-seconds", dest="max_session_s", type=float, default=DEFAULTS.max_session_s)
    limits.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, default=DEFAULTS.idle_timeout_s,
                        help="close a connection whose audio decodes to nothing for this many seconds")
    limits.add_argument("--start-grace", dest="start_grace_s", type=float, default=DEFAULTS.start_grace_s,
                        help="seconds after admission before --min-audio-rate applies (also the window it is averaged over)")
    limits.add_argument("--min-audio-rate", type=float, default=DEFAULTS.min_audio_rate,
                        help="seconds of decoded audio per second a stream must send to keep its slot (live: 1.0)")
    limits.add_argument("--max-connections-per-ip", type=int, default=DEFAULTS.max_connections_per_ip)
    limits.add_argument("--max-backlog-seconds", dest="max_backlog_s", type=float, default=DEFAULTS.max_backlog_s,
                        help="close a client whose untranscribed audio exceeds this (it sends faster than real time)")

    model = p.add_argument_group("model")
    model.add_argument("--model", default=DEFAULTS.model, help="size name (tiny.en, base, ...) or a local path")
    model.add_argument("--model-dir", default=None, help="directory holding model folders named after sizes")
    model.add_argument("--list-models", action="store_true",
                       help="print the Whisper models available on this machine, where each was found, and exit")
    model.add_argument("--cache-dir", default=None,
                       help="where model parts shipped across packages are joined (default: $XDG_CACHE_HOME/whisperlivekit, ~/.cache/whisperlivekit)")
    model.add_argument("--backend", default="auto", choices=["auto", *backend_names(), *BACKEND_ALIASES],
                       help="auto: the first installed backend that runs --backend-policy (faster-whisper, else torch "
                            "where CTranslate2 is missing); simulstreaming: our PyTorch Whisper with "
                            "the AlignAtt policy (same as --backend-policy simulstreaming)")
    model.add_argument("--backend-policy", default=DEFAULTS.backend_policy, choices=["localagreement", "simulstreaming"],
                       help="simulstreaming (AlignAtt) reads the decoder's attention: it runs on the torch backend")
    model.add_argument("--compute-type", default=DEFAULTS.compute_type, help="CTranslate2 compute type (auto: int8 on CPU, float16 on GPU)")
    model.add_argument("--language", default=DEFAULTS.language, help="ISO code, or auto to detect")
    model.add_argument("--task", default=DEFAULTS.task, choices=["transcribe", "translate"])
    model.add_argument("--device", default=DEFAULTS.device, choices=["auto", "cpu", "cuda"])
    model.add_argument("--no-preload", dest="preload", action="store_false", help="load models on the first connection")
    model.add_argument("--model-per-connection", action="store_true",
                       help="BENCHMARK BASELINE ONLY: load a private model per connection (the old design)")

    streaming = p.add_argument_group("streaming")
    streaming.add_argument("--min-chunk-size", dest="min_chunk_size_s", type=float, default=DEFAULTS.min_chunk_size_s,
                           help="seconds of new audio before the next transcription step on a loaded device")
    streaming.add_argument("--fast-step", dest="fast_step_s", type=float, default=DEFAULTS.fast_step_s,
                           help="a shorter step taken while the device has spare capacity: partials that often; LocalAgreement votes stay ~1 s apart, the steps between commit only words both were sure of (0: off)")
    streaming.add_argument("--beam-size", "--beams", dest="beam_size", type=int, default=DEFAULTS.beam_size)
    streaming.add_argument("--buffer-trimming-sec", dest="buffer_trimming_s", type=float, default=DEFAULTS.buffer_trimming_s)
    streaming.add_argument("--min-encoder-window", dest="min_encoder_window_s", type=float, default=DEFAULTS.min_encoder_window_s,
                           help="smallest encoder window in seconds (30 = always Whisper's full window)")
    streaming.add_argument("--no-vac", dest="vac", action="store_false", help="disable Silero voice activity gating")
    streaming.add_argument("--vad-threshold", type=float, default=DEFAULTS.vad_threshold)
    streaming.add_argument("--pause-segmentation-seconds", dest="pause_segmentation_s", type=float, default=DEFAULTS.pause_segmentation_s)
    streaming.add_argument("--no-audio-timeout", dest="no_audio_timeout_s", type=float, default=DEFAULTS.no_audio_timeout_s)

    diar = p.add_argument_group("diarization")
    diar.add_argument("--diarization", action="store_true", help="label speakers (lines carry a speaker id)")
    diar.add_argument("--diarization-backend", default=DEFAULTS.diarization_backend, choices=["auto", "embedding", "sortformer"],
                      help="auto: sortformer on GPUs where NeMo is installed, else the bundled embedding diarizer; "
                           "a .onnx / .nemo --diarization-model names its backend")
    diar.add_argument("--diarization-model", default=None, help="Sortformer .nemo file (or hub name when online), or a speaker-encoder .onnx for embedding")
    diar.add_argument("--max-speakers", type=int, default=DEFAULTS.max_speakers)
    diar.add_argument("--sortformer-chunk-len", type=int, default=DEFAULTS.sortformer_chunk_len, help="frames of 80 ms")
    diar.add_argument("--sortformer-right-context", type=int, default=DEFAULTS.sortformer_right_context)
    diar.add_argument("--sortformer-fifo-len", type=int, default=DEFAULTS.sortformer_fifo_len)
    diar.add_argument("--sortformer-spkcache-len", type=int, default=DEFAULTS.sortformer_spkcache_len)
    simul = p.add_argument_group("SimulStreaming (AlignAtt)")
    simul.add_argument("--frame-threshold", type=int, default=DEFAULTS.frame_threshold,
                       help="stop emitting when attention is this many 20 ms frames from the audio's end")
    simul.add_argument("--audio-max-len", dest="audio_max_len_s", type=float, default=DEFAULTS.audio_max_len_s,
                       help="seconds of audio kept per connection (at most 30)")
    simul.add_argument("--max-context-tokens", type=int, default=DEFAULTS.max_context_tokens,
                       help="committed tokens given to the decoder as context")
    simul.add_argument("--init-prompt", default=None, help="text that always precedes the context (names, terms)")
    model.add_argument("--allow-download", dest="allow_download", action="store_true", default=DEFAULTS.allow_download,
                       help="fetch a --model name missing here from the Hugging Face hub (when reachable)")
    model.add_argument("--no-download", dest="allow_download", action="store_false", help="never download a model")

    inp = p.add_argument_group("input")
    inp.add_argument("--pcm-input", action="store_true", help="clients send raw PCM s16le 16 kHz mono instead of a container")
    inp.add_argument("--max-frame-bytes", type=int, default=DEFAULTS.max_frame_bytes)

    files = p.add_argument_group("files (POST /v1/audio/transcriptions)")
    files.add_argument("--file-beam-size", type=int, default=DEFAULTS.file_beam_size,
                       help="beam search width for uploaded files (30 s windows, as Whisper was trained)")
    files.add_argument("--max-file-bytes", type=int, default=DEFAULTS.max_file_bytes,
                       help="largest upload accepted; larger ones get HTTP 413")

    gpu = p.add_argument_group("GPU allocation")
    gpu.add_argument("--gpus", type=_gpu_list, default=None, help="use only these GPU indices, e.g. 0,2,3")
    gpu.add_argument("--max-connections-per-gpu", type=int, default=DEFAULTS.max_connections_per_gpu,
                     help="hard cap per GPU, on top of --max-realtime-load")
    gpu.add_argument("--max-cpu-connections", type=int, default=DEFAULTS.max_cpu_connections,
                     help="hard cap on the CPU, on top of --max-realtime-load")
    gpu.add_argument("--min-free-memory-gb", type=float, default=DEFAULTS.min_free_memory_gb)
    gpu.add_argument("--gpu-policy", default=DEFAULTS.gpu_policy, choices=["least-loaded", "round-robin"])
    gpu.add_argument("--queue-timeout", dest="queue_timeout_s", type=float, default=DEFAULTS.queue_timeout_s,
                     help="seconds a new connection may wait for a slot (0: refuse at once)")
    gpu.add_argument("--no-cpu-fallback", dest="cpu_fallback", action="store_false",
                     help="refuse instead of using the CPU when no GPU is usable")
    gpu.add_argument("--simulate-gpus", type=int, default=DEFAULTS.simulate_gpus,
                     help="pretend to have N GPUs (engines run on the CPU) to try the allocator")
    gpu.add_argument("--unhealthy-backoff", dest="unhealthy_backoff_s", type=float, default=DEFAULTS.unhealthy_backoff_s)
    gpu.add_argument("--max-realtime-load", type=float, default=DEFAULTS.max_realtime_load,
                     help="refuse a new stream on a device whose measured compute load (per lane, counting the streams "
                          "admitted too recently to show in it) would reach this: how many streams a device takes "
                          "(0: off, leaving only the per-device connection caps)")

    batching = p.add_argument_group("batching")
    batching.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size, help="0: auto (8 on GPU, 1 on CPU)")
    batching.add_argument("--batch-window-ms", type=float, default=DEFAULTS.batch_window_ms)
    batching.add_argument("--cpu-threads", type=int, default=DEFAULTS.cpu_threads, help="threads per CPU lane (0: auto)")
    return p


def env_name(action: argparse.Action) -> str:
    """`--max-session-seconds` reads WLK_MAX_SESSION_SECONDS; an off switch `--no-vac` reads WLK_VAC (0/1)."""
    flag = max(action.option_strings, key=len).lstrip("-")
    if isinstance(action, argparse._StoreFalseAction) and flag.startswith("no-"):
        flag = flag[3:]
    return "WLK_" + flag.upper().replace("-", "_")


def _truthy(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """WLK_PORT=9000 acts like --port 9000 (flags still win)."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        raw = environ.get(env_name(action))
        if raw is None:
            continue
        if isinstance(action, argparse._StoreFalseAction) and max(action.option_strings, key=len).startswith("--no-"):
            value = _truthy(raw)  # WLK_VAC=0 turns voice activity gating off
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            value = _truthy(raw) == bool(action.const)
        else:
            value = action.type(raw) if action.type else raw
        parser.set_defaults(**{action.dest: value})


# Flags that do one thing and exit instead of configuring the server.
COMMANDS = frozenset({"list_models"})


def settings_from_args(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> Settings:
    """The one place flags and `WLK_*` variables become `Settings` (the environment defaults to os.environ)."""
    return _parse(argv, environ)[0]


def _parse(argv: Optional[Sequence[str]], environ: Optional[Mapping[str, str]] = None):
    """(Settings, the parsed namespace, which also says whether a command such as --list-models was given)."""
    parser = build_parser()
    _env_defaults(parser, os.environ if environ is None else environ)
    args = parser.parse_args(argv)
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in vars(args).items() if k in known}
    unknown = set(vars(args)) - known - COMMANDS
    if unknown:  # a flag that maps to no setting would be a flag that does nothing
        raise SystemExit(f"internal error: flags without a setting: {sorted(unknown)}")
    try:
        return Settings(**values), args
    except ValueError as exc:  # a combination the backend table refuses, ...
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def transport_frame_cap(max_frame_bytes: int) -> int:
    """uvicorn's `ws_max_size`: far above `--max-frame-bytes`, so that our own check answers oversized
    frames (JSON error, then 1009 naming the limit); frames past this cap are refused by the WebSocket
    layer from their header (1009, "frame with N bytes exceeds limit of ..."). uvicorn stops reading a
    connection while a received message waits for us, so the cap also bounds what one client can make us
    buffer: keep it a small multiple of the frame limit."""
    return max(8 * max_frame_bytes, 8 * 1024 * 1024)


def main(argv: Optional[List[str]] = None) -> None:
    settings, args = _parse(argv)
    if args.list_models:
        from whisperlivekit.weights.listing import listing

        print(listing(settings.model_dir))
        return
    from whisperlivekit.logging_setup import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    import uvicorn

    from whisperlivekit.app import build_runtime, create_app, preload
    from whisperlivekit.errors import WhisperLiveKitError

    try:
        manager, pool = build_runtime(settings)
        path = pool.model_path()
        logger.info("Model %s resolved to %s (backend %s)", settings.model, path, settings.backend)
        preload(settings, manager, pool)
    except (WhisperLiveKitError, RuntimeError, ValueError, OSError) as exc:
        print(f"whisperlivekit-server: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    app = create_app(settings, manager=manager, pool=pool)
    scheme = "https" if settings.ssl_certfile else "http"
    logger.info("Serving on %s://%s:%d (WebSocket /asr)", scheme, settings.host, settings.port)
    from whisperlivekit.lifecycle import DrainingServer

    from whisperlivekit.http_guard import guarded_protocols

    http_protocol, ws_protocol = guarded_protocols(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile,
        log_config=None, ws_max_size=transport_frame_cap(settings.max_frame_bytes), ws_ping_interval=20, ws_ping_timeout=20,
        http=http_protocol, ws=ws_protocol,
        proxy_headers=bool(settings.forwarded_allow_ips), forwarded_allow_ips=settings.forwarded_allow_ips or "",
    )
    DrainingServer(config, app.state.services, settings.drain_timeout_s).run()
    logger.info("Server stopped")


if __name__ == "__main__":
    main()
