"""The fault-injection harness: run a writer in a forked child and SIGKILL it.

A forked child is cheap (no re-import of torch and MuJoCo) and runs the real code; it is killed either by
itself at an injection point (:func:`kill_self`, :func:`half_then_die`) or by the parent once a condition
holds (``kill_when``), at an arbitrary moment of its work.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

FAULT = "fault injection"
"""The ``record_property("reliability", ...)`` kind of a fault-injection test."""


def kill_self() -> None:
    """SIGKILL this process: no ``finally``, no ``atexit``, no flushing, as a power cut or OOM kill."""
    os.kill(os.getpid(), signal.SIGKILL)


def run_killed(
    action: Callable[[], object], *, kill_when: Callable[[], bool] | None = None, timeout: float = 60.0
) -> None:
    """Run ``action`` in a forked child that must die by SIGKILL.

    :param kill_when: polled every few milliseconds; the child is SIGKILLed once it returns True (None:
        ``action`` kills itself at an injection point).
    """
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 3
        try:
            torch.set_num_threads(1)  # a thread pool inherited from the parent would deadlock the child
            action()
            code = 4  # finished without being killed
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        hung = time.monotonic() > deadline
        if hung or (kill_when is not None and kill_when()):
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            assert not hung, "the child hung"
            break
        time.sleep(0.003)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the child was not killed: exit status {os.waitstatus_to_exitcode(status)} (3: it raised, 4: it finished)"
    )


def half_then_die(data: bytes, handle: Any) -> None:
    """Write the first half of ``data`` to the open binary ``handle``, make it durable, and die."""
    handle.write(data[: len(data) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    kill_self()
