"""Typed, process-wide build-once slots for the app (models, workspaces, 2-D maps).

A slot lives in ``st.cache_resource`` and holds the value rather than being the cached function itself:
building a workspace draws a progress bar, and Streamlit would replay that drawing on every cache hit if it
happened inside a cached function. Values are keyed by plain strings built from frozen specs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import streamlit as st

T = TypeVar("T")


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    value: Any = None


@st.cache_resource(show_spinner=False, max_entries=64)
def _slot(kind: str, key: str) -> _Slot:
    return _Slot()


def cached(kind: str, key: str, build: Callable[[], T]) -> T:
    """The value of slot (``kind``, ``key``), built by ``build()`` on first use; concurrent callers wait for it."""
    slot = _slot(kind, key)
    with slot.lock:
        if slot.value is None:
            slot.value = build()
        value: T = slot.value
        return value


def forget(kind: str, key: str) -> None:
    """Drop a slot's value so the next :func:`cached` call builds it again."""
    slot = _slot(kind, key)
    with slot.lock:
        slot.value = None
