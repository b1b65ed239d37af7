"""Helpers for tests that run real subprocesses (servers, CLI runs)."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen, timeout: float = 30.0) -> str:
    """Terminate ``process`` and return its output; kill it when it has not ended after ``timeout`` seconds."""
    process.terminate()
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]
