"""Sampling under outside control: the server cancels work no one waits for any more (a
request timed out or its client went away) and keeps its log free of progress bars.

A worker runs a job under `controlled(Control(...))`; the samplers call `check_cancelled()`
between steps, so a cancelled job stops within one network evaluation. The setting lives in
a context variable: each thread (the server's batcher, a CLI call) has its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass


class Cancelled(Exception):
    """Raised inside a sampler whose job was cancelled."""


@dataclass(frozen=True)
class Control:
    cancelled: Callable[[], bool] = lambda: False
    progress: bool = True  # tqdm bars for long work (canvas windows)


_control: ContextVar[Control | None] = ContextVar("fastmuse_sampling_control", default=None)
_FREE = Control()  # outside any job: never cancelled, bars shown


@contextlib.contextmanager
def controlled(control: Control) -> Iterator[None]:
    token = _control.set(control)
    try:
        yield
    finally:
        _control.reset(token)


def check_cancelled() -> None:
    if (_control.get() or _FREE).cancelled():
        raise Cancelled("the job was cancelled")


def show_progress() -> bool:
    return (_control.get() or _FREE).progress
