"""Diarization error rate of a streaming diarizer on a recording with an RTTM reference.

    python scripts/diarization_der.py                      # pyannote's two-speaker phone call
    python scripts/diarization_der.py --wav x.wav --rttm x.rttm --backend sortformer --model m.nemo

The audio is fed in `--chunk-ms` pieces through `new_stream()`/`process()`, as
the server does, followed by `--tail-s` of silence so the last labels settle.
DER is frame based (10 ms frames, no collar, overlapped speech scored):
(missed + false alarm + speaker confusion) / reference speech, with the
one-to-one mapping of hypothesis to reference speakers that maximises
agreement.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAME_S = 0.01


def activity(turns: Sequence[Tuple[float, float, object]], n_frames: int) -> Tuple[np.ndarray, list]:
    """Frames x speakers boolean matrix, and the speaker of each column."""
    speakers = sorted({t[2] for t in turns}, key=str)
    matrix = np.zeros((n_frames, len(speakers)), dtype=bool)
    for start, end, speaker in turns:
        lo, hi = int(round(start / FRAME_S)), int(round(end / FRAME_S))
        matrix[max(lo, 0) : min(hi, n_frames), speakers.index(speaker)] = True
    return matrix, speakers


def der(reference: Sequence[Tuple[float, float, object]], hypothesis: Sequence[Tuple[float, float, object]],
        duration_s: float) -> Dict[str, float]:
    """Frame-based DER with the best speaker mapping; components as fractions of reference speech."""
    from scipy.optimize import linear_sum_assignment

    n_frames = int(round(duration_s / FRAME_S))
    ref, _ = activity(reference, n_frames)
    hyp, _ = activity(hypothesis, n_frames)
    agreement = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # ref x hyp co-activity frames
    rows, cols = linear_sum_assignment(-agreement) if agreement.size else ([], [])
    correct = int(sum(agreement[r, c] for r, c in zip(rows, cols)))
    n_ref, n_hyp = ref.sum(axis=1), hyp.sum(axis=1)
    total = int(n_ref.sum())
    missed = int(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = int(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = int(np.minimum(n_ref, n_hyp).sum()) - correct
    return {
        "der": (missed + false_alarm + confusion) / total,
        "missed": missed / total,
        "false_alarm": false_alarm / total,
        "confusion": confusion / total,
        "reference_speech_s": total * FRAME_S,
        "hypothesis_speakers": int(hyp.any(axis=0).sum()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wav", type=Path, help="16 kHz mono 16-bit WAV (default: pyannote's sample call)")
    parser.add_argument("--rttm", type=Path, help="reference speaker turns")
    parser.add_argument("--backend", default="embedding", choices=["embedding", "sortformer"])
    parser.add_argument("--model", default=None, help="sortformer: .nemo path or hub name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-speakers", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=None, help="embedding: clustering similarity threshold")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--tail-s", type=float, default=2.0)
    parser.add_argument("--show", action="store_true", help="print the hypothesis segments")
    args = parser.parse_args(argv)

    from tests.audio_assets import pyannote_sample, read_wav
    from whisperlivekit.diarization import load_diarizer

    if args.wav is None:
        args.wav, default_rttm = pyannote_sample()
        args.rttm = args.rttm or default_rttm
    if args.rttm is None:
        parser.error("--rttm is needed with --wav")
    audio = read_wav(args.wav)
    from tests.audio_assets import rttm_turns

    reference = rttm_turns(args.rttm)

    options = {} if args.threshold is None else {"threshold": args.threshold}
    started = time.perf_counter()
    diarizer = load_diarizer(args.backend, args.device, args.model, args.max_speakers, **options)
    load_s = time.perf_counter() - started
    state = diarizer.new_stream()
    step = int(16000 * args.chunk_ms / 1000)
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    chunks += [np.zeros(step, np.float32)] * int(args.tail_s * 1000 / args.chunk_ms)
    costs = []
    for chunk in chunks:
        t0 = time.perf_counter()
        diarizer.process(state, chunk)
        costs.append(time.perf_counter() - t0)
    diarizer.close()

    duration_s = len(audio) / 16000
    hypothesis = [(s.start, min(s.end, duration_s), s.speaker) for s in state.segments if s.start < duration_s]
    scores = der(reference, hypothesis, duration_s)
    if args.show:
        for start, end, speaker in hypothesis:
            print(f"  {start:7.2f} {end:7.2f}  speaker {speaker}")
    costs_ms = np.array(costs) * 1000
    print(f"{args.wav.name}: {duration_s:.1f} s, {len(reference)} reference turns, backend {args.backend} on {args.device}")
    print(
        f"DER {scores['der']:.1%} (missed {scores['missed']:.1%}, false alarm {scores['false_alarm']:.1%}, "
        f"confusion {scores['confusion']:.1%}); {scores['hypothesis_speakers']} speakers found"
    )
    print(
        f"load {load_s:.1f} s; per {args.chunk_ms} ms chunk: mean {costs_ms.mean():.1f} ms, "
        f"p95 {np.percentile(costs_ms, 95):.1f} ms, max {costs_ms.max():.1f} ms "
        f"(real-time factor {sum(costs) / (len(chunks) * args.chunk_ms / 1000):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
