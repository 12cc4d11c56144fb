"""Audio input: container decoding (ffmpeg) and voice activity detection."""

SAMPLE_RATE = 16_000  # Hz: what Whisper, Silero VAD and the diarizers take; every input is resampled to it
