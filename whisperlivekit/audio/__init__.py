"""Audio input: container decoding (ffmpeg) and voice activity detection."""
