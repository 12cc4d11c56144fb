"""The `torch` backend: LocalAgreement on our own PyTorch Whisper, batched across streams.

It behaves as `FasterWhisperBackend` does, step for step, so the two give the
same transcripts: the encoder window is the buffer plus 1 s of padding in 2 s
buckets (at least `min_window_s`), decoding is greedy with Whisper's timestamp
tokens and the committed text as prompt, word times come from the alignment
heads' cross-attention (`alignment.py`), a loop after the end of the audio is
cut to its first copy, and any other degenerate hypothesis is redone on the full
30 s window without the prompt. What it adds is batching that does
not need equal prompts: each window bucket of a batch is one encoder call and
one incremental decode whose rows carry their own prompts and stop on their own.

Weights come from a CTranslate2 directory, an openai-whisper `.pt` or a Hugging
Face directory (`weights/torch_state.py`); float32 on the CPU (or `--compute-type
bfloat16`), float16 on CUDA (or `--compute-type bfloat16|float32`). Greedy only: `--beam-size` above 1
is not implemented here yet and is refused at start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from whisperlivekit.asr.backends.degenerate import MAX_TOKENS_PER_S, screen_loops, undo_cuts_short_of_the_end
from whisperlivekit.asr.backends.first_word import as_sentence_start, case_variant
from whisperlivekit.asr.backends.torch_whisper.alignment import align, word_times
from whisperlivekit.asr.backends.torch_whisper.decoding import SpecialTokens, greedy_decode
from whisperlivekit.asr.backends.torch_whisper.features import HOP, log_mel
from whisperlivekit.asr.backends.torch_whisper.load import load_torch_whisper
from whisperlivekit.asr.backends.torch_whisper.model import default_alignment_heads
from whisperlivekit.asr.backends.torch_whisper.tokenizer import WhisperTokenizer
from whisperlivekit.asr.types import WHISPER_WINDOW_S, TranscribeRequest, TranscribeResult, Word
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.errors import ModelLoadError
from whisperlivekit.asr.backends.gpu_memory import release_cuda_cache

logger = logging.getLogger(__name__)

FULL_WINDOW_FRAMES = int(WHISPER_WINDOW_S * SAMPLE_RATE / HOP)  # 3000 mel frames
PADDING_S = 1.0
WINDOW_BUCKET_FRAMES = 200  # 2 s
MAX_PROMPT_TOKENS = 223
MAX_NEW_TOKENS = 224


def _rows_by_window(frames: Sequence[int]) -> Dict[int, List[int]]:
    """Row indices per encoder window, in order of first appearance."""
    rows: Dict[int, List[int]] = {}
    for row, window in enumerate(frames):
        rows.setdefault(window, []).append(row)
    return rows


class TorchWhisperBackend:
    name = "torch"

    @classmethod
    def from_settings(cls, settings, model_path: Path, device: str, lanes: int) -> "TorchWhisperBackend":
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
        mix_windows: Optional[bool] = None,
    ) -> None:
        if beam_size != 1:
            raise ModelLoadError("the torch backend decodes greedily; run it with --beam-size 1")
        model_path = Path(model_path)
        loaded = load_torch_whisper(model_path, device, compute_type, cpu_threads, lanes)
        self._model = loaded.model
        self.dtype = loaded.dtype
        dims = loaded.model.dims
        self.device = device
        # Requests of different encoder windows decode as one batch (each row's cross-attention masked to its
        # own frames): on a GPU a decode step costs its kernel launches whatever the batch, and batches formed
        # within one window bucket held 5.4 rows at N = 64 on the H200. On a CPU the step costs its arithmetic,
        # and a short window's row would attend over the longest one's padding: each window stays a batch.
        self.mixes_windows = device.startswith("cuda") if mix_windows is None else mix_windows
        self.model_label = model_path.name if model_path.name != "model" else str(model_path)
        self.compute_type = str(self.dtype).replace("torch.", "")
        self.weights_format = loaded.source_format
        self.min_window_frames = int(min_window_s * SAMPLE_RATE / HOP)
        self.multilingual = self._model.is_multilingual
        heads = loaded.alignment_heads or default_alignment_heads(dims)
        self.alignment_heads: Dict[int, List[int]] = {}
        for layer, head in sorted(heads):
            self.alignment_heads.setdefault(layer, []).append(head)
        self._base_tokenizer = loaded.tokenizer
        self._tokenizers: Dict[Tuple[Optional[str], str], WhisperTokenizer] = {}
        base = self._base_tokenizer
        self.special = SpecialTokens(
            eot=base.eot, no_timestamps=base.no_timestamps, timestamp_begin=base.timestamp_begin,
            no_speech=base.no_speech, suppress=base.suppressed, begin_suppress=(base.encode(" ")[0], base.eot),
        )

    # -- helpers -------------------------------------------------------------------
    def _tokenizer(self, language: Optional[str], task: str) -> WhisperTokenizer:
        key = (language if self.multilingual else None, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = self._base_tokenizer.with_language(*key)
        return self._tokenizers[key]

    def window_frames(self, request: TranscribeRequest) -> int:
        """Encoder window for one request: its audio plus padding, in 2 s buckets, at least `min_window_s`.

        A function of the request alone, so batching never changes a stream's result.
        """
        frames = len(request.audio) / HOP + PADDING_S * SAMPLE_RATE / HOP
        bucketed = int(-(-frames // WINDOW_BUCKET_FRAMES) * WINDOW_BUCKET_FRAMES)
        return min(FULL_WINDOW_FRAMES, max(self.min_window_frames, bucketed))

    @torch.inference_mode()
    def _encode(self, audios: Sequence[np.ndarray], frames: int) -> torch.Tensor:
        batch = np.zeros((len(audios), frames * HOP), dtype=np.float32)
        for row, audio in enumerate(audios):
            audio = np.asarray(audio, dtype=np.float32)[-frames * HOP:]
            batch[row, : len(audio)] = audio
        mel = log_mel(torch.from_numpy(batch).to(self.device), self._model.dims.n_mels)
        return self._model.encoder(mel.to(self.dtype))

    @torch.inference_mode()
    def _encode_windows(self, audios: Sequence[np.ndarray], frames: Sequence[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Each row encoded over its own window (one encoder call per window length), padded to the longest;
        with the (rows, frames) mask of each row's own frames, or None when all share one window."""
        windows = _rows_by_window(frames)
        if len(windows) == 1:
            return self._encode(audios, frames[0]), None
        encoded = {window: self._encode([audios[r] for r in rows], window) for window, rows in windows.items()}
        longest = max(e.shape[1] for e in encoded.values())
        first = next(iter(encoded.values()))
        features = first.new_zeros(len(audios), longest, first.shape[2])
        own = torch.zeros(len(audios), longest, dtype=torch.bool, device=first.device)
        for window, rows in windows.items():
            index = torch.tensor(rows, device=first.device)
            features[index, : encoded[window].shape[1]] = encoded[window]
            own[index, : encoded[window].shape[1]] = True
        return features, own

    @torch.inference_mode()
    def _detect_languages(self, audio_features: torch.Tensor, own_frames: Optional[torch.Tensor] = None) -> List[str]:
        """The likeliest language token after start-of-transcript, per row (`own_frames` as in `_encode_windows`)."""
        base = self._base_tokenizer
        state = self._model.decoder.start(audio_features, own_frames)
        sot = torch.full((audio_features.shape[0], 1), base.sot, dtype=torch.long, device=audio_features.device)
        logits, _, _ = self._model.decoder(sot, state)
        best = logits[:, 0, [base.language_token(code) for code in base.languages]].argmax(dim=-1).tolist()
        return [base.languages[i] for i in best]

    # -- the backend interface -----------------------------------------------------
    def transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[TranscribeResult]:
        """Requests sharing an encoder window run as one batch; others as separate batches, or, where windows
        mix (`mixes_windows`), all as one decode."""
        windows = [self.window_frames(r) for r in requests]
        if self.mixes_windows:
            return self._transcribe(list(requests), windows)
        results: List[Optional[TranscribeResult]] = [None] * len(requests)
        for frames, indices in _rows_by_window(windows).items():
            for i, result in zip(indices, self._transcribe([requests[i] for i in indices], [frames] * len(indices))):
                results[i] = result
        return results  # type: ignore[return-value]

    def _transcribe(self, requests: List[TranscribeRequest], frames: List[int]) -> List[TranscribeResult]:
        results, degenerate = self._run(list(requests), frames)
        if degenerate:
            # Retry on Whisper's native 30 s window without the prompt (prompts feed loops).
            retry = [TranscribeRequest(requests[i].audio, "", requests[i].language, requests[i].task) for i in degenerate]
            # a retry drops the prompt, not the context: its first word starts a transcript only where the stream's did
            redo, still = self._run(retry, [FULL_WINDOW_FRAMES] * len(retry),
                                    [not requests[i].prompt.strip() for i in degenerate])
            for j, i in enumerate(degenerate):
                results[i] = redo[j]
                results[i].degenerate = j in still
                results[i].retried = True
        return results

    def _run(self, requests: List[TranscribeRequest], frames: List[int],
             starts_transcript: Optional[Sequence[bool]] = None) -> Tuple[List[TranscribeResult], List[int]]:
        """One pass over `requests`, each on its encoder window of `frames` mel frames; `starts_transcript` per row:
        nothing was said before its audio (default: it has no prompt)."""
        if starts_transcript is None:
            starts_transcript = [not r.prompt.strip() for r in requests]
        audio_features, own_frames = self._encode_windows([r.audio for r in requests], frames)
        languages: List[Optional[str]] = [r.language for r in requests]
        if not self.multilingual:
            languages = ["en"] * len(requests)
        elif any(lang is None for lang in languages):
            detected = self._detect_languages(audio_features, own_frames)
            languages = [lang or det for lang, det in zip(languages, detected)]
        tokenizers = [self._tokenizer(lang, r.task) for lang, r in zip(languages, requests)]

        prompts = []
        for request, tokenizer in zip(requests, tokenizers):
            prompt: List[int] = []
            if request.prompt.strip():
                prompt = [tokenizer.sot_prev] + tokenizer.encode(" " + request.prompt.strip())[-MAX_PROMPT_TOKENS:]
            prompts.append(prompt + list(tokenizer.sot_sequence))
        durations = [len(r.audio) / SAMPLE_RATE for r in requests]
        max_new = min(MAX_NEW_TOKENS, int(max(durations) * MAX_TOKENS_PER_S) + 10)
        # CTranslate2's budget for the same request (what faster-whisper gets): half the total length at most.
        longest = max(len(p) for p in prompts)
        total = longest + max_new
        max_steps = min(total // 2, total - (longest - 1))
        sot_length = len(tokenizers[0].sot_sequence)
        generations = greedy_decode(self._model.decoder, audio_features, prompts, sot_length, max_steps, self.special,
                                    frames=own_frames)

        text_tokens: List[List[int]] = []
        degenerate: List[int] = []
        loops_cut: List[int] = []
        for i, (generation, duration, tokenizer) in enumerate(zip(generations, durations, tokenizers)):
            tokens = [t for t in generation.tokens if t < self.special.eot]
            score = generation.sum_logprob / max(1, len(generation.tokens))  # CTranslate2's length-normalised score
            avg_logprob = score / max(1, len(tokens) + 1)  # as FasterWhisperBackend computes it from that score
            if generation.no_speech_prob > 0.6 and avg_logprob < -1.0:
                tokens = []
            tokens, verdict = screen_loops(tokens, 0, tokenizer.decode, duration)
            if verdict == "degenerate":
                degenerate.append(i)
            elif verdict == "cut":
                loops_cut.append(i)
            text_tokens.append(tokens)

        num_frames = [min(window, int(len(r.audio) / HOP)) for r, window in zip(requests, frames)]
        first_variants = [case_variant(tokenizer.encode, tokenizer.decode, tokens[0]) if tokens else None
                          for tokens, tokenizer in zip(text_tokens, tokenizers)]
        paths = align(
            self._model.decoder, audio_features, [t.sot_sequence for t in tokenizers], text_tokens, num_frames,
            self.alignment_heads, self.special.no_timestamps, self.special.eot, frames=own_frames,
            first_variants=first_variants,
        )
        results = []
        for i, (tokens, path, duration, language, tokenizer) in enumerate(zip(text_tokens, paths, durations, languages, tokenizers)):
            words = word_times(tokenizer, tokens, *path) if path is not None else []
            if first_variants[i] is not None and starts_transcript[i]:
                words = as_sentence_start(words, tokenizer.decode(tokens[:1]), tokenizer.decode([first_variants[i]]))
            results.append(TranscribeResult(
                words=[Word(min(w["start"], duration), min(w["end"], duration), w["word"], w["probability"]) for w in words],
                language=language,
                loop_cut=i in loops_cut,
            ))
        return results, sorted(degenerate + undo_cuts_short_of_the_end(results, durations, loops_cut))

    def close(self) -> None:
        if getattr(self, "_model", None) is not None:
            self._model = None
            release_cuda_cache(self.device)

