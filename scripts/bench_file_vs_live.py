#!/usr/bin/env python3
"""Benchmark: do uploaded files make live streams lag? And the batch endpoint's real-time factor.

    PYTHONPATH=. python scripts/bench_file_vs_live.py                 # tiny.en on the CPU
    PYTHONPATH=. python scripts/bench_file_vs_live.py --live 4 --device cuda --model base

One server (`--pcm-input`). Three rounds, each on the same live workload (`--live` streams of
the Harvard and ARCTIC clips back to back, ~17 s, at real time):
  1. live streams alone: their commit lag (audio sent → its words committed);
  2. the same live streams while files of `--file-seconds` (the 30 s phone call and the clips, over
     and over, so that no 30 s window repeats itself; WebM/Opus) are
     uploaded one after another to `POST /v1/audio/transcriptions` with the `openai` SDK for as
     long as the streams run: the live commit lag again, and each file's real-time factor;
  3. one file alone: the batch endpoint's real-time factor (wall seconds / audio seconds).
Prints a JSON report; the figure to read is `lag_p95_ratio` (round 2 / round 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import audio_assets  # noqa: E402
from conftest import running_server, wer  # noqa: E402

from whisperlivekit.client import encode_webm_opus, load_pcm16, stream  # noqa: E402

CLIP_NAMES = ("harvard", "arctic_a0007", "arctic_a0009")
SAMPLE_BYTES_PER_S = 32_000  # 16 kHz, 16-bit mono


def load_clips() -> List[Tuple[bytes, str]]:
    clips = []
    for name in CLIP_NAMES:
        path, reference = audio_assets.harvard() if name == "harvard" else audio_assets.arctic(name)
        clips.append((load_pcm16(path), reference))
    return clips


def load_call() -> Tuple[bytes, str]:
    path, reference, _ = audio_assets.pyannote_call()
    return load_pcm16(path), reference


def pct(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 3)


async def live_round(ws_url: str, n: int, pcm: bytes, reference: str) -> dict:
    results = await asyncio.gather(*(stream(ws_url, pcm, pcm=True, speed=1.0) for _ in range(n)))
    lags = [lag for r in results for lag in r.commit_lags_s]
    return {
        "streams": n, "commit_lag_p50_s": pct(lags, 0.5), "commit_lag_p95_s": pct(lags, 0.95),
        "wer_mean": round(statistics.mean(wer(reference, r.text) for r in results), 4),
        "clean_ends": sum(1 for r in results if r.ended_with_ready_to_stop and r.close_code == 1000),
    }


async def upload(client, payload: bytes, audio_s: float, reference: str) -> dict:
    started = time.monotonic()
    result = await client.audio.transcriptions.create(model="whisper-1", file=("file.webm", payload))
    wall_s = time.monotonic() - started
    return {"audio_s": round(audio_s, 1), "wall_s": round(wall_s, 2), "rtf": round(wall_s / audio_s, 4),
            "wer": round(wer(reference, result.text), 4)}


async def files_during_live(base_url: str, ws_url: str, n: int, pcm: bytes, reference: str, file_payload: bytes,
                            file_audio_s: float, file_reference: str) -> Tuple[dict, List[dict]]:
    import openai

    client = openai.AsyncOpenAI(api_key="unused", base_url=base_url + "/v1", max_retries=0, timeout=600)
    live = asyncio.create_task(live_round(ws_url, n, pcm, reference))
    await asyncio.sleep(1.0)
    files: List[dict] = []
    while not live.done():
        files.append(await upload(client, file_payload, file_audio_s, file_reference))
    return await live, files


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", type=int, default=2, help="live streams")
    parser.add_argument("--file-seconds", type=float, default=120.0, help="length of each uploaded file")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    clips = load_clips()
    live_pcm = b"".join(pcm for pcm, _ in clips)
    live_reference = " ".join(text for _, text in clips)
    # A file that repeats the same 18 s would trip Whisper's compression-ratio check in every window
    # (temperature fallback: ~10x slower, not what real files do); the call between copies prevents it.
    call_pcm, call_reference = load_call()
    unit = call_pcm + live_pcm
    repeats = max(1, round(args.file_seconds * SAMPLE_BYTES_PER_S / len(unit)))
    file_pcm = unit * repeats
    file_reference = " ".join([call_reference + " " + live_reference] * repeats)
    file_audio_s = len(file_pcm) / SAMPLE_BYTES_PER_S
    file_payload = encode_webm_opus(file_pcm)

    flags = ("--pcm-input", "--model", args.model, "--device", args.device, "--max-cpu-connections", "16",
             "--max-file-bytes", str(max(len(file_payload) * 2, 26_214_400)))
    report: Dict[str, object] = {"model": args.model, "device": args.device, "live_audio_s": round(len(live_pcm) / SAMPLE_BYTES_PER_S, 1)}
    with running_server(*flags) as server:
        report["live_alone"] = asyncio.run(live_round(server.ws_url, args.live, live_pcm, live_reference))
        live, files = asyncio.run(files_during_live(server.base_url, server.ws_url, args.live, live_pcm, live_reference,
                                                    file_payload, file_audio_s, file_reference))
        report["live_with_files"] = live
        report["files_during_live"] = files

        import openai

        alone = asyncio.run(upload(openai.AsyncOpenAI(api_key="unused", base_url=server.base_url + "/v1", max_retries=0,
                                                      timeout=600), file_payload, file_audio_s, file_reference))
        report["file_alone"] = alone
    before, after = report["live_alone"]["commit_lag_p95_s"], live["commit_lag_p95_s"]  # type: ignore[index]
    report["lag_p95_ratio"] = round(after / before, 3) if before and after else None
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
