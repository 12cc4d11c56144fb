"""Streaming policies, chosen by name (`--backend-policy`): name -> "module:Class".

A policy is per-connection state over a shared backend: it decides what audio to
send next and which words are final. Each class has `from_settings(settings, language)`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:
    from whisperlivekit.asr.types import StreamingPolicy
    from whisperlivekit.config import Settings

POLICIES: Dict[str, str] = {
    "localagreement": "whisperlivekit.asr.policies.local_agreement:LocalAgreementPolicy",
    "simulstreaming": "whisperlivekit.asr.policies.simulstreaming:SimulStreamingPolicy",
}


def make_policy(settings: "Settings", language: Optional[str]) -> "StreamingPolicy":
    module_name, _, class_name = POLICIES[settings.backend_policy].partition(":")
    policy_class = getattr(importlib.import_module(module_name), class_name)
    return policy_class.from_settings(settings, language)
