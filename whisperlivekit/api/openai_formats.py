"""OpenAI's transcription response formats, built from decoded file segments: `json`'s text and
usage, `text`, `srt`, `vtt`, `verbose_json` (segments and/or words), and server-sent events."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Sequence

from whisperlivekit.asr.types import FileSegment

MS_PER_S = 10**3


def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(max(0.0, seconds) * MS_PER_S))
    hours, ms = divmod(ms, 3600 * MS_PER_S)
    minutes, ms = divmod(ms, 60 * MS_PER_S)
    secs, ms = divmod(ms, MS_PER_S)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def srt(segments: List[FileSegment]) -> str:
    return "".join(
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n\n" for i, s in enumerate(segments, 1)
    )


def vtt(segments: List[FileSegment]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments)


def usage(duration_s: float) -> dict:
    return {"type": "duration", "seconds": int(math.ceil(duration_s))}


def verbose_json(granularities: Sequence[str], language: str, duration_s: float, segments: List[FileSegment]) -> dict:
    body: Dict[str, Any] = {"task": "transcribe", "language": language, "duration": round(duration_s, 3),
                            "text": text(segments)}
    if not granularities or "segment" in granularities:
        body["segments"] = [
            {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
             "temperature": s.temperature, "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
             "no_speech_prob": s.no_speech_prob}
            for s in segments
        ]
    if "word" in granularities:
        body["words"] = [{"word": w.text.strip(), "start": w.start, "end": w.end, "probability": w.probability}
                         for s in segments for w in s.words]
    body["usage"] = usage(duration_s)
    return body


def text(segments: List[FileSegment]) -> str:
    return "".join(s.text for s in segments).strip()


def sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def diarized_json(duration_s: float, segments: List[FileSegment], speakers: Sequence[int]) -> dict:
    """`diarized_json`: runs of consecutive words with one speaker (`speakers`: one per word, in
    order; 1-based, 0 = unknown), named A, B, ... in order of appearance."""
    words = [w for s in segments for w in s.words]
    names: Dict[int, str] = {}
    runs: List[Dict[str, Any]] = []
    for word, speaker in zip(words, speakers):
        name = names.setdefault(speaker, chr(ord("A") + len(names)) if speaker else "unknown")
        if runs and runs[-1]["speaker"] == name:
            runs[-1]["end"], runs[-1]["text"] = word.end, runs[-1]["text"] + word.text
        else:
            runs.append({"type": "transcript.text.segment", "id": f"seg_{len(runs)}", "start": word.start,
                         "end": word.end, "text": word.text, "speaker": name})
    for run in runs:
        run["text"] = run["text"].strip()
    return {"task": "transcribe", "duration": round(duration_s, 3), "text": text(segments), "segments": runs,
            "usage": usage(duration_s)}
