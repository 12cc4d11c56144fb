"""faster-whisper (CTranslate2) backend: the default, on `cpu` (int8) or `cuda:N`.

A streaming server transcribes short, growing buffers many times, so this runs
CTranslate2's encode / generate / align steps directly instead of
`WhisperModel.transcribe` (built for long files):

- the encoder window is the buffer plus padding, at least `min_window_s`, instead
  of always 30 s: a 10 s window costs a third of a 30 s one;
- the words a policy already committed at the start of the buffer (`request.prefix`) are forced
  as the decoder's prefix after <|0.00|>, so a step cannot revise them (same transcript as
  decoding it all: tested). CTranslate2 still runs each forced token through the decoder one
  step at a time, so this saves no compute (measured: docs/architecture.md);
- decoding is greedy by default; on GPU requests are batched across streams, on
  CPU `lanes` single-threaded calls run side by side (measured: 2 lanes x 1 thread
  give 1.8x the throughput of 1 lane x 2 threads, while CPU batching is slower);
- a hypothesis that heard its audio to the end and then looped (said the last
  sentence again, or its last words to the token cap) keeps its first copy
  (`degenerate.cut_tail_loop`); any other that looks degenerate (repetition loop,
  too many tokens for the audio) is redone on the full 30 s window, where Whisper
  was trained, without the prompt; if it still loops it is flagged and the policy
  ignores it;
- decoding keeps Whisper's timestamp tokens: measured on a real phone call, the
  no-timestamps mode skipped whole phrases of long buffers (WER outliers of
  40-70 %), timestamp mode did not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from whisperlivekit.asr.backends.degenerate import MAX_TOKENS_PER_S, screen_loops, undo_cuts_short_of_the_end
from whisperlivekit.asr.backends.first_word import as_sentence_start, case_variant, with_variant_mass
from whisperlivekit.asr.types import (
    WHISPER_WINDOW_S, FileSegment, FileTranscribeRequest, FileTranscription, TranscribeRequest, TranscribeResult, Word,
)
from whisperlivekit.errors import DeviceError, ModelLoadError, device_faults
from whisperlivekit.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

HOP = 160
FULL_WINDOW_FRAMES = int(WHISPER_WINDOW_S * SAMPLE_RATE / HOP)  # 3000 mel frames
PADDING_S = 1.0
WINDOW_BUCKET_FRAMES = 200  # 2 s

MAX_PROMPT_TOKENS = 223
MAX_LENGTH = 448  # Whisper's decoder context
MAX_PREFIX_TOKENS = 100  # prompt + prefix + new tokens share the decoder's context


def _split_device(device: str) -> Tuple[str, int]:
    if device.startswith("cuda"):
        return "cuda", int(device.split(":")[1]) if ":" in device else 0
    return "cpu", 0


class FasterWhisperBackend:
    name = "faster-whisper"

    @classmethod
    def from_settings(cls, settings, model_path: Path, device: str, lanes: int) -> "FasterWhisperBackend":
        return cls(
            model_path, device=device, compute_type=settings.compute_type, beam_size=settings.beam_size,
            min_window_s=settings.min_encoder_window_s, cpu_threads=settings.cpu_threads, lanes=lanes,
        )

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        compute_type: str = "auto",
        beam_size: int = 1,
        min_window_s: float = 10.0,
        cpu_threads: int = 0,
        lanes: int = 1,
    ) -> None:
        from faster_whisper import WhisperModel

        kind, index = _split_device(device)
        if compute_type == "auto":
            compute_type = "int8" if kind == "cpu" else "float16"
        try:
            with device_faults(device, "loading faster-whisper"):
                self._model = WhisperModel(
                    str(model_path), device=kind, device_index=index, compute_type=compute_type,
                    cpu_threads=cpu_threads or max(1, (os.cpu_count() or 1) // lanes), num_workers=lanes,
                )
        except DeviceError:
            raise
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError subclasses
            raise ModelLoadError(f"Could not load faster-whisper model from {model_path} on {device}: {exc}") from exc
        self.device = device
        self.model_label = Path(model_path).name if Path(model_path).name != "model" else str(model_path)
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.min_window_frames = int(min_window_s * SAMPLE_RATE / HOP)
        self.multilingual = self._model.model.is_multilingual
        self._tokenizers: Dict[Tuple[Optional[str], str], object] = {}

    # -- helpers -------------------------------------------------------------------
    def _tokenizer(self, language: Optional[str], task: str):
        from faster_whisper.tokenizer import Tokenizer

        key = (language if self.multilingual else None, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self._model.hf_tokenizer, self.multilingual,
                task=task if self.multilingual else None,
                language=(language or "en") if self.multilingual else None,
            )
        return self._tokenizers[key]

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        padded = np.zeros(frames * HOP, dtype=np.float32)
        audio = audio[-frames * HOP:]
        padded[: len(audio)] = audio
        mel = self._model.feature_extractor(padded, padding=0)
        return mel[:, :frames]

    def _encode(self, audios: Sequence[np.ndarray], frames: int):
        import ctranslate2

        batch = np.ascontiguousarray(np.stack([self._features(a, frames) for a in audios]).astype(np.float32))
        return self._model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=False)

    def _detect_language(self, encoder_output) -> List[str]:
        results = self._model.model.detect_language(encoder_output)
        return [r[0][0].strip("<|>") for r in results]

    # -- the backend interface -----------------------------------------------------
    def window_frames(self, request: TranscribeRequest) -> int:
        """Encoder window for one request: its audio plus padding, in 2 s buckets, at least `min_window_s`.

        A function of the request alone, so batching never changes a stream's result.
        """
        frames = len(request.audio) / HOP + PADDING_S * SAMPLE_RATE / HOP
        bucketed = int(-(-frames // WINDOW_BUCKET_FRAMES) * WINDOW_BUCKET_FRAMES)
        return min(FULL_WINDOW_FRAMES, max(self.min_window_frames, bucketed))

    def transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[TranscribeResult]:
        """Requests sharing an encoder window run as one batch; others as separate batches.

        A CTranslate2 device failure (CUDA, cuBLAS, out of memory) comes out as `DeviceError`."""
        with device_faults(self.device, "inference"):
            return self._transcribe_batch(requests)

    def _transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[TranscribeResult]:
        """Batches share an encoder window and a prompt length: CTranslate2's `generate` needs
        <|startoftranscript|> at the same position in every row, and trimming prompts to match
        would make a stream's result depend on its batch mates."""
        results: List[Optional[TranscribeResult]] = [None] * len(requests)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((self.window_frames(request), len(self._prompt_tokens(request.prompt))), []).append(i)
        for (frames, _), indices in groups.items():
            for i, result in zip(indices, self._transcribe_window([requests[i] for i in indices], frames)):
                results[i] = result
        return results  # type: ignore[return-value]

    def _prompt_tokens(self, prompt: str) -> List[int]:
        """The previous-text tokens before <|startoftranscript|> (the same BPE whatever the language)."""
        if not prompt.strip():
            return []
        tokenizer = self._tokenizer(None, "transcribe")
        return [tokenizer.sot_prev] + tokenizer.encode(" " + prompt.strip())[-MAX_PROMPT_TOKENS:]

    @staticmethod
    def _prefix_tokens(tokenizer, prefix: str) -> List[int]:
        """<|0.00|> and the committed words, forced after <|startoftranscript|> (empty without a prefix)."""
        if not prefix.strip():
            return []
        return [tokenizer.timestamp_begin] + tokenizer.encode(" " + prefix.strip())[:MAX_PREFIX_TOKENS]

    def _transcribe_window(self, requests: List[TranscribeRequest], frames: int) -> List[TranscribeResult]:
        results, degenerate = self._run(list(requests), frames)
        if degenerate:
            # Retry on Whisper's native 30 s window without the prompt (prompts feed loops).
            retry = [TranscribeRequest(requests[i].audio, "", requests[i].language, requests[i].task) for i in degenerate]  # no prefix either
            # a retry drops the prompt, not the context: its first word starts a transcript only where the stream's did
            redo, still = self._run(retry, FULL_WINDOW_FRAMES, [not requests[i].prompt.strip() for i in degenerate])
            for j, i in enumerate(degenerate):
                results[i] = redo[j]
                results[i].degenerate = j in still
                results[i].retried = True
                logger.info("degenerate hypothesis on %.1f s of audio: retried on the full window", len(requests[i].audio) / SAMPLE_RATE)
        return results

    def _run(self, requests: List[TranscribeRequest], frames: int,
             starts_transcript: Optional[Sequence[bool]] = None) -> Tuple[List[TranscribeResult], List[int]]:
        """One pass; `starts_transcript` per row: nothing was said before its audio (default: it has no prompt)."""
        if starts_transcript is None:
            starts_transcript = [not r.prompt.strip() for r in requests]
        encoder_output = self._encode([r.audio for r in requests], frames)
        languages: List[Optional[str]] = [r.language for r in requests]
        if self.multilingual and any(lang is None for lang in languages):
            detected = self._detect_language(encoder_output)
            languages = [lang or det for lang, det in zip(languages, detected)]
        elif not self.multilingual:
            languages = ["en"] * len(requests)
        if self.multilingual and len(set(languages)) > 1:
            return self._run_per_language(requests, languages, frames)
        tokenizer = self._tokenizer(languages[0], requests[0].task)

        prefixes = [self._prefix_tokens(tokenizer, request.prefix) for request in requests]
        prompts = [self._prompt_tokens(request.prompt) + list(tokenizer.sot_sequence) + prefix
                   for request, prefix in zip(requests, prefixes)]
        durations = [len(r.audio) / SAMPLE_RATE for r in requests]
        max_new = min(224, int(max(durations) * MAX_TOKENS_PER_S) + 10)
        generated = self._model.model.generate(
            encoder_output, prompts, beam_size=self.beam_size, patience=1.0, length_penalty=1.0,
            max_length=min(MAX_LENGTH, max(len(p) for p in prompts) + max_new), return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
        )
        text_tokens: List[List[int]] = []
        degenerate: List[int] = []
        decoded: List[int] = []
        loops_cut: List[int] = []
        for i, (gen, duration, prefix) in enumerate(zip(generated, durations, prefixes)):
            tokens = [t for t in gen.sequences_ids[0] if t < tokenizer.eot]  # the forced prefix included
            decoded.append(max(0, len(gen.sequences_ids[0]) - len(prefix)))
            avg_logprob = gen.scores[0] / max(1, len(tokens) + 1) if gen.scores else 0.0
            if gen.no_speech_prob > 0.6 and avg_logprob < -1.0:
                tokens = []
            tokens, verdict = screen_loops(tokens, len(prefix[1:]), tokenizer.decode, duration)
            if verdict == "degenerate":
                degenerate.append(i)
            elif verdict == "cut":
                loops_cut.append(i)
            text_tokens.append(tokens)

        num_frames = [min(frames, int(len(r.audio) / HOP)) for r in requests]
        alignments = (
            self._model.find_alignment(tokenizer, text_tokens, encoder_output, num_frames)
            if any(text_tokens) else [[] for _ in requests]
        )
        alignments = self._first_words_in_any_case(tokenizer, encoder_output, text_tokens, num_frames, prefixes, alignments,
                                                   starts_transcript)
        results = []
        for i, (words, duration, language, tokens_decoded) in enumerate(zip(alignments, durations, languages, decoded)):
            results.append(TranscribeResult(
                words=[
                    Word(min(float(w["start"]), duration), min(float(w["end"]), duration), w["word"], float(w["probability"]))
                    for w in words
                ],
                language=language,
                decoded_tokens=tokens_decoded,
                loop_cut=i in loops_cut,
            ))
        return results, sorted(degenerate + undo_cuts_short_of_the_end(results, durations, loops_cut))

    def _first_words_in_any_case(self, tokenizer, encoder_output, text_tokens, num_frames, prefixes, alignments,
                                 starts_transcript):
        """Each hypothesis that decoded its buffer's first word (no forced prefix) gets that word's other
        spelling's probability added, and where it starts a transcript its capitalised spelling (first_word.py):
        one more alignment pass of one token per row."""
        variants = {}
        for i, (tokens, prefix, words) in enumerate(zip(text_tokens, prefixes, alignments)):
            variant = case_variant(tokenizer.encode, tokenizer.decode, tokens[0]) if tokens and not prefix and words else None
            if variant is not None:
                variants[i] = variant
        if not variants:
            return alignments
        any_variant = next(iter(variants.values()))  # rows without one still need a token in the batch
        probes = self._model.model.align(
            encoder_output, tokenizer.sot_sequence, [[variants.get(i, any_variant)] for i in range(len(text_tokens))],
            num_frames)
        out = []
        for i, words in enumerate(alignments):
            if i in variants:
                words = with_variant_mass(words, probes[i].text_token_probs[0])
                if starts_transcript[i]:
                    words = as_sentence_start(words, tokenizer.decode(text_tokens[i][:1]), tokenizer.decode([variants[i]]))
            out.append(words)
        return out

    def _run_per_language(self, requests, languages, frames):
        results: List[Optional[TranscribeResult]] = [None] * len(requests)
        degenerate: List[int] = []
        for language in sorted(set(languages)):
            idx = [i for i, lang in enumerate(languages) if lang == language]
            sub = [TranscribeRequest(requests[i].audio, requests[i].prompt, language, requests[i].task, prefix=requests[i].prefix)
                   for i in idx]
            sub_results, sub_degenerate = self._run(sub, frames)
            for j, i in enumerate(idx):
                results[i] = sub_results[j]
            degenerate += [idx[j] for j in sub_degenerate]
        return results, degenerate  # type: ignore[return-value]

    def transcribe_offline(self, audio: np.ndarray, language: Optional[str] = None) -> str:
        """The whole recording in one piece (baseline for WER comparisons).

        Computed with single-threaded BLAS, as the device workers compute (runtime/device_worker.py):
        the thread count changes the mel spectrogram's summation order, and on some CPUs that rounding
        alone flips a beam (Harvard on an AMD EPYC: "faced us" with one thread, "face dust" with two)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            segments, _ = self._model.transcribe(audio, language=language, beam_size=5, vad_filter=False)
            return " ".join(s.text.strip() for s in segments)

    def transcribe_file(self, request: FileTranscribeRequest) -> Tuple[FileTranscription, Iterator[FileSegment]]:
        """A whole file with faster-whisper's own long-form loop on the shared model: 30 s windows,
        beam search, the previous window's text as context, temperature fallback.

        The mel spectrogram (and language detection) are computed here; the returned iterator
        decodes one window each time it needs more segments, so the device worker can advance
        it a step at a time between live streams' jobs."""
        with device_faults(self.device, "file transcription"):
            segments, info = self._model.transcribe(
                request.audio, language=request.language if self.multilingual else None, task=request.task,
                beam_size=request.beam_size, word_timestamps=request.word_timestamps,
                initial_prompt=request.prompt or None, vad_filter=False,
                **({"temperature": request.temperature} if request.temperature is not None else {}),
            )
        return FileTranscription(info.language, info.duration), self._file_segments(segments)

    def _file_segments(self, segments) -> Iterator[FileSegment]:
        while True:
            with device_faults(self.device, "file transcription"):
                segment = next(segments, None)
            if segment is None:
                return
            yield FileSegment(
                id=segment.id, start=float(segment.start), end=float(segment.end), text=segment.text,
                words=[Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in segment.words or ()],
                tokens=list(segment.tokens), seek=int(segment.seek), temperature=float(segment.temperature or 0.0),
                avg_logprob=float(segment.avg_logprob), compression_ratio=float(segment.compression_ratio),
                no_speech_prob=float(segment.no_speech_prob),
            )

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            try:
                model.model.unload_model()
            except Exception:  # pragma: no cover - best effort
                pass
