"""Speaker labels and voice activity through the live /asr path."""

from __future__ import annotations

import itertools
import subprocess

import pytest

from conftest import pace, room_for_real_time_streams, run, running_server, wer
from whisperlivekit.client import stream

pytestmark = pytest.mark.slow

SR = 16000


def _parse(t: str) -> float:
    h, m, s = t.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _alternating_two_voices(speech_pcm):
    """ARCTIC a0007 (a man) and a0009 (a woman), alternating with 0.5 s gaps; returns pcm and reference turns."""
    man, _ = speech_pcm("arctic_a0007")
    woman, _ = speech_pcm("arctic_a0009")
    gap = b"\0\0" * (SR // 2)
    parts, turns, t = [], [], 0.0
    for clip, who in ((man, "man"), (woman, "woman"), (man, "man"), (woman, "woman")):
        duration = len(clip) / 2 / SR
        parts += [clip, gap]
        turns.append((t, t + duration, who))
        t += duration + 0.5
    return b"".join(parts), turns


def _speaker_accuracy(lines, turns, names=("man", "woman")):
    """Share of reference speech time (covered by transcript lines) whose line speaker is right, best mapping."""
    spoken = [(_parse(l["start"]), _parse(l["end"]), l["speaker"]) for l in lines if l.get("text")]
    labels = sorted({s for *_, s in spoken})
    best = 0.0
    candidates = list(names) + [f"extra{i}" for i in range(max(0, len(labels) - len(names)))]
    for mapping in itertools.permutations(candidates, len(labels)):
        assign = dict(zip(labels, mapping))
        right = covered = 0.0
        for ts, te, who in turns:
            for ls, le, speaker in spoken:
                overlap = max(0.0, min(te, le) - max(ts, ls))
                covered += overlap
                right += overlap if assign[speaker] == who else 0.0
        best = max(best, right / covered if covered else 0.0)
    return best, labels


@pytest.fixture(scope="module")
def diarizing_server():
    """One server for every diarization case (the CPU embedding diarizer, real Whisper tiny.en)."""
    with running_server("--pcm-input", "--diarization") as server:
        yield server


def _pcm(audio) -> bytes:
    import numpy as np

    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _line_turns(lines):
    return [(_parse(l["start"]), _parse(l["end"]), l["speaker"]) for l in lines if l.get("text") and l["speaker"] > 0]


def test_two_different_voices_get_two_speakers_right(diarizing_server, speech_pcm):
    pcm, turns = _alternating_two_voices(speech_pcm)
    result = run(stream(diarizing_server.ws_url, pcm, pcm=True, speed=pace(2.0)))
    assert result.ended_with_ready_to_stop
    final = result.final
    accuracy, labels = _speaker_accuracy(final["lines"], turns)
    print(f"speaker accuracy {accuracy:.1%}, speakers {labels}")
    assert len(labels) == 2, final["lines"]
    # Issue 17's goal. Line time also carries Whisper's word timings at the turn edges: 95-97 % while a
    # frame's label waited for the next window, 100 % in four runs since labels settle a hop earlier.
    assert accuracy >= 0.95, final["lines"]
    assert all(isinstance(m["buffer_diarization"], str) for m in result.updates)
    assert any(m["remaining_time_diarization"] > 0 for m in result.updates[:-1])
    assert final["remaining_time_diarization"] == 0 and final["buffer_diarization"] == ""


def test_phone_call_and_three_and_four_voice_mixes_streamed_at_real_time(diarizing_server):
    """The pyannote call (DER against its RTTM) and the 3- and 4-voice mixes, at real time: three streams at
    once where the CPU has room for them (`room_for_real_time_streams`), else one after another."""
    import asyncio
    import sys
    from pathlib import Path

    from tests.audio_assets import AssetUnavailable, pyannote_sample, read_wav, rttm_turns

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from diarization_der import der
    from tests.speaker_mixes import build

    try:
        call_wav, call_rttm = pyannote_sample()
        mixes = {name: build(name) for name in ("three", "four")}
    except (AssetUnavailable, OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"test audio unavailable: {exc}")
    call = read_wav(call_wav)

    streams = [stream(diarizing_server.ws_url, _pcm(audio), pcm=True, speed=1.0)
               for audio in [call] + [m[0] for m in mixes.values()]]

    async def all_three():
        if room_for_real_time_streams(len(streams)):
            return await asyncio.gather(*streams)
        return [await one for one in streams]  # a slow CPU: one after another, each still at real time

    call_result, *mix_results = run(all_three())
    assert call_result.ended_with_ready_to_stop and all(r.ended_with_ready_to_stop for r in mix_results)

    hypothesis = _line_turns(call_result.final["lines"])
    scores = {collar: der(rttm_turns(call_rttm), hypothesis, len(call) / SR, collar) for collar in (0.0, 0.25)}
    print("call: " + "; ".join(f"collar {c}: DER {s['der']:.1%} (missed {s['missed']:.1%}, false alarm "
                               f"{s['false_alarm']:.1%}, confusion {s['confusion']:.1%})" for c, s in scores.items()))
    assert scores[0.0]["hypothesis_speakers"] == 2, call_result.final["lines"]
    assert scores[0.25]["der"] <= 0.25, call_result.final["lines"]
    assert scores[0.0]["der"] <= 0.35, call_result.final["lines"]  # lines span the pauses between words

    for (name, (_, turns, _)), result in zip(mixes.items(), mix_results):
        accuracy, labels = _speaker_accuracy(result.final["lines"], turns, names=sorted({t[2] for t in turns}))
        print(f"mix {name}: speaker accuracy {accuracy:.1%}, speakers {labels}")
        assert len(labels) == len({t[2] for t in turns}), result.final["lines"]
        assert accuracy >= 0.85, result.final["lines"]


def test_silence_around_speech_gives_no_hallucinated_text_and_a_silence_line(speech_pcm):
    speech, reference = speech_pcm("arctic_a0009")
    silence = b"\0\0" * (10 * SR)
    with running_server("--pcm-input") as server:
        result = run(stream(server.ws_url, silence + speech + silence, pcm=True, speed=pace(4.0)))
    lines = result.final["lines"]
    spoken = [l for l in lines if l.get("text")]
    speech_end_s = 10 + len(speech) / 2 / SR
    # text only where the speech is: a line invented in the silence would start after it; the last word's end
    # time may stretch into the silence by a second or so (Whisper's word timing)
    assert spoken and all(9.5 <= _parse(l["start"]) <= speech_end_s and _parse(l["end"]) <= speech_end_s + 2.5
                          for l in spoken), lines
    assert wer(reference, " ".join(l["text"] for l in spoken)) <= 0.10
    silences = [l for l in lines if l["speaker"] == -2]
    assert silences and silences[0]["text"] == "" and _parse(silences[0]["end"]) >= 9.0
    assert any(m["status"] == "no_audio_detected" for m in result.updates), "10 s of silence should be reported"


def test_sortformer_from_a_local_nemo_file_streams_speaker_labels(tmp_path, speech_pcm):
    pytest.importorskip("nemo.collections.asr")
    from sortformer_tiny import build_tiny_sortformer_nemo

    nemo = build_tiny_sortformer_nemo(tmp_path / "tiny.nemo")
    pcm, _ = _alternating_two_voices(speech_pcm)
    with running_server("--pcm-input", "--diarization", "--diarization-backend", "sortformer",
                        "--diarization-model", str(nemo), "--max-speakers", "4") as server:
        result = run(stream(server.ws_url, pcm, pcm=True, speed=pace(2.0)))
        log = server.log()
    assert "Loaded sortformer diarizer on cpu" in log
    assert result.ended_with_ready_to_stop
    spoken = [l for l in result.final["lines"] if l.get("text")]
    assert spoken and all(l["speaker"] in (0, 1, 2, 3, 4) for l in spoken)  # random weights: any speaker, valid ids
    assert all(isinstance(m["remaining_time_diarization"], float) for m in result.updates)


def test_missing_sortformer_model_refuses_to_start(tmp_path):
    pytest.importorskip("nemo.collections.asr")
    import sys

    done = subprocess.run([sys.executable, "-m", "whisperlivekit.cli", "--diarization", "--diarization-backend", "sortformer",
                           "--diarization-model", str(tmp_path / "missing.nemo"), "--port", "1"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2 and "missing.nemo" in done.stderr.strip().splitlines()[-1]
