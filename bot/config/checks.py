"""Checks shared by the config models."""

from __future__ import annotations

import re


def compiling(patterns: list[str]) -> list[str]:
    """``patterns`` unchanged if each is a valid regular expression; else ValueError naming the bad one."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return patterns
