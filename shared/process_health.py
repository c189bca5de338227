"""Process liveness: heartbeat files that show work is progressing, and workers that die with
the process that started them."""

import ctypes
import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# The environment variable a launcher sets to its own pid, so its workers die with it.
PARENT_PID_ENV = "TESSERA_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def touch_heartbeat(path: Path) -> None:
    """Mark now as the last moment this process's work was seen progressing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the heartbeat at path was last touched; None when it was never written."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


def die_with_parent(parent_pid: int, *, poll_seconds: float = 1.0) -> None:
    """Make this process die when parent_pid (the launcher that started it) dies.

    Linux delivers SIGKILL at the parent's death (PR_SET_PDEATHSIG). That covers the parent
    thread that forked us, so a watcher thread also checks the parent pid as a fallback (and on
    systems without prctl). A parent already gone before this call kills us at once.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError):
        log.warning("no prctl here; only the parent watch ends this process with its parent")
    if os.getppid() != parent_pid:
        _orphaned(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        _orphaned(parent_pid)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _orphaned(parent_pid: int) -> None:
    log.error("parent process %d is gone; exiting so a restarted one does not double up",
              parent_pid)
    os.kill(os.getpid(), signal.SIGKILL)
