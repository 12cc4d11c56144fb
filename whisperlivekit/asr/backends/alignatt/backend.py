"""AlignAtt on our own PyTorch Whisper: one decoding step per request, for many streams.

The model (`torch_whisper/`, any weight format) is loaded once per device and
shared; each `AlignAttRequest` brings its stream's buffer and tokens (see
`simulstreaming.py`), so this class keeps no per-stream state and installs no
hooks: attention comes back from the decoder call (`decoder.py`), and the KV
cache lives only for the call. Several CPU lanes may call at once.

One step: encode the buffer, re-decode the committed words as a fixed prefix,
then search (`search.py`) until a stop rule fires. The encoder window is the
buffer plus 2 s of padding, at least `min_window_s`, rounded up to 5 s
(Whisper's 30 s cost about twice as much on CPU for the same words on the test
clips). A batch is encoded per window size, so a stream's result never depends
on which other streams shared its batch.

Precision as the `torch` backend: float32 on the CPU, float16 on CUDA (`--compute-type`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from whisperlivekit.asr.backends.alignatt.decoder import AlignAttDecoder
from whisperlivekit.asr.backends.alignatt.heads import choose_heads
from whisperlivekit.asr.backends.alignatt.search import SearchOutcome, SearchSetup, WordTrail, peak, search
from whisperlivekit.asr.backends.degenerate import MAX_TOKENS_PER_S, looks_degenerate
from whisperlivekit.asr.backends.gpu_memory import release_cuda_cache
from whisperlivekit.asr.backends.torch_whisper.features import log_mel
from whisperlivekit.asr.backends.torch_whisper.load import load_torch_whisper
from whisperlivekit.asr.backends.torch_whisper.tokenizer import UNSPACED_LANGUAGES, WhisperTokenizer
from whisperlivekit.asr.types import WHISPER_WINDOW_S, AlignAttRequest, AlignAttResult, TranscribeRequest, Word
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.errors import device_faults

logger = logging.getLogger(__name__)

FRAME_S = 0.02  # one encoder frame
SAMPLES_PER_FRAME = 320
WINDOW_STEP_S = 5
PADDING_S = 2.0  # audio-free frames after the buffer: where the heads look once the audio runs out

NO_SPEECH_PROB = 0.6


class AlignAttBackend:
    name = "alignatt"

    @classmethod
    def from_settings(cls, settings, model_path: Path, device: str, lanes: int) -> "AlignAttBackend":
        return cls(
            model_path, device=device, model_name=settings.model, lanes=lanes, cpu_threads=settings.cpu_threads,
            min_window_s=settings.min_encoder_window_s, compute_type=settings.compute_type,
        )

    def __init__(self, model_path: Path, device: str = "cpu", model_name: Optional[str] = None,
                 lanes: int = 1, cpu_threads: int = 0, min_window_s: float = 10.0, compute_type: str = "auto") -> None:
        model_path = Path(model_path)
        loaded = load_torch_whisper(model_path, device, compute_type, cpu_threads, lanes)
        model, dims = loaded.model, loaded.model.dims
        heads, source = choose_heads(loaded.alignment_heads, model_name or model_path.name, dims.n_text_layer,
                                     dims.n_text_head, model.is_multilingual)
        logger.info("AlignAtt on %s: %d alignment heads (%s), %s", device, len(heads), source, loaded.dtype)

        self._model = model
        self._decoder: Optional[AlignAttDecoder] = AlignAttDecoder(model.decoder, heads)
        self.heads = heads
        self.device = device
        self.dtype = loaded.dtype
        self.model_label = model_path.name if model_path.name != "model" else str(model_path)
        self.multilingual = bool(model.is_multilingual)
        self.min_window_samples = int(min(WHISPER_WINDOW_S, max(1.0, min_window_s)) * SAMPLE_RATE)
        self._base_tokenizer = loaded.tokenizer
        self._tokenizers: Dict[Tuple[Optional[str], str], WhisperTokenizer] = {}
        tok = loaded.tokenizer
        self._suppress = self._suppression_mask(tok, dims.n_vocab).to(device)
        pieces = tok.text_pieces
        self._starts_word = np.array([piece.startswith(" ") for piece in pieces] + [False] * (dims.n_vocab - len(pieces)))
        self._word_keys = ["".join(c for c in piece.lower() if c.isalnum()) for piece in pieces] + [""] * (dims.n_vocab - len(pieces))
        self._no_letters = [t for t in range(tok.eot) if not self._word_keys[t]]  # blank, punctuation: never first

    # -- vocabulary ------------------------------------------------------------------
    def tokenizer(self, language: Optional[str], task: str = "transcribe") -> WhisperTokenizer:
        key = (language if self.multilingual else None, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = self._base_tokenizer.with_language(*key)
        return self._tokenizers[key]

    @staticmethod
    def _suppression_mask(tok: WhisperTokenizer, n_vocab: int) -> torch.Tensor:
        """Tokens a transcript never contains: Whisper's non-speech symbols and every special token but end-of-text
        (start and task tokens, language tags, no-speech, no-timestamps, timestamps)."""
        mask = torch.zeros(n_vocab, dtype=torch.bool)
        mask[list(tok.suppressed)] = True
        mask[tok.eot + 1 :] = True
        return mask

    # -- the backend interface -------------------------------------------------------
    def transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[AlignAttResult]:
        """A torch device failure (CUDA error, out of memory) comes out as `DeviceError`."""
        with device_faults(self.device, "inference"):
            return self._transcribe_batch(requests)

    def _transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[AlignAttResult]:
        if not requests:
            return []
        windows = [self._window(len(r.audio)) for r in requests]
        results: List[Optional[AlignAttResult]] = [None] * len(requests)
        with torch.inference_mode():
            for window in sorted(set(windows)):
                group = [i for i, w in enumerate(windows) if w == window]
                features = self._encode([requests[i].audio for i in group], window)
                for row, i in enumerate(group):
                    results[i] = self._step(requests[i], features[row : row + 1])
        return results  # type: ignore[return-value]

    def _window(self, samples: int) -> int:
        step = WINDOW_STEP_S * SAMPLE_RATE
        needed = -(-(samples + int(PADDING_S * SAMPLE_RATE)) // step) * step
        return int(min(WHISPER_WINDOW_S * SAMPLE_RATE, max(self.min_window_samples, needed)))

    def _encode(self, audios: Sequence[np.ndarray], window: int) -> torch.Tensor:
        """Each buffer zero-padded (or cut) to `window` samples, log-mel per row, one encoder call."""
        batch = np.zeros((len(audios), window), dtype=np.float32)
        for row, audio in enumerate(audios):
            audio = np.asarray(audio, dtype=np.float32)[:window]
            batch[row, : len(audio)] = audio
        mel = log_mel(torch.from_numpy(batch).to(self.device), self._model.dims.n_mels)
        return self._model.encoder(mel.to(self.dtype))

    def _detect_language(self, state) -> str:
        tok = self._base_tokenizer
        logits, _, _ = self._decoder.forward(torch.tensor([[tok.sot]], device=self.device), state)
        language_tokens = torch.tensor([tok.language_token(code) for code in tok.languages], device=self.device)
        return tok.languages[int(logits[0, -1].index_select(0, language_tokens).argmax())]

    def _step(self, request: TranscribeRequest, features: torch.Tensor) -> AlignAttResult:
        final = not isinstance(request, AlignAttRequest)
        if final:  # a plain request: the whole buffer at once, no stop rule
            request = AlignAttRequest(request.audio, request.prompt, request.language, request.task, init_prompt=request.prompt)
        start = self._decoder.start(features)
        language = request.language or (self._detect_language(start) if self.multilingual else "en")
        tok = self.tokenizer(language, request.task)
        prefix = self._prefix(tok, request)
        forced = list(request.forced_tokens)
        duration_s = len(request.audio) / SAMPLE_RATE
        content_frames = -(-len(request.audio) // SAMPLES_PER_FRAME)
        room = self._decoder.n_ctx - len(prefix) - len(forced) - 1
        setup = SearchSetup(
            decoder=self._decoder, suppress=self._suppress, blank=self._no_letters, eot=tok.eot,
            starts_word=None if language in UNSPACED_LANGUAGES else self._starts_word,
            word_keys=None if language in UNSPACED_LANGUAGES else self._word_keys, content_frames=content_frames,
            stop_frame=None if final else content_frames - request.frame_threshold,
            max_new=max(0, min(room, int(MAX_TOKENS_PER_S * duration_s) + 10 - len(forced))), beams=max(1, request.beams),
            loop_rules=request.loop_rules,
        )
        logits, alignment, cache = self._decoder.forward(torch.tensor([prefix + forced], device=self.device), start)
        frames = peak(alignment[0], content_frames).tolist()
        forced_frames = frames[len(prefix) - 1 : len(prefix) - 1 + len(forced)]
        if len(request.forced_frames) == len(forced):  # as measured when emitted: steadier than re-aligned
            forced_frames = list(request.forced_frames)
        trail = WordTrail()
        for token, frame in zip(forced, forced_frames):
            trail = trail.after(token, frame, setup)
        outcome = search(setup, logits[:, -1], frames[-1], trail, cache, at_start=not forced)
        if not forced and outcome.tokens + outcome.lookahead:
            no_speech = float(logits[0, len(prefix) - len(tok.sot_sequence) - 1].softmax(-1)[tok.no_speech])
            heard = len(outcome.tokens) + len(outcome.lookahead)
            if no_speech > NO_SPEECH_PROB and (outcome.score + outcome.lookahead_score) / heard < -1.0:
                outcome = SearchOutcome([], [], 0.0, "no-speech")  # Whisper hears no speech and is unsure of its words
        result = self._result(tok, language, forced, forced_frames, outcome, final, duration_s)
        result.kv_tokens = len(prefix) + len(forced) + len(outcome.tokens) + len(outcome.lookahead)
        return result

    def _prefix(self, tok, request: AlignAttRequest) -> List[int]:
        """[previous-text marker, prompt...] + the start-of-transcript sequence; the init prompt always stays."""
        budget = max(0, request.max_context_tokens)
        init = tok.encode(" " + request.init_prompt.strip())[:budget] if request.init_prompt.strip() else []
        rolling = list(request.context_tokens)[-(budget - len(init)) :] if budget > len(init) else []
        prompt = init + rolling
        return ([tok.sot_prev] + prompt if prompt else []) + list(tok.sot_sequence) + [tok.no_timestamps]

    # -- tokens → words ----------------------------------------------------------------
    def _result(self, tok, language: str, forced: List[int], forced_frames: List[int], outcome: SearchOutcome,
                final: bool, duration_s: float) -> AlignAttResult:
        """Commit the emitted words but the last, which may be unfinished ("bir" of "birch", or a guess from a
        word's onset): it stays tentative with the look-ahead, and the next step decodes it again."""
        emitted = outcome.tokens
        groups = self._groups(tok, emitted, len(forced))
        complete = groups if final else groups[:-1]
        n_new = complete[-1][1] - len(forced) if complete else 0
        tokens, frames = forced + emitted[:n_new], forced_frames + outcome.frames[:n_new]
        pending = emitted[n_new:] + outcome.lookahead
        pending_frames = outcome.frames[n_new:] + outcome.lookahead_frames
        # Only this step's tokens: the forced prefix passed this check when it was emitted, and speech that
        # repeats itself (a chorus, a looped test clip) must not make every later step look like a loop.
        degenerate = outcome.reason == "limit" or bool(emitted) and looks_degenerate(tok.decode(emitted), len(emitted), duration_s)
        logprobs = [0.0] * len(forced) + outcome.logprobs[:n_new]
        words = self._words(tok, tokens, frames, complete, duration_s, logprobs=logprobs)
        floor_s = words[-1].end if words else 0.0
        pending_logprobs = outcome.logprobs[n_new:] + outcome.lookahead_logprobs
        tentative = self._words(tok, pending, pending_frames, self._groups(tok, pending, 0), duration_s, floor_s,
                                pending_logprobs)
        return AlignAttResult(
            words=words, language=language, degenerate=degenerate, new_tokens=emitted[:n_new], token_frames=frames,
            word_starts=[start for start, _ in complete], tentative=tentative, pending_tokens=pending,
            stop_reason=outcome.reason,
        )

    @staticmethod
    def _groups(tok, tokens: List[int], offset: int) -> List[Tuple[int, int]]:
        """[start, end) token ranges of the words in `tokens` (Whisper's own word splitting), shifted by `offset`."""
        if not tokens:
            return []
        _, word_tokens = tok.split_to_word_tokens(tokens + [tok.eot])
        ranges, start = [], offset
        for group in word_tokens:
            group = [t for t in group if t < tok.eot]
            if group:
                ranges.append((start, start + len(group)))
                start += len(group)
        return ranges

    @staticmethod
    def _words(tok, tokens: List[int], frames: List[int], groups: List[Tuple[int, int]], duration_s: float,
               floor_s: float = 0.0, logprobs: Sequence[float] = ()) -> List[Word]:
        """Words timed by their tokens' attention frames, kept in order (attention can step back a little);
        a word's probability is its tokens' mean, as faster-whisper gives it (1.0 where `logprobs` has none)."""
        words: List[Word] = []
        previous_end = floor_s
        for start, end in groups:
            begin_s = min(max(frames[start] * FRAME_S, previous_end), duration_s)
            end_s = min(max((max(frames[start:end]) + 1) * FRAME_S, begin_s), duration_s)
            known = [math.exp(lp) for lp in logprobs[start:end]]
            probability = sum(known) / len(known) if known else 1.0
            words.append(Word(begin_s, end_s, tok.decode(tokens[start:end]), probability))
            previous_end = end_s
        return words

    def close(self) -> None:
        self._decoder = None
        if getattr(self, "_model", None) is not None:
            self._model = None
            release_cuda_cache(self.device)
