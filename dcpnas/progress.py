"""Progress reporting from library code: a callback, never printing.

Library functions take `progress: ProgressFn | None` and call `progress(phase, done, total, **metrics)`;
cli/ turns the calls into Rich progress bars (cli.common.rich_progress).
"""

from __future__ import annotations

from typing import Protocol


class ProgressFn(Protocol):
    def __call__(self, phase: str, done: int, total: int, **metrics: float | str) -> None: ...


def no_progress(phase: str, done: int, total: int, **metrics) -> None:
    """The default callback: does nothing."""
