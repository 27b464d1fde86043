"""Stop signals get through whatever the main thread holds, and end a StopSignals sleep early."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.signals import StopSignals
from tests.gateway.harness import REPO


@pytest.fixture
def usr1() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_signal_ends_the_sleep_early(usr1: None) -> None:
    stops = StopSignals(signal.SIGUSR1)
    assert stops.sleep(0.05) is False and stops.received is None
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    started = time.monotonic()
    assert stops.sleep(30.0) is True
    assert time.monotonic() - started < 5
    assert stops.received == signal.SIGUSR1 and stops.name == "SIGUSR1"


_WHILE_LOGGING = """
import os, signal, sys
from gateway import logs
from gateway.signals import StopSignals
logs.configure()
log = logs.get("probe")
log.info("before")  # the first line creates the write lock
stops = StopSignals(signal.SIGTERM)
from structlog._output import WRITE_LOCKS
with WRITE_LOCKS[sys.stdout]:  # the lock a log line holds while it prints
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecodes: the handler runs here, inside the lock
        pass
log.info("after", received=stops.name)
"""


def test_a_signal_while_a_log_line_is_printed_does_not_hang() -> None:
    """The service's old handler logged and set an Event: with the write lock held it hung forever."""
    done = subprocess.run([sys.executable, "-c", _WHILE_LOGGING], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert '"received": "SIGTERM"' in done.stdout
