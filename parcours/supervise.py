"""Run several `parcours` subcommands as child processes and stop them all together.

Each child gets its own process group, so stopping it also stops what it started (the
broker binary under `parcours broker`, say). On Linux a child also receives SIGTERM if
the supervisor dies without cleaning up, so no orphan survives even a `kill -9`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Supervisor:
    """Starts children, watches them, and stops every one of them on exit."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    stopping: bool = False

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        """Start `argv` as a child named `name`."""
        proc = subprocess.Popen(
            argv,
            env=dict(env) if env is not None else None,
            preexec_fn=_die_with_parent,
        )
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        self.children.append((name, proc))

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM make `wait` return and the children stop."""

        def _handler(signum: int, _frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)

    def wait(self, poll_s: float = 0.5) -> int:
        """Block until a signal arrives or a child exits; returns the exit code to use."""
        while not self.stopping:
            for name, proc in self.children:
                code = proc.poll()
                if code is not None:
                    log.error("%s exited with code %s; stopping the others", name, code)
                    return code or 1
            time.sleep(poll_s)
        return 0

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Stop the children newest first, each before the next, so that producers (simulator,
        gateway) finish before what they feed (broker) goes away. SIGTERM, then SIGKILL after
        `timeout_s`; whatever is left in a child's process group is killed too."""
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                log.info("stopping %s (pid %d)", name, proc.pid)
                _signal_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout_s)
                if proc.poll() is None:
                    log.warning("%s did not stop within %.0fs; killing it", name, timeout_s)
            # The group may outlive its leader (a grandchild); kill what is left in any case.
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
