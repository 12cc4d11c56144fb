"""Query parameters of `/asr`, parsed and checked before a connection is admitted.

Each parser returns a clean value or raises `BadParameters` with a message that says
what is allowed; `api/` turns that into an error message and close 4400.
"""

from __future__ import annotations

from typing import FrozenSet, Optional

from whisperlivekit.errors import BadParameters

AUTO = "auto"


def parse_language(requested: Optional[str], default: str, allowed: FrozenSet[str], model: str) -> Optional[str]:
    """The language to force, or None for detection (`auto`).

    Looked up whole in the model's set, so `"en\\n"` is not `"en"` (a `^...$` pattern let it through).
    """
    language = default if requested is None or requested == "" else requested
    if language == AUTO:
        return None
    if language in allowed:
        return language
    shown = repr(language)
    if allowed == frozenset({"en"}):
        raise BadParameters(f"invalid language {shown}: model {model} is English-only; use 'en' or 'auto'")
    raise BadParameters(
        f"invalid language {shown}: use 'auto' or one of the {len(allowed)} languages of model {model}: "
        + ", ".join(sorted(allowed))
    )


def parse_mode(requested: Optional[str]) -> str:
    """`?mode=`: `full` (every update carries all lines, the default) or `diff` (a snapshot, then diffs)."""
    from whisperlivekit.protocol import FULL, MODES

    mode = FULL if requested is None or requested == "" else requested
    if mode not in MODES:
        raise BadParameters(f"invalid mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def parse_words(requested: Optional[str], mode: str) -> bool:
    """`?words=`: whether lines carry `words` (per-word times and probabilities). Default: in diff mode
    yes; in full mode no, since there every update re-sends every line's words."""
    from whisperlivekit.protocol import DIFF

    if requested is None or requested == "":
        return mode == DIFF
    value = requested.lower()
    if value not in ("true", "1", "false", "0"):
        raise BadParameters(f"invalid words {requested!r}: use true or false")
    return value in ("true", "1")
