"""`SessionGuard` on a fake clock: which limit ends a connection, and when (no server, no sleeping)."""

from __future__ import annotations

import asyncio
from typing import Optional

import pytest

from whisperlivekit.config import Settings
from whisperlivekit.api.errors import ending_for
from whisperlivekit.errors import LimitExceeded
from whisperlivekit.limits import (
    CONTAINER_MIN_SECONDS_PER_BYTE, UNDECODED_CREDIT_S, AddressCounter, SentAudioMeter, SessionGuard,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Audio:
    """Seconds of audio the decoder has produced so far (what the guard counts, never frames)."""

    def __init__(self) -> None:
        self.decoded_s = 0.0

    def __call__(self) -> float:
        return self.decoded_s


def guard(backlog_s: float = 0.0, **limits) -> tuple:
    """A guard with every limit off but those given; `session.audio` is its decoded-audio counter."""
    clock, audio = FakeClock(), Audio()
    backlog = [backlog_s]
    settings = Settings(**{"idle_timeout_s": 0.0, "max_session_s": 0.0, "max_backlog_s": 0.0, "min_audio_rate": 0.0, **limits})
    session = SessionGuard(settings, backlog_s=lambda: backlog[0], audio_s=audio, clock=clock)
    session.audio = audio
    return session, clock, backlog


def ending_reason(exceeded: LimitExceeded) -> str:
    return ending_for(exceeded).reason


def test_idle_timeout_fires_after_that_long_without_decoded_audio():
    session, clock, _ = guard(idle_timeout_s=5.0)
    clock.advance(4.9)
    assert session.check() is None
    clock.advance(0.1)
    exceeded = session.check()
    assert isinstance(exceeded, LimitExceeded) and ending_reason(exceeded) == "Idle timeout"


def test_each_piece_of_decoded_audio_restarts_the_idle_timer():
    session, clock, _ = guard(idle_timeout_s=5.0)
    for _ in range(10):
        clock.advance(4.0)
        session.audio.decoded_s += 4.0
        session.check()  # the guard notices new audio when it looks
        assert session.check() is None


def test_overlapping_waits_for_the_server_count_once_and_keep_the_idle_timer_still():
    """A Realtime commit (the receiver) overlaps the wait for an owed transcript (another task)."""
    session, clock, _ = guard(idle_timeout_s=5.0)
    owed = session.feeding()
    owed.__enter__()
    with session.feeding():  # the commit, inside the wait
        clock.advance(4.0)
    clock.advance(4.0)
    assert session.check() is None  # 8 s without audio, all of it the server's
    owed.__exit__(None, None, None)
    assert session._server_busy_s(clock()) == pytest.approx(8.0)
    clock.advance(5.0)
    assert isinstance(session.check(), LimitExceeded)  # now the silence is the client's


def test_the_session_cap_counts_from_the_start_whatever_the_client_sends():
    session, clock, _ = guard(max_session_s=60.0, idle_timeout_s=5.0)
    for _ in range(14):
        clock.advance(4.0)
        session.audio.decoded_s += 4.0
        session.check()  # the guard notices new audio when it looks
    assert session.check() is None  # 56 s
    clock.advance(4.0)
    exceeded = session.check()
    assert isinstance(exceeded, LimitExceeded) and ending_reason(exceeded) == "Maximum session length reached"


def test_a_backlog_over_the_limit_means_the_client_sends_faster_than_real_time():
    session, _, backlog = guard(max_backlog_s=10.0)
    backlog[0] = 10.0
    assert session.check() is None  # at the limit is allowed
    backlog[0] = 10.5
    exceeded = session.check()
    assert isinstance(exceeded, LimitExceeded) and ending_reason(exceeded) == "Client sends faster than real time"


def test_after_the_end_of_audio_only_the_session_cap_applies():
    session, clock, backlog = guard(idle_timeout_s=5.0, max_backlog_s=10.0, max_session_s=100.0)
    session.input_ended = True  # the client sent its empty frame; the server is still transcribing
    backlog[0] = 50.0
    clock.advance(30.0)
    assert session.check() is None
    clock.advance(70.0)
    assert ending_reason(session.check()) == "Maximum session length reached"


def test_zero_turns_every_limit_off():
    session, clock, backlog = guard()
    backlog[0] = 1e6
    clock.advance(1e6)
    assert session.check() is None


def test_watch_raises_the_limit_it_finds():
    session, clock, _ = guard(idle_timeout_s=5.0)
    clock.advance(6.0)
    with pytest.raises(LimitExceeded, match="No audio"):
        asyncio.run(asyncio.wait_for(session.watch(), timeout=10))


def test_the_address_counter_admits_up_to_its_limit_per_address():
    counter = AddressCounter(limit=2)
    assert counter.try_add("10.0.0.1") and counter.try_add("10.0.0.1")
    assert not counter.try_add("10.0.0.1")
    assert counter.try_add("10.0.0.2")  # another address has its own count
    counter.remove("10.0.0.1")
    assert counter.try_add("10.0.0.1") and counter.count("10.0.0.1") == 2
    assert AddressCounter(limit=0).try_add("x")  # 0: no limit


# -- what counts as audio the client sent ------------------------------------------------------
def test_pcm_bytes_count_as_audio_before_they_are_decoded():
    meter = SentAudioMeter(pcm_bytes_per_s=32_000)
    meter.fed(64_000)
    assert meter.sent_s == pytest.approx(2.0)  # nothing decoded yet: a busy VAD lane is the server's delay
    meter.decoded(2.0)
    assert meter.sent_s == pytest.approx(2.0)  # and decoding it does not count it twice


def test_container_bytes_count_once_any_audio_decoded_at_the_higher_of_a_floor_and_the_shown_rate():
    meter = SentAudioMeter()  # WebM: seconds per byte unknown until ffmpeg has decoded some
    meter.fed(8_000)
    assert meter.sent_s == 0.0  # nothing decoded yet: a header alone is no stream
    meter.decoded(0.1)  # ffmpeg started, then stalled while the client sent 2 s more
    assert meter.sent_s == pytest.approx(8_000 * CONTAINER_MIN_SECONDS_PER_BYTE)  # 16 kbit/s floor: 4 s
    meter.decoded(5.9)  # it catches up: 6 s from 8000 bytes (8 kbit/s, more seconds per byte than the floor)
    meter.fed(8_000)  # and stalls again while the client sends 6 s more
    assert meter.sent_s == pytest.approx(12.0)


def test_bytes_that_never_decode_stop_counting_after_a_bounded_credit():
    meter = SentAudioMeter()
    meter.fed(4_000)
    meter.decoded(1.0)
    meter.fed(4_000 * 1000)  # 1000 s worth of bytes that the decoder never turns into audio
    assert meter.sent_s == pytest.approx(1.0 + UNDECODED_CREDIT_S)


def test_bytes_with_no_audio_at_all_count_for_nothing():
    meter = SentAudioMeter()
    meter.fed(1_000_000)  # a header and junk: no rate shown, so no credit
    assert meter.sent_s == 0.0


class MinutePassed(Exception):
    pass


def test_a_guard_woken_late_by_a_busy_event_loop_holds_that_time_against_the_server(monkeypatch):
    """Each check wakes 2 s late (the loop was busy) and no audio arrives: no verdict against the
    client for a minute, because the server was not listening. Woken on time, the same silence is closed."""
    def watch_a_minute(late_s: float) -> Optional[LimitExceeded]:
        session, clock, _ = guard(min_audio_rate=0.5, start_grace_s=10.0)
        ends_at = clock() + 60.0
        real_sleep = asyncio.sleep

        async def sleep_and_wake_late(seconds: float) -> None:
            if clock() >= ends_at:
                raise MinutePassed
            clock.advance(seconds + late_s)
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", sleep_and_wake_late)
        try:
            asyncio.run(session.watch())
        except LimitExceeded as exceeded:
            return exceeded
        except MinutePassed:
            return None
        finally:
            monkeypatch.setattr(asyncio, "sleep", real_sleep)

    assert watch_a_minute(late_s=2.0) is None
    assert ending_reason(watch_a_minute(late_s=0.0)) == "Too little audio"
