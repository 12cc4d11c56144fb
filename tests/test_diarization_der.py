"""The frame scorer of scripts/diarization_der.py against hand-computed DER and JER."""

from __future__ import annotations

import sys
from pathlib import Path

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
