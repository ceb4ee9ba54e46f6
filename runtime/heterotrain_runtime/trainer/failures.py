"""A failed collective: what the trainer catches, and how it lets go of the failed world."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator, Mapping


class CommFailure(Exception):
    """A collective or the store failed: a peer is gone."""


def drop_frames(exc: BaseException) -> None:
    """Free the locals of the frames ``exc`` (its causes, and the failures DCP wrapped in it) went through.

    A failed collective's frames hold its process group (``group=``, a save's
    ``pg``); while they live, gloo keeps the group's sockets open and a peer
    blocked on that group (in a step's all-reduce, or in a checkpoint's
    gather) never learns that this process left it.  A failure kept in a
    future is worse: its frames hold the future (a closure), a cycle that only
    the garbage collector breaks, whenever it runs.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if x.__traceback__ is not None:
            traceback.clear_frames(x.__traceback__)
            x.__traceback__ = None
        todo += [x.__cause__, x.__context__]
        failures = getattr(x, "failures", None)  # DCP's CheckpointException: {rank: (exception, summary)}
        if isinstance(failures, Mapping):
            todo += [
                f[0]
                for f in failures.values()
                if isinstance(f, tuple) and f and isinstance(f[0], BaseException)
            ]


@contextlib.contextmanager
def comm() -> Iterator[None]:
    """A RuntimeError of a collective (a peer is gone) as a :class:`CommFailure`."""
    try:
        yield
    except RuntimeError as e:
        raise CommFailure(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
