"""Named points between the write steps of the writers that must survive a crash (a commit, a training run).

Nothing happens at them in the app: :data:`hook` is None. tests/test_crash_safety.py sets it in a child
process to stop at exactly one step and SIGKILL the process there, proving that a crash at each step
leaves the table and the runs as they were (or whole), never half-made.
"""

from __future__ import annotations

from collections.abc import Callable

hook: Callable[[str], None] | None = None


def reached(step: str) -> None:
    """Say that the writer in this process has just finished ``step``."""
    if hook is not None:
        hook(step)
