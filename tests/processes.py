"""Processes the end-to-end tests start as a person would (`make run`, `invledger serve`): a free port, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ctrl_c(process: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGINT to the process's group (started with start_new_session), as a terminal's Ctrl-C; SIGKILL if it hangs."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def stop(*processes: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM to every process at once, then wait for each; SIGKILL one that has not ended within `timeout_s`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
