"""Dump what AlignAtt commits, step by step, on the test clips (tiny.en, CPU): a record to compare versions by.

    python3 scripts/alignatt_transcripts.py OUT.json [--beams 1 3] [--clips harvard arctic_a0007 ...]

Each clip is fed at 1 s steps through `SimulStreamingPolicy` (as the engine does), then finished.
The JSON holds, per clip and beam width, every step's new tokens and stop reason and the committed
words with their times: two runs of different code are equal when their files are. Used to check that
moving AlignAtt from openai-whisper onto our own PyTorch Whisper changed no transcript (docs/backends.md).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import audio_assets  # noqa: E402

from whisperlivekit.asr.backends.alignatt import AlignAttBackend  # noqa: E402
from whisperlivekit.asr.policies.simulstreaming import SimulStreamingPolicy  # noqa: E402
from whisperlivekit.audio import SAMPLE_RATE  # noqa: E402
from whisperlivekit.weights.resolve import resolve_model  # noqa: E402

CLIPS = {
    "harvard": lambda: audio_assets.harvard()[0],
    "arctic_a0007": lambda: audio_assets.arctic("arctic_a0007")[0],
    "arctic_a0009": lambda: audio_assets.arctic("arctic_a0009")[0],
    "pyannote": lambda: audio_assets.pyannote_call()[0],
}


def run_clip(backend, audio, beams: int, step_s: float = 1.0) -> dict:
    policy = SimulStreamingPolicy(language="en", beams=beams)
    step = int(step_s * SAMPLE_RATE)
    steps = []
    for start in range(0, len(audio), step):
        policy.append_audio(audio[start : start + step])
        result = backend.transcribe_batch([policy.next_request()])[0]
        steps.append({"new": list(result.new_tokens), "pending": list(result.pending_tokens), "stop": result.stop_reason})
        policy.apply(result)
    policy.finish()
    words = [[w.text, round(w.start, 3), round(w.end, 3)] for w in policy.committed]
    return {"text": "".join(w[0] for w in words), "words": words, "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--clips", nargs="+", default=list(CLIPS))
    args = parser.parse_args()
    model = resolve_model("tiny.en")
    kwargs = {"device": "cpu", "model_name": "tiny.en", "lanes": 1}
    accepted = inspect.signature(AlignAttBackend.__init__).parameters
    backend = AlignAttBackend(model, **{k: v for k, v in kwargs.items() if k in accepted})
    record: dict = {}
    for clip in args.clips:
        audio = audio_assets.read_wav(CLIPS[clip]())
        for beams in args.beams:
            began = time.perf_counter()
            record[f"{clip}/beams={beams}"] = run_clip(backend, audio, beams)
            print(f"{clip} beams={beams} ({time.perf_counter() - began:.1f} s): {record[f'{clip}/beams={beams}']['text']}")
    Path(args.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
