#!/usr/bin/env python3
"""WER and cost of LocalAgreement against step size and smallest encoder window, off the clock.

    PYTHONPATH=. python scripts/measure_steps.py --steps 0.4,1.0 --windows 10
    PYTHONPATH=. python scripts/measure_steps.py --steps 1.0 --windows 4,6,10,30
    PYTHONPATH=. python scripts/measure_steps.py --steps 1.0 --loops 1,4   # a long stream: the clips 4 times

Streams the test clips (Harvard + ARCTIC a0007 + a0009 as one 18 s stream, and the 30 s
pyannote phone call) through the real policy and the real faster-whisper backend, one step
per `step` seconds of audio, without real time: the figures do not depend on the machine's
load (the timings do, and are printed only as a guide). Per configuration: WER against the
references, steps, compute seconds, decoded tokens per step and degenerate retries.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import audio_assets  # noqa: E402
from conftest import wer  # noqa: E402

from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend  # noqa: E402
from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy  # noqa: E402
from whisperlivekit.audio import SAMPLE_RATE  # noqa: E402
from whisperlivekit.client import load_pcm16, pcm_to_float  # noqa: E402
from whisperlivekit.config import Settings  # noqa: E402
from whisperlivekit.runtime.model_pool import ModelPool  # noqa: E402


def streams(loops: List[int]) -> List[Tuple[str, np.ndarray, str]]:
    """(name, audio, reference) of the streams measured: the clips once and looped, and the call."""
    parts, texts = [], []
    for path, text in (audio_assets.harvard(), audio_assets.arctic("arctic_a0007"), audio_assets.arctic("arctic_a0009")):
        parts += [pcm_to_float(load_pcm16(path)), np.zeros(SAMPLE_RATE // 2, np.float32)]
        texts.append(text)
    out = [("harvard+arctic" + (f" x{k}" if k > 1 else ""), np.concatenate(parts * k), " ".join(texts * k)) for k in loops]
    try:
        call, text, _ = audio_assets.pyannote_call()
        out.append(("pyannote call", pcm_to_float(load_pcm16(call)), text))
    except Exception as exc:  # noqa: BLE001 - the call is optional
        print(f"pyannote call unavailable: {exc}", file=sys.stderr)
    return out


def run(backend: FasterWhisperBackend, audio: np.ndarray, step_s: float, hold_back_s: float, prefix: bool = True) -> dict:
    policy = LocalAgreementPolicy(language="en", hold_back_s=hold_back_s, force_prefix=prefix)
    step = int(step_s * SAMPLE_RATE)
    compute_s, steps, tokens, retries = 0.0, 0, [], 0
    for start in range(0, len(audio), step):
        policy.append_audio(audio[start:start + step])
        started = time.perf_counter()
        result = backend.transcribe_batch([policy.next_request()])[0]
        compute_s += time.perf_counter() - started
        steps, retries = steps + 1, retries + int(result.retried)
        tokens.append(result.decoded_tokens)
        policy.apply(result)
    policy.finish()
    text = "".join(w.text for w in policy.committed)
    return {"text": text, "steps": steps, "compute_s": compute_s, "tokens_per_step": float(np.mean(tokens)), "retries": retries}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="0.4,1.0", help="step sizes in seconds")
    p.add_argument("--windows", default="10", help="smallest encoder windows in seconds")
    p.add_argument("--hold-back", default="0", help="LocalAgreement hold-back margins in seconds")
    p.add_argument("--prefix", default="on", help="force the committed words as the decoder prefix: on, off or on,off")
    p.add_argument("--loops", default="1", help="the clip stream repeated this many times (a long stream), e.g. 1,4")
    p.add_argument("--model", default="tiny.en")
    args = p.parse_args()
    path = ModelPool(Settings(model=args.model)).model_path()
    data = streams([int(k) for k in args.loops.split(",")])
    print("| step s | min window s | hold back s | prefix | stream | WER | steps | compute s | ms/step | tokens/step | retries |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for window_s in [float(x) for x in args.windows.split(",")]:
        backend = FasterWhisperBackend(path, device="cpu", min_window_s=window_s, cpu_threads=1)
        try:
            for step_s, hold_s, prefix in [(float(x), float(h), f) for x in args.steps.split(",")
                                           for h in args.hold_back.split(",") for f in args.prefix.split(",")]:
                for name, audio, reference in data:
                    r = run(backend, audio, step_s, hold_s, prefix == "on")
                    print(f"| {step_s} | {window_s:g} | {hold_s:g} | {prefix} | {name} | {wer(reference, r['text']):.3f} | {r['steps']} "
                          f"| {r['compute_s']:.1f} | {1000 * r['compute_s'] / r['steps']:.0f} | {r['tokens_per_step']:.1f} | {r['retries']} |", flush=True)
        finally:
            backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
