"""The frame scorer of scripts/diarization_der.py against hand-computed DER and JER."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from diarization_der import der  # noqa: E402

# A talks over [0, 2) s, B over [1, 3) s: 4 s of reference speech, 1 s of it overlapped.
REFERENCE = [(0.0, 2.0, "A"), (1.0, 3.0, "B")]


def test_one_hypothesis_speaker_per_moment_misses_the_overlap():
    # x over [0, 1.5), y over [1.5, 3): the overlap's second voice is missed (1 s of 4), nothing confused.
    scores = der(REFERENCE, [(0.0, 1.5, "x"), (1.5, 3.0, "y")], 3.0)
    assert scores["missed"] == pytest.approx(0.25)
    assert scores["false_alarm"] == 0 and scores["confusion"] == 0
    assert scores["der"] == pytest.approx(0.25)
    # A vs x: 1.5 s shared of 2 s in either; B vs y likewise.
    assert scores["jer"] == pytest.approx(0.25)


def test_one_speaker_for_everything_confuses_the_second():
    # x over [0, 3): missed 1 s (overlap), confusion 1 s (B's [2, 3) is x = A), DER 2/4.
    scores = der(REFERENCE, [(0.0, 3.0, "x")], 3.0)
    assert scores["missed"] == pytest.approx(0.25)
    assert scores["confusion"] == pytest.approx(0.25)
    assert scores["der"] == pytest.approx(0.5)
    assert scores["jer"] == pytest.approx((1 - 2 / 3 + 1) / 2)  # A~x: 2 of 3 s; B unmapped: 1
    assert scores["hypothesis_speakers"] == 1


def test_collar_leaves_out_a_quarter_second_around_reference_boundaries():
    # Boundaries at 0, 1, 2 and 3 s; scored: [0.25, 0.75), [1.25, 1.75), [2.25, 2.75) = 2 s of reference speech,
    # of which the overlap's 0.5 s in [1.25, 1.75) is missed.
    scores = der(REFERENCE, [(0.0, 1.5, "x"), (1.5, 3.0, "y")], 3.0, collar_s=0.25)
    assert scores["reference_speech_s"] == pytest.approx(2.0)
    assert scores["der"] == pytest.approx(0.25) and scores["confusion"] == 0


def test_false_alarm_counts_hypothesis_speech_where_nobody_talks():
    scores = der([(0.0, 1.0, "A")], [(0.0, 1.5, "x")], 2.0)
    assert scores["false_alarm"] == pytest.approx(0.5) and scores["der"] == pytest.approx(0.5)


# -- against pyannote.metrics, the standard scorer ------------------------------------------------
def _random_turns(rng, speakers: str, duration_s: float, overlap: bool):
    """Turns of 0.3-4 s on the 10 ms grid (both scorers then see the same frames); some overlap."""
    turns, t = [], 0.0
    while t < duration_s - 0.3:
        length = round(float(rng.uniform(0.3, 4.0)), 2)
        speaker = speakers[int(rng.integers(len(speakers)))]
        turns.append((round(t, 2), round(min(t + length, duration_s), 2), speaker))
        t += length + round(float(rng.uniform(-0.8 if overlap else 0.0, 1.0)), 2)
        t = max(t, turns[-1][0] + 0.1)
    return _merged(turns)


def _merged(turns):
    """One speaker's overlapping turns as one (as an RTTM has them; a speaker does not overlap itself)."""
    out = []
    for speaker in sorted({s for _, _, s in turns}):
        for start, end, _ in sorted(t for t in turns if t[2] == speaker):
            if out and out[-1][2] == speaker and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end), speaker)
            else:
                out.append((start, end, speaker))
    return sorted(out)


def _pyannote(turns):
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for i, (start, end, speaker) in enumerate(turns):
        annotation[Segment(start, end), i] = speaker
    return annotation


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("collar_s", [0.0, 0.25])
def test_der_matches_pyannote_metrics(seed, collar_s):
    """Same DER and components as pyannote.metrics on random references with overlap, against
    unrelated hypotheses (more or fewer speakers) and near-misses, with and without a collar. Our `collar_s`
    is the NIST width either side of a boundary; pyannote's `collar` is the total width (2x)."""
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    rng = np.random.default_rng(seed)
    duration_s = 60.0
    reference = _random_turns(rng, "ABC", duration_s, overlap=True)
    if seed < 3:  # a diarizer's output: unrelated turns, 2-4 speakers
        hypothesis = _random_turns(rng, "wxyz"[: 2 + seed % 3], duration_s, overlap=seed % 2 == 0)
    else:  # a good one: the reference renamed, boundaries off by up to 0.4 s, one turn given to the wrong voice
        names = dict(zip("ABC", "xyz"))
        hypothesis = [(max(0.0, round(a + float(rng.uniform(-0.4, 0.4)), 2)), round(b + float(rng.uniform(-0.4, 0.4)), 2),
                       "y" if i == seed else names[who]) for i, (a, b, who) in enumerate(reference)]
        hypothesis = _merged([(a, min(b, duration_s), who) for a, b, who in hypothesis if b > a])
    ours = der(reference, hypothesis, duration_s, collar_s=collar_s)
    theirs = metrics.DiarizationErrorRate(collar=2 * collar_s, skip_overlap=False)(
        _pyannote(reference), _pyannote(hypothesis), detailed=True)
    total = theirs["total"]
    print(f"seed {seed} collar {collar_s}: DER ours {ours['der']:.4f} pyannote {theirs['diarization error rate']:.4f}")
    assert ours["reference_speech_s"] == pytest.approx(total, abs=0.05)
    assert ours["der"] == pytest.approx(theirs["diarization error rate"], abs=0.002)
    assert ours["missed"] == pytest.approx(theirs["missed detection"] / total, abs=0.002)
    assert ours["false_alarm"] == pytest.approx(theirs["false alarm"] / total, abs=0.002)
    assert ours["confusion"] == pytest.approx(theirs["confusion"] / total, abs=0.002)
