"""Shared test fixtures: real servers (subprocess or in-process uvicorn), real audio, WER."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from whisperlivekit.client import encode_webm_opus, load_pcm16  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # The longest files start first, so that the two workers (scripts/test.sh) finish together
    # instead of one running a five-minute stream alone at the end.
    items.sort(key=lambda item: not getattr(getattr(item, "module", None), "RUN_FIRST", False))
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:
        pass
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening socket of `port`."""
    import psutil

    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False


def wait_healthy(
    base_url: str, timeout_s: float = 90.0, proc: Optional[subprocess.Popen] = None, verify: "ssl.SSLContext | bool" = True,
    thread: Optional[threading.Thread] = None,
) -> None:
    """Poll `/health` until 200 from the server started here; `verify` is httpx's: an SSL context that trusts a
    test certificate. A server process or thread that ends first fails at once (a failed start-up is not a
    slow one).

    The 200 must come from that server: `free_port()` gives the port up before the server binds it (after
    loading its models), and the other test worker may get the same port meanwhile. In CI a test then
    streamed to the other worker's server, passed its health check, and was refused mid-test when that
    server stopped. So the answer counts only once this process (or thread's process) holds the port."""
    port = httpx.URL(base_url).port
    owner = proc.pid if proc is not None else os.getpid() if thread is not None else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stderr.read().decode() if proc.stderr else ''}")
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the in-process server stopped during start-up; its error is in the captured log")
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0, verify=verify).status_code == 200 and (
                    owner is None or listens_on(owner, port)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {base_url} did not become healthy")


class ServerProcess:
    """`whisperlivekit-server` in a subprocess, as a user runs it.

    With `ssl_context` (one that trusts the server's certificate) the URLs are https/wss and
    every request made here verifies against it; the server's own TLS flags go in `flags`.
    """

    preexec_fn: Optional[Callable[[], None]] = None  # run in the server's process before it starts (limits)

    def __init__(self, *flags: str, env: Optional[dict] = None, ssl_context: Optional[ssl.SSLContext] = None,
                 start_timeout_s: float = 90.0, cwd: Optional[str] = None) -> None:
        self.port = free_port()
        self.start_timeout_s = start_timeout_s  # NeMo's import alone can take a minute on busy cores
        self.cwd = cwd  # another checkout of the project to run (the benchmark's baseline); None: this one
        self.ssl_context = ssl_context
        self.flags = list(flags)
        if not any(flag.startswith("--max-realtime-load") for flag in self.flags):
            # Admission by measured load is on by default (0.9). The suite's clients stream up to 3x
            # real time, several at once on 2 shared cores: by design such a device counts as saturated
            # and newcomers would be refused at a point that depends on the machine's speed. Tests that
            # are about something else opt out here; the admission tests set the flag themselves.
            self.flags += ["--max-realtime-load", "0"]
        self.env = {**os.environ, **(env or {})}
        self.proc: Optional[subprocess.Popen] = None

    @property
    def log_path(self) -> Path:
        """Named by the test worker's pid and the port: two workers' servers never share a log."""
        return Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"wlk-server-{os.getpid()}-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}/asr"

    def start(self, attempts: int = 3) -> "ServerProcess":
        """Start the server; on a port the other test worker bound first (see `wait_healthy`), again on another."""
        for attempt in range(attempts):
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "whisperlivekit.cli", "--port", str(self.port), *self.flags],
                stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, preexec_fn=self.preexec_fn,
            )
            try:
                wait_healthy(self.base_url, self.start_timeout_s, proc=self.proc, verify=self.ssl_context or True)
                return self
            except Exception:
                self.stop()
                if "address already in use" in self.log() and attempt + 1 < attempts:
                    self.port = free_port()
                    continue
                raise RuntimeError(f"server failed to start; log:\n{self.log()}")
        raise AssertionError("unreachable")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10, verify=self.ssl_context or True, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> Optional[int]:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@contextmanager
def running_server(
    *flags: str, env: Optional[dict] = None, ssl_context: Optional[ssl.SSLContext] = None, start_timeout_s: float = 90.0,
    cwd: Optional[str] = None,
) -> Iterator[ServerProcess]:
    server = ServerProcess(*flags, env=env, ssl_context=ssl_context, start_timeout_s=start_timeout_s, cwd=cwd).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def in_process_server(app) -> Iterator[str]:
    """A real uvicorn server in a thread, for apps built with injected parts; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, ws_max_size=4 * 1024 * 1024)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, thread=thread)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    return jiwer.wer(normalise(reference), normalise(hypothesis))


def wer_of_prefix(reference: str, hypothesis: str, slack_words: int = 2) -> float:
    """WER of a transcript of the audio's first part: against the reference's first words
    (as many as the hypothesis has, give or take `slack_words` for a word cut at the end)."""
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    words = normalise(reference).split()
    n = len(normalise(hypothesis).split())
    lengths = range(max(1, n - slack_words), min(len(words), n + slack_words) + 1)
    return min(wer(" ".join(words[:k]), hypothesis) for k in lengths)


@functools.lru_cache(maxsize=None)
def cpu_audio_per_compute_s() -> float:
    """Seconds of audio one core streams per second of its time: 1 s over the cost of one 1 s step of
    tiny.en on a 10 s window (the server's CPU step), measured once per test process (best of two)."""
    import audio_assets
    from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
    from whisperlivekit.asr.types import TranscribeRequest
    from whisperlivekit.client import pcm_to_float
    from whisperlivekit.weights.resolve import resolve_model

    try:
        audio = pcm_to_float(load_pcm16(audio_assets.harvard_wav()))[: 10 * 16000]
    except audio_assets.AssetUnavailable:
        return float("inf")  # the tests that stream speech skip without it
    backend = FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1)
    try:
        costs = []
        for _ in range(2):
            started = time.perf_counter()
            backend.transcribe_batch([TranscribeRequest(audio=audio, language="en")])
            costs.append(time.perf_counter() - started)
    finally:
        backend.close()
    return 1.0 / min(costs)


# A core should carry this many times the audio streamed at once, for a test to measure the feature
# and not an overloaded server (`pace`, `room_for_real_time_streams`).
CPU_HEADROOM = 2.0


def pace(speed: float) -> float:
    """`speed` x real time where this CPU has room for it, slower (down to real time) where it has not.

    The suite streams faster than real time to save time, two test files at once. That needs a core to
    carry about twice the speed: on a 2 GHz EPYC shared with other guests one step on a 10 s window took
    ~1 s (1.0 s of audio per second of a core, against ~7 on the machines the bounds were set on), and 3x
    streams measured an overloaded server (a 30 s call cut to its first sentence, WER bounds missed by
    load) instead of the feature under test. (That cut call was LocalAgreement losing speech under load,
    since fixed: docs/architecture.md. Pacing still keeps the bounds about the feature, not the load.)"""
    return max(1.0, min(speed, cpu_audio_per_compute_s() / CPU_HEADROOM))


def room_for_real_time_streams(count: int) -> bool:
    """Whether this CPU carries `count` real-time streams at once with room to spare, by the rule of `pace`
    (a core carries twice their audio): on the 2 GHz EPYC (1.0 s of audio per core-second) three streams
    with diarization beside the other worker's tests starved the server, and a 30 s call came back cut
    after its first 12 s (at the same word as the LocalAgreement loss under load, since fixed)."""
    return cpu_audio_per_compute_s() >= CPU_HEADROOM * count


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def speech_pcm():
    """name → (pcm bytes, reference text)."""
    import audio_assets

    cache = {}

    def get(name: str):
        if name not in cache:
            if name == "harvard":
                path, text = audio_assets.harvard()
            elif name == "pyannote":
                path, text, _ = audio_assets.pyannote_call()
            else:
                path, text = audio_assets.arctic(name)
            cache[name] = (load_pcm16(path), text)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def webm():
    cache = {}

    def get(pcm: bytes) -> bytes:
        key = hash(pcm)
        if key not in cache:
            cache[key] = encode_webm_opus(pcm)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def pcm_server():
    with running_server("--pcm-input") as server:
        yield server


@pytest.fixture(scope="module")
def webm_server():
    with running_server() as server:
        yield server
