"""Processes found by an environment variable they inherited: how a test finds (and kills)
the Ray processes it started, a whole Ray node among them, and no one else's."""

import os
import signal
import time
from pathlib import Path


def marked(name: str, value: str) -> list[int]:
    """Live processes (not this one, not zombies) whose environment has name=value."""
    mark = f"{name}={value}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0") and (proc / "stat").read_text().split()[2] != "Z":
                pids.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return pids


def kill_marked(name: str, value: str, timeout: float = 10) -> None:
    """SIGKILL every process marked name=value and wait until none is left."""
    deadline = time.time() + timeout
    while pids := marked(name, value):
        assert time.time() < deadline, f"processes {pids} with {name}={value} outlived SIGKILL"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
