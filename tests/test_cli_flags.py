"""Every flag does something: it changes its Settings field, and that field is read by the code."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from whisperlivekit.cli import COMMANDS, build_parser, env_name, settings_from_args
from whisperlivekit.config import Settings

PACKAGE = Path(__file__).resolve().parents[1] / "whisperlivekit"


def _actions():
    """Flags that configure the server (not commands such as --list-models, which print and exit)."""
    return [a for a in build_parser()._actions if a.option_strings and a.dest != "help" and a.dest not in COMMANDS]


def _non_default_args(action: argparse.Action):
    flag = action.option_strings[0]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return [flag]
    if action.choices:
        resolved = getattr(settings_from_args([]), action.dest)  # `auto` resolves to a concrete name
        others = [c for c in action.choices if c not in (action.default, resolved)]
        if not others:
            pytest.skip(f"{flag} has a single choice")
        return [flag, others[0]]
    if action.dest == "gpus":
        return [flag, "0,2"]
    if action.type in (int, float):
        return [flag, str((action.default or 0) + 3)]
    return [flag, "some-value"]


@pytest.mark.parametrize("action", _actions(), ids=lambda a: a.option_strings[0])
def test_flag_changes_its_setting(action):
    default = settings_from_args([])
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and action.const == action.default:
        # the "on" half of an on/off pair (--allow-download / --no-download): it must undo its opposite
        opposite = next(a for a in _actions() if a.dest == action.dest and a.option_strings != action.option_strings)
        undone = settings_from_args([opposite.option_strings[0], action.option_strings[0]])
        assert getattr(undone, action.dest) == action.const != getattr(settings_from_args(opposite.option_strings[:1]), action.dest)
        return
    changed = settings_from_args(_non_default_args(action))
    assert getattr(changed, action.dest) != getattr(default, action.dest)


def test_every_setting_has_a_flag_and_is_read_by_the_code():
    flags = {a.dest for a in _actions()}
    sources = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")
    # a read through a settings object (not the parser's DEFAULTS.x)
    unread = [f.name for f in fields(Settings) if not re.search(rf"\b(settings|s)\.{f.name}\b", sources)]
    assert not unread, f"settings nothing reads: {unread}"
    assert {f.name for f in fields(Settings)} - flags == set(), "settings without a flag"


def test_environment_variables_set_flag_defaults(monkeypatch):
    monkeypatch.setenv("WLK_PORT", "9123")
    monkeypatch.setenv("WLK_PCM_INPUT", "true")
    settings = settings_from_args([])
    assert settings.port == 9123 and settings.pcm_input is True
    assert settings_from_args(["--port", "9000"]).port == 9000  # flags win


def test_a_policy_the_backend_cannot_run_is_refused_at_startup_with_what_to_pass(capsys):
    with pytest.raises(SystemExit) as exit_info:
        settings_from_args(["--backend", "faster-whisper", "--backend-policy", "simulstreaming"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "cannot run the simulstreaming policy" in message and "--backend torch" in message


def test_backend_auto_follows_the_policy_and_the_simulstreaming_shorthand_names_both():
    assert settings_from_args([]).backend == "faster-whisper"
    assert settings_from_args(["--backend-policy", "simulstreaming"]).backend == "torch"
    shorthand = settings_from_args(["--backend", "simulstreaming"])
    assert (shorthand.backend, shorthand.backend_policy) == ("torch", "simulstreaming")


def test_openai_whisper_is_no_backend_any_more(capsys):
    with pytest.raises(SystemExit) as exit_info:
        settings_from_args(["--backend", "openai-whisper"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'openai-whisper'" in capsys.readouterr().err


def test_environment_names_follow_the_flags():
    parser = build_parser()
    by_flag = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
    assert env_name(by_flag["--max-session-seconds"]) == "WLK_MAX_SESSION_SECONDS"
    assert env_name(by_flag["--no-vac"]) == "WLK_VAC"
    assert settings_from_args([], environ={"WLK_VAC": "0"}).vac is False
    assert settings_from_args([], environ={"WLK_MAX_SESSION_SECONDS": "30"}).max_session_s == 30.0
