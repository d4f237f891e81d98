"""Helper processes that never re-run the user's script.

Python's ``spawn`` and ``forkserver`` start methods import the parent's ``__main__``
module again in every child, so that functions defined in a script can be found there.
For a script without an ``if __name__ == "__main__":`` guard (the CubeFit manual's
workflow is written that way) that re-runs the whole script in the child: every step
twice, solves repeated, and "bootstrapping phase" errors when the copy tries to start a
process of its own.

The package only ever sends its own, importable functions to its helper processes, so
the child has no need of the user's ``__main__``.  :func:`start_without_main` starts a
:class:`multiprocessing.Process` (or anything whose start launches children, such as a
``Pool``) while ``sys.modules["__main__"]`` is replaced by an empty module: the
preparation data that multiprocessing hands to the child then names no main module, and
the child imports only what the pickled target needs.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import types
from typing import Callable, Iterator, TypeVar

__all__ = ["hidden_main", "start_without_main"]

T = TypeVar("T")

_LOCK = threading.Lock()


@contextlib.contextmanager
def hidden_main() -> Iterator[None]:
    """Within this block, child processes started by ``spawn`` or ``forkserver`` do not
    import the parent's ``__main__`` (the ``fork`` method never does).

    Only functions importable from installed modules can be targets inside the block.
    The swap is undone on exit, also after an exception; a lock keeps two threads of
    one process from interleaving their swaps.
    """
    with _LOCK:
        real = sys.modules.get("__main__")
        stub = types.ModuleType("__main__")
        stub.__spec__ = None
        sys.modules["__main__"] = stub
        try:
            yield
        finally:
            if real is None:
                sys.modules.pop("__main__", None)
            else:
                sys.modules["__main__"] = real


def start_without_main(start: Callable[[], T]) -> T:
    """Call ``start()`` (e.g. ``proc.start`` or ``lambda: ctx.Pool(n, init)``) inside
    :func:`hidden_main` and return what it returns."""
    with hidden_main():
        return start()
