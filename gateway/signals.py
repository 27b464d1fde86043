"""Stop signals (SIGTERM, SIGINT) recorded without taking any lock.

Why: a Python signal handler runs in the main thread between two bytecodes of whatever the main thread was
doing. A handler that logs, or sets a `threading.Event`, can need a lock the interrupted code already holds
(structlog's write lock while a log line is printed, the Event's own condition while the main thread is in
`Event.wait`), and the process then hangs on itself. A test found it under load: a SIGTERM that arrived as
the service printed its start-up lines left it hung until it was killed. Here the handler only stores the
signal number; the main loop looks at it between short sleeps and does the logging and stopping itself.
"""

from __future__ import annotations

import signal
import time
from types import FrameType


class StopSignals:
    """Installs lock-free handlers for `signums`; `received` is the first signal number that arrived."""

    def __init__(self, *signums: signal.Signals) -> None:
        self.received: int | None = None
        for signum in signums:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if self.received is None:
            self.received = signum  # a plain attribute store: no lock, safe at any bytecode

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def sleep(self, seconds: float, step: float = 0.1) -> bool:
        """Sleep up to `seconds`, returning early (True) once a signal has arrived."""
        deadline = time.monotonic() + seconds
        while self.received is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(step, left))
        return True
