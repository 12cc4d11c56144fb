"""Diarization error rate (and JER) of a streaming diarizer on a recording with an RTTM reference.

    python scripts/diarization_der.py                      # pyannote's two-speaker phone call, offline
    python scripts/diarization_der.py --mix four           # a 4-voice mix of real recordings (tests/speaker_mixes.py)
    python scripts/diarization_der.py --wav x.wav --rttm x.rttm --backend sortformer --model m.nemo
    python scripts/diarization_der.py --server ws://127.0.0.1:8000/asr   # live, through a running server (--pcm-input)
    python scripts/diarization_der.py --loop-s 600         # a 10-minute looped session: memory and cost over time

Offline, the audio is fed in `--chunk-ms` pieces through `new_stream()`/`process()`,
as the server does, followed by `--tail-s` of silence so the last labels settle;
the script also reports the cost (CPU ms per second of audio), how long each
labelled 10 ms frame waited for its final label (delay distribution) and the
re-clustering disagreements. Live, the WAV is streamed at real time to `/asr` and
the speaker turns are the transcript lines (speaker, start, end).

Scoring is frame based (10 ms): DER = (missed + false alarm + speaker confusion) /
reference speech, overlapped speech scored, with the one-to-one mapping of
hypothesis to reference speakers that maximises agreement; with a collar, frames
within `collar` seconds of a reference turn's start or end are not scored (the
NIST convention). The DER and its components equal pyannote.metrics' `DiarizationErrorRate`
(whose `collar` is the total width: 2x ours; tests/test_diarization_der.py checks). JER is the mean over reference speakers of 1 - |ref ∩ hyp| /
|ref ∪ hyp| under the same mapping (an unmapped reference speaker counts 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAME_S = 0.01
Turn = Tuple[float, float, object]


def activity(turns: Sequence[Turn], n_frames: int) -> Tuple[np.ndarray, list]:
    """Frames x speakers boolean matrix, and the speaker of each column."""
    speakers = sorted({t[2] for t in turns}, key=str)
    matrix = np.zeros((n_frames, len(speakers)), dtype=bool)
    for start, end, speaker in turns:
        lo, hi = int(round(start / FRAME_S)), int(round(end / FRAME_S))
        matrix[max(lo, 0) : min(hi, n_frames), speakers.index(speaker)] = True
    return matrix, speakers


def scored_frames(reference: Sequence[Turn], n_frames: int, collar_s: float) -> np.ndarray:
    """Frames that count: all of them, less `collar_s` either side of every reference boundary."""
    keep = np.ones(n_frames, dtype=bool)
    if collar_s > 0:
        width = int(round(collar_s / FRAME_S))
        for start, end, _ in reference:
            for edge in (int(round(start / FRAME_S)), int(round(end / FRAME_S))):
                keep[max(edge - width, 0) : max(min(edge + width, n_frames), 0)] = False
    return keep


def der(reference: Sequence[Turn], hypothesis: Sequence[Turn], duration_s: float, collar_s: float = 0.0) -> Dict[str, float]:
    """Frame-based DER and JER with the best speaker mapping; components as fractions of reference speech."""
    from scipy.optimize import linear_sum_assignment

    n_frames = int(round(duration_s / FRAME_S))
    keep = scored_frames(reference, n_frames, collar_s)
    ref, _ = activity(reference, n_frames)
    hyp, _ = activity(hypothesis, n_frames)
    ref, hyp = ref[keep], hyp[keep]
    agreement = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # ref x hyp co-activity frames
    rows, cols = linear_sum_assignment(-agreement) if agreement.size else ([], [])
    correct = int(sum(agreement[r, c] for r, c in zip(rows, cols)))
    n_ref, n_hyp = ref.sum(axis=1), hyp.sum(axis=1)
    total = max(int(n_ref.sum()), 1)
    missed = int(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = int(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = int(np.minimum(n_ref, n_hyp).sum()) - correct
    mapped = dict(zip(rows, cols))
    jaccard = []
    for r in range(ref.shape[1]):
        if r in mapped:
            both = int(np.sum(ref[:, r] & hyp[:, mapped[r]]))
            either = int(np.sum(ref[:, r] | hyp[:, mapped[r]]))
            jaccard.append(1.0 - both / either if either else 0.0)
        else:
            jaccard.append(1.0)
    return {
        "der": (missed + false_alarm + confusion) / total,
        "jer": float(np.mean(jaccard)) if jaccard else 0.0,
        "missed": missed / total,
        "false_alarm": false_alarm / total,
        "confusion": confusion / total,
        "reference_speech_s": total * FRAME_S,
        "hypothesis_speakers": int(hyp.any(axis=0).sum()),
    }


def report(name: str, reference: Sequence[Turn], hypothesis: Sequence[Turn], duration_s: float) -> None:
    for collar in (0.0, 0.25):
        s = der(reference, hypothesis, duration_s, collar)
        print(f"{name} collar {collar:.2f} s: DER {s['der']:.1%} (missed {s['missed']:.1%}, false alarm "
              f"{s['false_alarm']:.1%}, confusion {s['confusion']:.1%}), JER {s['jer']:.1%}; "
              f"{s['hypothesis_speakers']} speakers found")


def offline(args, audio: np.ndarray):
    """Stream through the diarizer in-process; the hypothesis turns and what the streaming cost."""
    from whisperlivekit.diarization import load_diarizer

    options = {} if args.threshold is None else {"threshold": args.threshold}
    started = time.perf_counter()
    diarizer = load_diarizer(args.backend, args.device, args.model, args.max_speakers, **options)
    load_s = time.perf_counter() - started
    state = diarizer.new_stream()
    step = int(16000 * args.chunk_ms / 1000)
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    chunks += [np.zeros(step, np.float32)] * int(args.tail_s * 1000 / args.chunk_ms)
    cpu_ms, progress, fed = [], [], 0
    for chunk in chunks:
        c0 = time.process_time()
        diarizer.process(state, chunk)
        cpu_ms.append((time.process_time() - c0) * 1000)
        fed += len(chunk)
        progress.append((fed / 16000, state.processed_s))
    diarizer.close()
    cpu_ms = np.array(cpu_ms)
    print(f"backend {args.backend} on {args.device}: load {load_s:.1f} s; CPU per {args.chunk_ms} ms chunk: mean "
          f"{cpu_ms.mean():.1f} ms, p95 {np.percentile(cpu_ms, 95):.1f} ms, max {cpu_ms.max():.1f} ms; "
          f"{cpu_ms.sum() / (len(chunks) * args.chunk_ms / 1000) / 1000 * 1000:.0f} ms CPU per second of audio")
    if hasattr(state, "relabels"):
        print(f"re-clustering disagreed with {state.relabels} of {state.windows_embedded} windows "
              f"(labels already given are kept: 0 relabels emitted)")
    return state, progress


def label_delays(segments, progress, duration_s: float) -> np.ndarray:
    """For every labelled 10 ms frame: audio fed when its label became final, minus the frame's end."""
    fed = np.array([p[0] for p in progress])
    done = np.maximum.accumulate(np.array([p[1] for p in progress]))
    delays = []
    for s in segments:
        for t in np.arange(s.start, min(s.end, duration_s), FRAME_S):
            index = int(np.searchsorted(done, t + FRAME_S - 1e-9))
            if index < len(fed):
                delays.append(fed[index] - (t + FRAME_S))
    return np.array(delays)


def live(url: str, audio: np.ndarray):
    """Stream to a running server at real time; (start, end, speaker) of its final transcript lines.

    Also prints the label delay as the server reports it while the audio streams: each update's
    `remaining_time_diarization`, the audio received but not yet labelled for good. Streamed at real
    time, a frame's label becomes final when that lag has caught up with it, so the lag's distribution
    over the session is the live delay's (the decoder's own lag, small for PCM, comes on top).
    """
    from whisperlivekit.client import _parse_time, stream

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    lags: List[float] = []

    def on_message(message: dict) -> None:
        if "lines" in message and message.get("remaining_time_diarization") is not None:
            lags.append(float(message["remaining_time_diarization"]))

    result = asyncio.run(stream(url, pcm, pcm=True, speed=1.0, on_message=on_message))
    if lags:
        lag = np.array(lags[:-1] or lags)  # the last update comes after the end: nothing is left then
        print("live label delay (diarization lag per update, s): "
              + ", ".join(f"p{q} {np.percentile(lag, q):.2f}" for q in (50, 90, 99))
              + f", max {lag.max():.2f}; {np.mean(lag <= 2.0):.1%} of updates within 2 s ({len(lag)} updates)")
    lines = (result.final or {}).get("lines", [])
    return [(_parse_time(l["start"]), _parse_time(l["end"]), l["speaker"]) for l in lines
            if l.get("text") and l.get("speaker", 0) > 0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wav", type=Path, help="16 kHz mono 16-bit WAV (default: pyannote's sample call)")
    parser.add_argument("--rttm", type=Path, help="reference speaker turns")
    parser.add_argument("--mix", choices=["three", "four"], help="a mix of real voices from tests/speaker_mixes.py")
    parser.add_argument("--server", help="ws://HOST:PORT/asr of a running server (--pcm-input): score it live")
    parser.add_argument("--backend", default="embedding", choices=["embedding", "sortformer"])
    parser.add_argument("--model", default=None, help="sortformer: .nemo path or hub name; embedding: .onnx path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-speakers", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=None, help="embedding: clustering similarity threshold")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--tail-s", type=float, default=2.5)
    parser.add_argument("--loop-s", type=float, default=0.0, help="loop the audio to this length (long-session check)")
    parser.add_argument("--show", action="store_true", help="print the hypothesis segments")
    args = parser.parse_args(argv)

    from tests.audio_assets import pyannote_sample, read_wav, rttm_turns

    if args.mix:
        from tests.speaker_mixes import build

        audio, reference, _ = build(args.mix)
        name = f"mix '{args.mix}'"
    else:
        if args.wav is None:
            args.wav, default_rttm = pyannote_sample()
            args.rttm = args.rttm or default_rttm
        if args.rttm is None:
            parser.error("--rttm is needed with --wav")
        audio, reference, name = read_wav(args.wav), rttm_turns(args.rttm), args.wav.name
    if args.loop_s > 0:
        period = len(audio) / 16000
        copies = int(np.ceil(args.loop_s / period))
        reference = [(s + k * period, e + k * period, who) for k in range(copies) for s, e, who in reference]
        audio = np.tile(audio, copies)
    duration_s = len(audio) / 16000
    print(f"{name}: {duration_s:.1f} s, {len(reference)} reference turns")

    if args.server:
        hypothesis = live(args.server, audio)
    else:
        state, progress = offline(args, audio)
        hypothesis = [(s.start, min(s.end, duration_s), s.speaker) for s in state.segments if s.start < duration_s]
        delays = label_delays(state.segments, progress, duration_s)
        if len(delays):
            print("label delay (s): " + ", ".join(f"p{q} {np.percentile(delays, q):.2f}" for q in (50, 90, 99))
                  + f", max {delays.max():.2f}; {np.mean(delays <= 2.0):.1%} within 2 s")
        if args.loop_s > 0 and hasattr(state, "history"):
            print(f"state after {duration_s:.0f} s: audio buffer {len(state.audio) / 16000:.1f} s, history "
                  f"{len(state.history)} windows, {len(state.segments)} segments")
    if args.show:
        for start, end, speaker in hypothesis:
            print(f"  {start:7.2f} {end:7.2f}  speaker {speaker}")
    report(name, reference, hypothesis, duration_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
