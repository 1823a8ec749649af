"""Start torchrun for the DDP tests: on a port of our own, with the children's output on failure.

Tests that use this are marked `@pytest.mark.xdist_group("ddp")`, so under `pytest -n N
--dist loadgroup` they run one after the other in one worker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

TAIL = 4000  # characters of each stream shown when a run fails


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= TAIL else "[...]" + text[-TAIL:]


def run_torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> None:
    """`torchrun --nproc-per-node nproc ARGS` on one node; pytest.fail with both output streams
    when it exits non-zero or runs past `timeout` seconds.

    Not --standalone: it rendezvouses on localhost:0 whatever port it is given, and the DDP
    tests failed when two such runs overlapped; each run here gets a static rendezvous on a port
    picked just before (the xdist group keeps our own runs from overlapping at all).
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(_report(cmd, f"ran past {timeout} s", e.stdout, e.stderr), pytrace=False)
    if proc.returncode != 0:
        why = f"exited with status {proc.returncode}"
        pytest.fail(_report(cmd, why, proc.stdout, proc.stderr), pytrace=False)


def _report(cmd: list[str], why: str, stdout, stderr) -> str:
    return (
        f"torchrun {why}: {' '.join(cmd)}\n"
        f"----- stdout (tail) -----\n{_tail(stdout)}\n"
        f"----- stderr (tail) -----\n{_tail(stderr)}"
    )
