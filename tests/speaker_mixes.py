"""Conversations of 3 and 4 real voices, built from recordings that registry packages ship.

Voices (all real people, no synthetic speech):
- `harvard_man`, `harvard_woman`: the Harvard sentences of Debian `codec2-examples` (16 kHz);
- `call_a`, `call_b`: the two people of pyannote's phone call (`pyannote.audio` wheel), their
  single-speaker stretches only (no overlap);
- `radio_ve`, `radio_vk`, `kristoff`: 8 kHz recordings of three men in `codec2-examples`
  (`ve9qrp.raw`, `vk5qi.raw`, `kristoff.raw`), brought to 16 kHz with ffmpeg.

`MIXES` lists turns of 2 to 8 s with back-and-forth; `build(name)` returns the
audio, reference turns `(start_s, end_s, speaker)` and a 10 ms per-frame reference
of audible speech.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from tests.audio_assets import harvard_wav, pyannote_sample, read_wav

SR = 16_000
CODEC2_RAW = Path("/usr/share/codec2/raw")

# (voice, start_s, end_s) within that voice's recording, then the gap before the next turn.
MIXES: Dict[str, List[Tuple[str, float, float, float]]] = {
    "three": [
        ("harvard_man", 0.05, 2.55, 0.4),
        ("harvard_woman", 2.70, 5.60, 0.3),
        ("radio_ve", 10.0, 14.0, 0.5),
        ("harvard_man", 5.65, 7.85, 0.2),
        ("radio_ve", 20.0, 23.5, 0.4),
        ("harvard_woman", 7.90, 10.75, 0.5),
        ("radio_ve", 30.0, 33.0, 0.4),
    ],
    "four": [
        ("call_a", 10.75, 14.45, 0.4),
        ("radio_vk", 0.0, 4.0, 0.3),
        ("call_b", 14.75, 17.9, 0.5),
        ("kristoff", 0.0, 2.5, 0.2),
        ("call_a", 18.6, 21.45, 0.4),
        ("radio_vk", 5.0, 9.0, 0.3),
        ("call_b", 21.8, 27.8, 0.5),
        ("kristoff", 2.5, 5.0, 0.4),
    ],
}


def _codec2_raw(name: str) -> np.ndarray:
    path = CODEC2_RAW / name
    done = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "s16le", "-ar", "8000", "-ac", "1",
                           "-i", str(path), "-ar", str(SR), "-f", "s16le", "-"], capture_output=True, check=True)
    return np.frombuffer(done.stdout, dtype="<i2").astype(np.float32) / 32768.0


def voices() -> Dict[str, np.ndarray]:
    """Each voice's whole recording at 16 kHz (call voices: the whole call; cut by the turns)."""
    harvard = read_wav(harvard_wav())
    call = read_wav(pyannote_sample()[0])
    return {
        "harvard_man": harvard,
        "harvard_woman": harvard,
        "call_a": call,
        "call_b": call,
        "radio_ve": _codec2_raw("ve9qrp.raw"),
        "radio_vk": _codec2_raw("vk5qi.raw"),
        "kristoff": _codec2_raw("kristoff.raw"),
    }


def build(name: str, tail_s: float = 0.0):
    """(audio, turns, frame_reference) of a mix; each clip levelled to -26 dBFS like a call."""
    sources = voices()
    audio: List[np.ndarray] = []
    turns, frames = [], []
    t = 0.0
    for voice, start_s, end_s, gap_s in MIXES[name]:
        clip = sources[voice][int(start_s * SR) : int(end_s * SR)]
        clip = clip[: len(clip) // 160 * 160]
        clip = clip * (10 ** (-26 / 20) / max(float(np.sqrt(np.mean(clip ** 2))), 1e-6))
        level = 10 * np.log10(np.mean(clip.reshape(-1, 160) ** 2, axis=1) + 1e-10)
        frames += [voice if audible else "" for audible in level > level.max() - 35]
        audio += [clip.astype(np.float32), np.zeros(int(gap_s * SR), np.float32)]
        frames += [""] * int(round(gap_s * 100))
        turns.append((t, t + len(clip) / SR, voice))
        t += len(clip) / SR + gap_s
    audio.append(np.zeros(int(tail_s * SR), np.float32))
    frames += [""] * int(round(tail_s * 100))
    return np.concatenate(audio), turns, np.array(frames, dtype=object)
