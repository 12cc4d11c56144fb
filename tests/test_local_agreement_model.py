"""LocalAgreement over the real tiny.en (faster-whisper) on real speech, off the clock, at step
schedules that lost a whole sentence before the policy kept the words of a hypothesis that the next
one, stopping early, left out.

On a live server the step sizes follow the machine's load, so this loss showed as a rare WER
failure (about one stream in twelve at 3x real time). Here the schedules are fixed: uneven steps
of up to 3 s (what a loaded server takes) make Whisper stop after the committed first sentence,
and the sentence after it must still be committed.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from conftest import wer
from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.client import pcm_to_float
from whisperlivekit.weights.resolve import resolve_model


@pytest.fixture(scope="module")
def backend():
    return FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1)


def _steps(step_s: float, first_s: float, seed: int | None) -> Iterator[float]:
    """Seconds of audio per step: `first_s`, then `step_s` each; with a seed, uniform 0.7..step_s each."""
    rng = np.random.default_rng(seed)
    if seed is None:
        yield first_s
    while True:
        yield step_s if seed is None else float(rng.uniform(0.7, step_s))


def _stream(backend, audio: np.ndarray, steps: Iterator[float]) -> str:
    policy = LocalAgreementPolicy(language="en")
    sent = 0
    while sent < len(audio):
        n = int(next(steps) * SAMPLE_RATE)
        policy.append_audio(audio[sent:sent + n])
        sent += n
        if policy.buffer_s > 0:
            policy.apply(backend.transcribe_batch([policy.next_request()])[0])
    policy.finish()
    return "".join(w.text for w in policy.committed)


@pytest.mark.slow  # about 25 s of inference
@pytest.mark.parametrize("step_s, first_s, seed", [(3.0, 3.0, None), (3.0, 3.3, None), (1.5, 1.5, None), (3.0, 0.0, 13)],
                         ids=["3s-steps", "3s-steps-offset", "1.5s-steps", "uneven-steps"])
def test_no_sentence_is_lost_whatever_the_step_schedule(backend, speech_pcm, step_s, first_s, seed):
    pcm, reference = speech_pcm("harvard")
    text = _stream(backend, pcm_to_float(pcm), _steps(step_s, first_s, seed))
    error_rate = wer(reference, text)
    print(f"harvard, steps {step_s} s, first {first_s} s, seed {seed}: WER {error_rate:.1%}: {text}")
    assert "glue the sheet" in text.lower() and "easy to tell" in text.lower(), text
    assert error_rate <= 0.07, text


@pytest.mark.slow  # about 10 s of inference
def test_the_phone_calls_second_sentence_survives_a_bare_full_stop_heard_over_its_opening_noise(backend, speech_pcm):
    """At this schedule Whisper hears only "." over the call's first seconds; that "." was committed
    and the buffer cut at it, and "I didn't know you were there" was lost (WER 29.9 %). Over 20 such
    schedules the call's WER is 12.6-23.0 % (mean 16.7 %) with punctuation joined to its word."""
    pcm, reference = speech_pcm("pyannote")
    text = _stream(backend, pcm_to_float(pcm), _steps(3.0, 0.0, 0))
    error_rate = wer(reference, text)
    print(f"call, uneven steps, seed 0: WER {error_rate:.1%}: {text}")
    assert "know you were there" in text.lower(), text
    # Not tight: at this schedule the call's crosstalk ("Neither did I ... I heard a beep") comes and goes
    # with float rounding. On an AMD EPYC: 20.7 % run alone, 29.9 % once inside the full suite (that
    # sentence lost; the process state that changed it was not found). The regression is the line above.
    assert error_rate <= 0.32, text


@pytest.mark.slow  # about 10 s of inference
def test_a_buffer_trimmed_at_a_full_stop_keeps_the_next_words_onset_after_a_burst_of_audio(backend, speech_pcm):
    """A decoder stall releases 7 s of WebM audio at once (tests/test_abuse.py starves ffmpeg): one
    step then covers 3-10.5 s, commits only "planks." and the buffer is trimmed at that sentence's end.
    Whisper times the "." up to the onset of "Glue" (3.00 s, where "planks" ends at 2.74 s); cut
    there, tiny.en skipped "Glue the sheet to the dark blue background." in every hypothesis after
    (WER 24 %, at each of the three schedules the live test showed). The cut is now where "planks" ends."""
    import subprocess

    from whisperlivekit.client import encode_webm_opus

    pcm, reference = speech_pcm("harvard")
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"],
                             input=encode_webm_opus(pcm), capture_output=True, check=True).stdout
    audio = pcm_to_float(decoded)
    policy = LocalAgreementPolicy(language="en", agreement_spacing_s=0.9)  # the engine's fast steps
    sent = 0
    for end_s in (0.40, 1.29, 2.13, 2.69, 3.11, 10.47, len(audio) / SAMPLE_RATE):
        policy.append_audio(audio[sent:int(end_s * SAMPLE_RATE)])
        sent = int(end_s * SAMPLE_RATE)
        policy.apply(backend.transcribe_batch([policy.next_request()])[0])
    policy.finish()
    text = "".join(w.text for w in policy.committed)
    print(f"harvard (WebM), a 7.4 s burst after 3.1 s: WER {wer(reference, text):.1%}: {text}")
    assert "the sheet to the dark blue background" in text.lower(), text
    assert wer(reference, text) <= 0.10, text


@pytest.mark.slow  # about 10 s of inference
def test_a_step_that_waited_out_a_loaded_server_does_not_cost_the_phone_call_its_speech(backend, speech_pcm):
    """A loaded server, as a live stream saw it (the call streamed at 3x beside two busy cores): the
    first step of the speech, over 0.5 s at 6.4 s, waited so long that 15.3 s more had arrived when
    its result came. Two faults then lost most of the call (WER 56 %):
    - the stall rule measured the grown buffer, so it committed the " from the" Whisper guessed from
      those 0.5 s, and forced as the next step's prefix it made Whisper skip 10 s of speech;
    - the next step heard "Hello? Hello. Hello. ..." (one word said over and over), which the loop
      check flagged, so the step was ignored.
    """
    pcm, reference = speech_pcm("pyannote")
    audio = pcm_to_float(pcm)
    at = lambda s: int(s * SAMPLE_RATE)  # noqa: E731
    policy = LocalAgreementPolicy(language="en", agreement_spacing_s=0.9)  # the engine's fast steps
    policy.offset_s = 6.4  # VAD dropped the silence before the speech
    policy.append_audio(audio[at(6.4):at(6.9)])
    first = backend.transcribe_batch([policy.next_request()])[0]
    policy.append_audio(audio[at(6.9):at(22.2)])  # arrived while the first step waited
    assert policy.apply(first) == [], "one hypothesis of 0.5 s committed"
    policy.apply(backend.transcribe_batch([policy.next_request()])[0])
    policy.append_audio(audio[at(22.2):])
    policy.apply(backend.transcribe_batch([policy.next_request()])[0])
    policy.finish()
    text = "".join(w.text for w in policy.committed)
    error_rate = wer(reference, text)
    print(f"call, one step that waited 15 s: WER {error_rate:.1%}: {text}")
    for phrase in ("know you were there", "diane in new jersey", "originally from chicago", "yankee down here"):
        assert phrase in text.lower(), text
    assert error_rate <= 0.32, text  # the bound of the call's other schedule test above


@pytest.fixture(scope="module")
def a0009_pause_harvard():
    """ARCTIC a0009, 0.5 s of silence, Harvard's first 6 s; and where the real VAD hears a0009's speech end."""
    import audio_assets
    from whisperlivekit.audio.vad import SileroVadModel, VadStream

    first = audio_assets.read_wav(audio_assets.arctic("arctic_a0009")[0])
    audio = np.concatenate([first, np.zeros(SAMPLE_RATE // 2, np.float32),
                            audio_assets.read_wav(audio_assets.harvard()[0])[: 6 * SAMPLE_RATE]])
    events = VadStream().process(SileroVadModel(), audio)
    return audio, next(t for kind, t in events if kind == "end")


@pytest.mark.parametrize("late_s", [0.6, 1.3, 2.5])
def test_a_segments_late_last_step_leaves_the_next_utterance_to_the_next_segment(backend, a0009_pause_harvard, late_s):
    """On a loaded device the VAD closes a segment, and its last step runs `late_s` into the next utterance.
    Its words there were committed unheard and their audio dropped, so the next buffer began mid-word:
    "The boots. Each canoe slid", "The bitch can't sleep. Get on the smooth planks" (as live at N = 8,
    looped clips with 0.5 s pauses). Told where the speech ended, the segment leaves them to the next one."""
    from whisperlivekit.config import Settings

    audio, speech_end_s = a0009_pause_harvard
    policy = LocalAgreementPolicy.from_settings(Settings(), language="en")
    sent = 0

    def step(until: int) -> None:
        nonlocal sent
        policy.append_audio(audio[sent:until])
        sent = until
        policy.apply(backend.transcribe_batch([policy.next_request()])[0])

    for until in range(SAMPLE_RATE, int(speech_end_s * SAMPLE_RATE), SAMPLE_RATE):
        step(until)
    step(int((speech_end_s + 0.5 + late_s) * SAMPLE_RATE))
    at_segment_end = policy.finish(speech_end_s)
    for until in range(sent + SAMPLE_RATE, len(audio), SAMPLE_RATE):
        step(until)
    step(len(audio))
    policy.finish()

    assert not {w.key for w in at_segment_end} & {"birch", "canoe", "boots", "beach", "bitch"}, at_segment_end
    text = " ".join(w.key for w in policy.committed if w.key)
    assert "he turned sharply and faced gregson across the table the birch canoe slid on the smooth planks" in text, text


@pytest.mark.parametrize("first_step_s", [0.3, 0.55])
def test_a_segment_whose_steps_heard_its_speech_out_ends_without_another_step(backend, first_step_s):
    """Fast steps (0.4 s) over ARCTIC a0007 and the silence after it, up to where the real VAD closes the
    segment (0.5 s after the speech end). Where the steps already heard the speech end and 0.2 s more, the
    engine runs no last step over the silence (live, such steps invented "3." or "The" after
    "superlative degree."): the segment's end commits from the hypotheses it has, and nothing is lost."""
    import audio_assets
    from whisperlivekit.audio.vad import SileroVadModel, VadStream
    from whisperlivekit.config import Settings

    path, reference = audio_assets.arctic("arctic_a0007")
    audio = np.concatenate([audio_assets.read_wav(path), np.zeros(SAMPLE_RATE, np.float32)])
    speech_end_s = next(t for kind, t in VadStream().process(SileroVadModel(), audio) if kind == "end")
    policy = LocalAgreementPolicy.from_settings(Settings(), language="en")
    sent = 0
    for until_s in np.arange(first_step_s, speech_end_s + 0.5, 0.4):
        until = int(until_s * SAMPLE_RATE)
        policy.append_audio(audio[sent:until])
        sent = until
        policy.apply(backend.transcribe_batch([policy.next_request()])[0])
    policy.append_audio(audio[sent:int((speech_end_s + 0.5) * SAMPLE_RATE)])  # the VAD's last windows of silence

    assert policy.heard_speech_end(speech_end_s), (policy.transcribed_until_s, speech_end_s)
    policy.finish(speech_end_s)
    text = "".join(w.text for w in policy.committed)
    assert wer(reference, text) == 0, text
