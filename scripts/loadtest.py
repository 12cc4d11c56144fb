#!/usr/bin/env python3
"""Load test: N clients stream real speech to `/asr` in real time, like browsers.

    python scripts/loadtest.py --url ws://127.0.0.1:8000/asr --clients 16 --ramp-s 30 --duration-s 300
    python scripts/loadtest.py --clients 2 --duration-s 30 --pcm      # server run with --pcm-input

Client i starts at i × ramp / N, then streams clips one after another, one
connection per clip, until --duration-s has passed (the clip under way
finishes). A refused connection waits --retry-s and tries again. Prints progress
while it runs, then admissions and refusals by close code, first-partial
latency, commit lag p50/p95/p99 and WER per clip; writes report.json and
report.png to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import audio_assets  # noqa: E402
from conftest import wer  # noqa: E402

from whisperlivekit.client import encode_webm_opus, load_pcm16, stream  # noqa: E402

CLIPS = {
    "harvard": audio_assets.harvard,
    "arctic_a0007": lambda: audio_assets.arctic("arctic_a0007"),
    "arctic_a0009": lambda: audio_assets.arctic("arctic_a0009"),
    "pyannote_call": lambda: audio_assets.pyannote_call()[:2],
}


def load_clips(names: List[str], pcm: bool) -> Dict[str, Tuple[bytes, float, str]]:
    """name → (payload, audio seconds, reference text); unavailable clips are left out."""
    import pytest  # audio_assets reports a missing recording as a pytest skip

    clips = {}
    for name in names:
        try:
            path, reference = CLIPS[name]()
        except pytest.skip.Exception as exc:
            print(f"clip {name} unavailable: {exc}", file=sys.stderr)
            continue
        audio = load_pcm16(path)
        clips[name] = (audio if pcm else encode_webm_opus(audio), len(audio) / 32000, reference)
    if not clips:
        raise SystemExit("no clip available")
    return clips


def percentiles(values: List[float]) -> Optional[dict]:
    if not values:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"n": len(values), "p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": round(max(values), 3)}


class LoadTest:
    def __init__(self, args: argparse.Namespace, clips: Dict[str, Tuple[bytes, float, str]]) -> None:
        self.args, self.clips = args, clips
        self.sessions: List[dict] = []
        self.active = 0
        self.timeline: List[dict] = []  # progress samples
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def client(self, index: int) -> None:
        args, names = self.args, list(self.clips)
        await asyncio.sleep(index * args.ramp_s / args.clients)
        turn = index
        while self.now() < args.duration_s:
            name = names[turn % len(names)]
            payload, audio_s, reference = self.clips[name]
            session = {"client": index, "clip": name, "start_s": round(self.now(), 3), "audio_s": round(audio_s, 2)}
            self.active += 1
            try:
                result = await asyncio.wait_for(
                    stream(args.url, payload, pcm=args.pcm, speed=args.speed), timeout=audio_s / args.speed + args.timeout_s)
                session.update(
                    admitted=result.config is not None, close_code=result.close_code, close_reason=result.close_reason,
                    device=(result.config or {}).get("device"), connect_s=round(result.connect_s, 3),
                    first_partial_s=result.first_partial_s, commit_lags_s=[round(x, 3) for x in result.commit_lags_s],
                    ready_to_stop=result.ended_with_ready_to_stop, text=result.text)
                if session["admitted"]:
                    session["wer"] = round(wer(reference, result.text), 4)
            except Exception as exc:  # connection refused, timeout, handshake rejected
                session.update(admitted=False, close_code=None, error=f"{type(exc).__name__}: {exc}"[:200])
            finally:
                self.active -= 1
            session["end_s"] = round(self.now(), 3)
            self.sessions.append(session)
            if session["admitted"]:
                turn += 1
            else:
                await asyncio.sleep(args.retry_s)

    async def progress(self) -> None:
        while True:
            server = await asyncio.to_thread(gpu_status, self.args.url)
            admitted = [s for s in self.sessions if s["admitted"]]
            lags = [x for s in admitted for x in s["commit_lags_s"]]
            sample = {"t_s": round(self.now(), 1), "active_clients": self.active, "sessions_done": len(self.sessions),
                      "admitted": len(admitted), "refused": len(self.sessions) - len(admitted),
                      "server_connections": server.get("total_connections")}
            self.timeline.append(sample)
            lag = f"{np.percentile(lags, 95):.2f}s" if lags else "-"
            print(f"[{sample['t_s']:6.1f}s] streaming {self.active:3d}  done {len(self.sessions):4d}  "
                  f"admitted {len(admitted):4d}  refused {sample['refused']:4d}  server conns {sample['server_connections']}  "
                  f"commit lag p95 {lag}", flush=True)
            await asyncio.sleep(self.args.progress_s)

    async def run(self) -> dict:
        self.t0 = time.monotonic()
        ticker = asyncio.create_task(self.progress())
        await asyncio.gather(*(self.client(i) for i in range(self.args.clients)))
        ticker.cancel()
        return self.report(self.now())

    def report(self, wall_s: float) -> dict:
        admitted = [s for s in self.sessions if s["admitted"]]
        refused = Counter(str(s["close_code"] if s.get("close_code") is not None else "error") for s in self.sessions if not s["admitted"])
        by_clip: Dict[str, List[float]] = defaultdict(list)
        for s in admitted:
            by_clip[s["clip"]].append(s["wer"])
        return {
            "config": {k: v for k, v in vars(self.args).items() if k != "out"},
            "wall_s": round(wall_s, 2),
            "summary": {
                "sessions": len(self.sessions),
                "admitted": len(admitted),
                "refused_by_close_code": dict(refused),
                "close_codes": dict(Counter(str(s.get("close_code")) for s in admitted)),
                "audio_streamed_s": round(sum(s["audio_s"] for s in admitted), 1),
                "first_partial_s": percentiles([s["first_partial_s"] for s in admitted if s["first_partial_s"] is not None]),
                "commit_lag_s": percentiles([x for s in admitted for x in s["commit_lags_s"]]),
                "wer_by_clip": {clip: {"n": len(v), "mean": round(float(np.mean(v)), 4), "max": round(max(v), 4)}
                                for clip, v in sorted(by_clip.items())},
            },
            "timeline": self.timeline,
            "sessions": self.sessions,
        }


def gpu_status(ws_url: str) -> dict:
    http = ws_url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/asr", 1)[0]
    try:
        with urllib.request.urlopen(f"{http}/gpu-status", timeout=2) as response:
            return json.load(response)
    except Exception:
        return {}


def print_summary(report: dict) -> None:
    s = report["summary"]
    print(f"\n== {report['config']['clients']} clients, {report['wall_s']:.0f} s, {s['audio_streamed_s']:.0f} s of audio transcribed")
    print(f"sessions {s['sessions']}: admitted {s['admitted']}, refused {sum(s['refused_by_close_code'].values())} "
          f"{s['refused_by_close_code']}; admitted sessions closed with {s['close_codes']}")
    for label, key in (("first partial", "first_partial_s"), ("commit lag", "commit_lag_s")):
        p = s[key]
        print(f"{label:13s}: " + (f"p50 {p['p50']:.2f} s  p95 {p['p95']:.2f} s  p99 {p['p99']:.2f} s  max {p['max']:.2f} s  (n={p['n']})" if p else "none"))
    for clip, w in s["wer_by_clip"].items():
        print(f"WER {clip:14s}: mean {w['mean']:.3f}  max {w['max']:.3f}  (n={w['n']})")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sessions = [s for s in report["sessions"] if s["admitted"]]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    timeline = report["timeline"]
    ax[0, 0].step([t["t_s"] for t in timeline], [t["active_clients"] for t in timeline], where="post", label="clients streaming")
    ax[0, 0].step([t["t_s"] for t in timeline], [t["server_connections"] or 0 for t in timeline], where="post", label="server connections")
    refusals = [s["start_s"] for s in report["sessions"] if not s["admitted"]]
    ax[0, 0].plot(refusals, [0] * len(refusals), "rx", label="refused")
    ax[0, 0].set(title="Load", xlabel="time (s)", ylim=(0, report["config"]["clients"] + 1))
    ax[0, 0].legend()
    ax[0, 1].plot([s["start_s"] for s in sessions if s["first_partial_s"]], [s["first_partial_s"] for s in sessions if s["first_partial_s"]], "o")
    ax[0, 1].set(title="First partial after first audio", xlabel="session start (s)", ylabel="s")
    lags = sorted(x for s in sessions for x in s["commit_lags_s"])
    ax[1, 0].plot(lags, np.linspace(0, 1, len(lags)) if lags else [])
    ax[1, 0].set(title="Commit lag CDF", xlabel="s", ylabel="fraction of committed lines")
    by_clip = report["summary"]["wer_by_clip"]
    ax[1, 1].bar(list(by_clip), [w["mean"] for w in by_clip.values()])
    ax[1, 1].set(title="Mean WER per clip", ylabel="WER", ylim=(0, max([0.1] + [w["mean"] * 1.2 for w in by_clip.values()])))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/asr")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--ramp-s", type=float, default=10.0, help="start the clients evenly over this many seconds")
    parser.add_argument("--duration-s", type=float, default=60.0, help="start no new clip after this many seconds")
    parser.add_argument("--pcm", action="store_true", help="send raw PCM (server run with --pcm-input); default WebM/Opus")
    parser.add_argument("--clips", default="harvard,arctic_a0007,arctic_a0009", help=f"comma-separated, from {', '.join(CLIPS)}")
    parser.add_argument("--speed", type=float, default=1.0, help="multiple of real time")
    parser.add_argument("--retry-s", type=float, default=1.0, help="wait after a refusal before reconnecting")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="allowed past the clip's length before giving up")
    parser.add_argument("--progress-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("loadtest-out"))
    args = parser.parse_args(argv)

    clips = load_clips([c.strip() for c in args.clips.split(",") if c.strip()], args.pcm)
    print(f"{args.clients} clients → {args.url} ({'PCM' if args.pcm else 'WebM/Opus'}), clips: "
          + ", ".join(f"{n} {a:.1f}s" for n, (_, a, _) in clips.items()), flush=True)
    report = asyncio.run(LoadTest(args, clips).run())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    plot(report, args.out / "report.png")
    print_summary(report)
    print(f"report: {args.out / 'report.json'}, plot: {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
