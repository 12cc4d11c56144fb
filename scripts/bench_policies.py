#!/usr/bin/env python3
"""SimulStreaming (AlignAtt) against LocalAgreement: latency and accuracy on the same clips, same run.

Starts one server per policy (both stay up for the whole run), then streams each
clip to each server in turn, as a browser would (PCM, real time by default), so
each measurement has the machine to itself. Reports per policy:

- first-partial latency: first audio frame sent → first text on screen;
- commit lag, per committed word: when the word first reached the client − when
  the audio up to the word's end was sent (p50/p95 over all words of all clips);
- WER per clip (Whisper's English normaliser);

and the ratios simulstreaming / localagreement.

    python scripts/bench_policies.py                        # tiny.en, all four clips, real time
    python scripts/bench_policies.py --model base --repeat 3 --json bench-out/policies.json
    python scripts/bench_policies.py -- --min-chunk-size 0.5     # extra flags for both servers

Word end times come from one offline transcription of each clip (faster-whisper,
word timestamps), matched to each policy's committed words by text: each policy's
own timestamps are biased (measured on the Harvard clip: AlignAtt's attention
peaks put sentence ends 0.1-0.5 s early, faster-whisper's alignment 0.2-0.5 s
late), which would favour whichever reports later ends.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import audio_assets  # noqa: E402
from conftest import ServerProcess, wer  # noqa: E402
from whisperlivekit.client import load_pcm16, stream  # noqa: E402

POLICIES = {
    "localagreement": ["--backend-policy", "localagreement"],
    "simulstreaming": ["--backend", "simulstreaming"],
}
CLIPS = ("harvard", "arctic_a0007", "arctic_a0009", "pyannote")


def clip(name: str):
    if name == "harvard":
        return audio_assets.harvard()
    if name == "pyannote":
        return audio_assets.pyannote_call()[:2]
    return audio_assets.arctic(name)


def words_of(text: str) -> List[str]:
    return [w for w in (re.sub(r"[^\w']", "", word.lower()) for word in text.split()) if w]


def timeline(model_path: Path, path: Path) -> List[Tuple[str, float]]:
    """(word, end time) of the whole clip transcribed offline: the yardstick for both policies."""
    from faster_whisper import WhisperModel

    segments, _ = WhisperModel(str(model_path), device="cpu", compute_type="int8").transcribe(
        str(path), beam_size=5, word_timestamps=True, vad_filter=False)
    return [(word, w.end) for s in segments for w in s.words for word in words_of(w.word)[:1]]


def word_lags(updates: List[Tuple[float, str]], reference: List[Tuple[str, float]], sent_at, speed: float) -> List[float]:
    """Per committed word matched to the reference timeline: first arrival − when its audio end was sent."""
    arrivals: List[float] = []
    for arrived, committed in updates:
        words = words_of(committed)
        arrivals += [arrived] * max(0, len(words) - len(arrivals))
    final = words_of(updates[-1][1]) if updates else []
    matcher = difflib.SequenceMatcher(a=final, b=[w for w, _ in reference], autojunk=False)
    lags = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            i, j = block.a + k, block.b + k
            if i < len(arrivals):
                lags.append(arrivals[i] - (sent_at + reference[j][1] / speed))
    return lags


def percentile(values: List[float], q: float) -> Optional[float]:
    """Linear interpolation between ranks (the median for q=50)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q != 50 else statistics.median(values)


def fmt(value: Optional[float]) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--speed", type=float, default=1.0, help="multiple of real time (latency needs 1.0)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("server_flags", nargs="*", help="extra server flags for both, after --")
    args = parser.parse_args()

    clips = {name: clip(name) for name in args.clips.split(",")}
    pcm = {name: load_pcm16(path) for name, (path, _) in clips.items()}
    from whisperlivekit.weights.resolve import resolve_model

    reference_times = {name: timeline(resolve_model(args.model), path) for name, (path, _) in clips.items()}
    servers: Dict[str, ServerProcess] = {}
    try:
        for policy, flags in POLICIES.items():
            print(f"starting {policy} server ...", file=sys.stderr, flush=True)
            servers[policy] = ServerProcess("--pcm-input", "--model", args.model, *flags, *args.server_flags).start()
        raw: Dict[str, Dict[str, list]] = {p: {"first_partial_s": [], "commit_lag_s": [], "wer": {}} for p in POLICIES}
        for round_ in range(args.repeat):
            for name, (_, reference) in clips.items():
                for policy, server in servers.items():
                    updates: List[Tuple[float, str]] = []

                    def on_message(message: dict) -> None:
                        if "lines" in message:
                            updates.append((time.monotonic(), " ".join(l["text"] or "" for l in message["lines"])))

                    sent_at = time.monotonic()  # the first frame goes out as soon as the socket opens (a few ms)
                    result = asyncio.run(stream(server.ws_url, pcm[name], pcm=True, speed=args.speed, on_message=on_message))
                    if not result.ended_with_ready_to_stop:
                        raise SystemExit(f"{policy} did not finish {name}: {result.close_code} {result.close_reason}")
                    numbers = raw[policy]
                    if result.first_partial_s is not None:
                        numbers["first_partial_s"].append(result.first_partial_s)
                    numbers["commit_lag_s"].extend(word_lags(updates, reference_times[name], sent_at, args.speed))
                    numbers["wer"].setdefault(name, []).append(wer(reference, result.text))
                    print(f"round {round_ + 1} {policy:15s} {name:13s} WER {numbers['wer'][name][-1]:6.1%} "
                          f"first partial {fmt(result.first_partial_s)} s", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()

    summary = {}
    print(f"\nmodel {args.model}, clips {', '.join(clips)}, speed {args.speed}x, {args.repeat} round(s)")
    print(f"{'policy':15s} {'first partial p50/p95 (s)':>26s} {'commit lag p50/p95 (s)':>24s}   WER per clip")
    for policy, numbers in raw.items():
        stats = {
            "first_partial_p50": percentile(numbers["first_partial_s"], 50),
            "first_partial_p95": percentile(numbers["first_partial_s"], 95),
            "commit_lag_p50": percentile(numbers["commit_lag_s"], 50),
            "commit_lag_p95": percentile(numbers["commit_lag_s"], 95),
            "wer": {name: statistics.mean(values) for name, values in numbers["wer"].items()},
        }
        summary[policy] = stats
        wers = "  ".join(f"{name} {value:.1%}" for name, value in stats["wer"].items())
        print(f"{policy:15s} {fmt(stats['first_partial_p50']):>12s} / {fmt(stats['first_partial_p95'])}"
              f" {fmt(stats['commit_lag_p50']):>13s} / {fmt(stats['commit_lag_p95'])}   {wers}")
    simul, local = summary["simulstreaming"], summary["localagreement"]
    ratios = {
        key: (simul[key] / local[key]) if simul[key] is not None and local[key] else None
        for key in ("first_partial_p50", "first_partial_p95", "commit_lag_p50", "commit_lag_p95")
    }
    print("ratio simulstreaming / localagreement: " + ", ".join(
        f"{key} {value:.2f}" if value is not None else f"{key} -" for key, value in ratios.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "raw": raw,
                                         "summary": summary, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
