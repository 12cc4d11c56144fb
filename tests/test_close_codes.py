"""The close-code table of `api/errors.py`: complete, consistent, the only place codes are chosen,
and followed by the web page (its JS unit test runs here under node's built-in test runner)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import whisperlivekit
from whisperlivekit import errors
from whisperlivekit.api.errors import ENDINGS, INTERNAL_ERROR, all_endings, ending_for, page_table
from whisperlivekit.app import create_app
from whisperlivekit.config import Settings

PACKAGE = Path(whisperlivekit.__file__).resolve().parent
TABLE_MODULE = PACKAGE / "api" / "errors.py"
JS_TESTS = Path(__file__).resolve().parent / "js"
# PROTOCOL.md and docs/protocol-additions.md
PROTOCOL_CODES = {1000, 1001, 1003, 1007, 1008, 1009, 1011, 4400, 4401, 4403}


def _error_classes():
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.WhisperLiveKitError) and cls.__module__ == errors.__name__]


def test_every_typed_error_maps_to_a_close_code_of_the_protocol():
    for cls in _error_classes():
        ending = ending_for(cls("message"))
        assert ending.code in PROTOCOL_CODES, cls.__name__
        assert 400 <= ending.http_status < 600, cls.__name__
    assert {ending.code for ending in all_endings().values()} == PROTOCOL_CODES
    assert ending_for(RuntimeError("a bug")) is INTERNAL_ERROR and INTERNAL_ERROR.code == 1011


def test_every_concrete_error_has_its_own_row_except_the_abstract_bases():
    abstract = {errors.WhisperLiveKitError, errors.ProtocolViolation, errors.LimitExceeded}
    assert {cls for cls in _error_classes() if cls not in abstract} == set(ENDINGS)


def test_only_1011_and_1001_ask_a_client_to_reconnect():
    retried = {int(code) for code, entry in page_table()["codes"].items() if entry["retry"]}
    assert retried == {1001, 1011}
    assert page_table()["codes"]["4403"]["retry"] is False


def test_limits_close_as_docs_protocol_additions_says():
    said = {cls: (ENDINGS[cls].code, ENDINGS[cls].reason) for cls in (
        errors.SessionTooLong, errors.IdleTimeout, errors.BacklogTooLarge, errors.TooManyConnectionsFromAddress)}
    assert said == {
        errors.SessionTooLong: (1008, "Maximum session length reached"),
        errors.IdleTimeout: (1001, "Idle timeout"),
        errors.BacklogTooLarge: (1008, "Client sends faster than real time"),
        errors.TooManyConnectionsFromAddress: (1008, "Too many connections from this address"),
    }


def _close_code_literals(path: Path):
    """(line, value) of int literals that are close codes, not counting arithmetic (`ms / 1000`) or `maxlen=`."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            skip.update(id(operand) for operand in (node.left, node.right))
        elif isinstance(node, ast.keyword) and node.arg == "maxlen":
            skip.add(id(node.value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in PROTOCOL_CODES and id(node) not in skip]


def _offenders(path: Path):
    found = [f"{path.name}:{line}: {value}" for line, value in _close_code_literals(path)]
    return found + [f"{path.name}: defines {name}" for name in re.findall(r"^\s*(CLOSE_\w+)\s*=", path.read_text(), re.M)]


def test_no_module_but_the_table_names_a_close_code():
    offenders = [offence for path in sorted(PACKAGE.rglob("*.py")) if path != TABLE_MODULE for offence in _offenders(path)]
    assert offenders == []


def test_the_grep_test_would_catch_a_close_code(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("CLOSE_POLICY = 1008\nasync def f(ws):\n    await ws.close(code=4403)\n    return 1500 / 1000\n")
    assert _offenders(planted) == ["planted.py:1: 1008", "planted.py:3: 4403", "planted.py: defines CLOSE_POLICY"]
    assert _offenders(TABLE_MODULE) != []  # the table itself is where they are


def test_the_page_gets_the_table_as_json():
    client = TestClient(create_app(Settings(preload=False)))
    response = client.get("/close-codes.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads(json.dumps(page_table()))


def test_the_page_explains_every_close_code_as_the_table_says(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    table = tmp_path / "close-codes.json"
    table.write_text(json.dumps(page_table()))
    result = subprocess.run([node, "--test", str(JS_TESTS)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "WLK_CLOSE_CODES": str(table)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 6" in result.stdout, result.stdout
