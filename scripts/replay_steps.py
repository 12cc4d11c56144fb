#!/usr/bin/env python3
"""LocalAgreement with fast steps, replayed off the clock: commit lag, WER and wrong commits.

    PYTHONPATH=. python scripts/replay_steps.py --patterns 12 --step 0.4,0.55
    PYTHONPATH=. python scripts/replay_steps.py --step 0.9,1.2 --compute-s 0.4   # a loaded server's steps
    PYTHONPATH=. python scripts/replay_steps.py --step 0.9,1.2 --sure-min-probability 0   # without the sure-word rule
    PYTHONPATH=/path/to/other/checkout python scripts/replay_steps.py ...   # the same patterns on other code

Streams three cases through the real policy (`LocalAgreementPolicy.from_settings`, default
settings: fast steps, spaced votes) and the real faster-whisper backend, one step per random
0.4-0.55 s of audio (a seeded pattern per run, the same on any code):
  clean  Harvard + ARCTIC a0007 + a0009 as one 18 s stream;
  mp3    Harvard through 32 kbit/s MP3, where tiny.en flips between "canoe" and "cano"
         (`test_bad_input`'s case): the count of runs that committed "cano" is the wrong-commit rate;
  call   the 30 s pyannote phone call (fewer patterns: it is slow and noisy).
Commit lag of a step that commits = its audio end + --compute-s (a live step's cost) - the end of
its last committed word, as the live bench measures it per line update; the end-of-stream flush
is left out, as it is live. Figures depend on the code and the patterns, not on the machine's load.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import audio_assets  # noqa: E402
from conftest import wer  # noqa: E402
from measure_steps import streams  # noqa: E402

import whisperlivekit  # noqa: E402
from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend  # noqa: E402
from whisperlivekit.asr.policies import local_agreement  # noqa: E402
from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy  # noqa: E402
from whisperlivekit.audio import SAMPLE_RATE  # noqa: E402
from whisperlivekit.client import pcm_to_float  # noqa: E402
from whisperlivekit.config import Settings  # noqa: E402
from whisperlivekit.runtime.model_pool import ModelPool  # noqa: E402


def through_mp3(path: Path, bitrate: str = "32k") -> np.ndarray:
    """`path` encoded to MP3 and decoded back to 16 kHz float samples (ffmpeg)."""
    encode = ["ffmpeg", "-loglevel", "error", "-i", str(path), "-c:a", "libmp3lame", "-b:a", bitrate, "-f", "mp3", "-"]
    mp3 = subprocess.run(encode, capture_output=True, check=True).stdout
    decode = ["ffmpeg", "-loglevel", "error", "-i", "-", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    pcm = subprocess.run(decode, input=mp3, capture_output=True, check=True).stdout
    return pcm_to_float(pcm)


def cases() -> Dict[str, Tuple[np.ndarray, str]]:
    """The clip stream and the call of the fixed-step measurement (`measure_steps.streams`), and MP3 Harvard."""
    measured = {name: (audio, reference) for name, audio, reference in streams([1])}
    harvard, harvard_text = audio_assets.harvard()
    return {"clean": measured["harvard+arctic"], "mp3": (through_mp3(harvard), harvard_text), "call": measured["pyannote call"]}


def replay(backend: FasterWhisperBackend, audio: np.ndarray, steps_s: List[float], compute_s: float,
           sure_min_probability: Optional[float]) -> Tuple[str, List[float]]:
    """The committed text and the commit lags of one stream stepped at `steps_s`."""
    policy = LocalAgreementPolicy.from_settings(Settings(), language="en")
    policy.sure_min_probability = sure_min_probability
    lags: List[float] = []
    position, i = 0, 0
    while position < len(audio):
        step = int(steps_s[i % len(steps_s)] * SAMPLE_RATE)
        policy.append_audio(audio[position:position + step])
        position, i = position + step, i + 1
        committed = policy.apply(backend.transcribe_batch([policy.next_request()])[0])
        if committed:
            lags.append(position / SAMPLE_RATE + compute_s - committed[-1].end)
    policy.finish()
    return "".join(w.text for w in policy.committed), lags


def pct(values: List[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", type=int, default=12, help="step patterns per case (the call gets a quarter)")
    p.add_argument("--step", default="0.4,0.55", help="range of a step's audio in seconds: low,high")
    p.add_argument("--compute-s", type=float, default=0.12, help="a live step's cost, added to each lag")
    p.add_argument("--cases", default="clean,mp3,call")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sure-min-probability", type=float, default=getattr(local_agreement, "SURE_MIN_PROBABILITY", 0.0),
                   help="a vote commits the words its hypothesis alone is this sure of (local_agreement.py); 0: off "
                   "(code older than that rule ignores it)")
    p.add_argument("--model", default="tiny.en")
    args = p.parse_args()
    low, high = (float(x) for x in args.step.split(","))
    print(f"code: {Path(whisperlivekit.__file__).resolve().parent.parent}", flush=True)
    backend = FasterWhisperBackend(ModelPool(Settings(model=args.model)).model_path(), device="cpu", cpu_threads=1)
    data = cases()
    print("| case | runs | WER mean | WER max | 'cano' runs | commit lag p50 / p95 s (n) |")
    print("|---|---|---|---|---|---|")
    try:
        for name in args.cases.split(","):
            audio, reference = data[name]
            runs = max(1, args.patterns // 4) if name == "call" else args.patterns
            rng = random.Random(f"{args.seed}-{name}")
            wers, lags, cano = [], [], 0
            for _ in range(runs):
                steps = [round(rng.uniform(low, high), 2) for _ in range(64)]
                text, run_lags = replay(backend, audio, steps, args.compute_s, args.sure_min_probability or None)
                wers.append(wer(reference, text))
                lags += run_lags
                cano += int(" cano " in f" {text.lower().replace(',', ' ').replace('.', ' ')} ")
                print(f"  {name}: WER {wers[-1]:.3f}, lag p95 {pct(run_lags, 95):.2f} s: {text.strip()[:90]}", file=sys.stderr, flush=True)
            print(f"| {name} | {runs} | {np.mean(wers):.3f} | {max(wers):.3f} | {cano} of {runs} "
                  f"| {pct(lags, 50):.2f} / {pct(lags, 95):.2f} ({len(lags)}) |", flush=True)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
