#!/usr/bin/env python3
"""Stream a WAV/MP3/any audio file to a running server and print the live transcript.

    python scripts/stream_file.py speech.wav                      # WebM/Opus, like a browser
    python scripts/stream_file.py speech.wav --pcm                 # server started with --pcm-input
    python scripts/stream_file.py speech.mp3 --url ws://host:8000/asr --speed 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from whisperlivekit.client import encode_webm_opus, load_pcm16, stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/asr")
    parser.add_argument("--pcm", action="store_true", help="send raw PCM (the server must run with --pcm-input)")
    parser.add_argument("--speed", type=float, default=1.0, help="multiple of real time")
    args = parser.parse_args()

    pcm = load_pcm16(args.file)
    payload = pcm if args.pcm else encode_webm_opus(pcm)
    last = [""]

    def show(message: dict) -> None:
        if message.get("type") == "config":
            print(f"connected: device {message['device']} (gpu {message['gpu_id']}), id {message['connection_id']}", file=sys.stderr)
        elif "lines" in message:
            text = "".join(l["text"] for l in message["lines"] if l.get("text")).strip()  # Whisper's leading spaces
            tail = message.get("buffer_transcription", "")
            line = f"{text}\033[2m{tail}\033[0m" if tail else text
            if line != last[0]:
                print(f"\r\033[K{line[-200:]}", end="", flush=True)
                last[0] = line
        elif message.get("type") == "error" or message.get("status") == "error":
            print(f"\nserver error: {message.get('error')}", file=sys.stderr)

    result = asyncio.run(stream(args.url, payload, pcm=args.pcm, speed=args.speed, on_message=show))
    print()
    if result.close_code not in (1000, None):
        print(f"closed with {result.close_code}: {result.close_reason}", file=sys.stderr)
        raise SystemExit(1)
    print(f"\nfinal transcript:\n{result.text}")


if __name__ == "__main__":
    main()
