"""A real, small file system for disk-full tests: a tmpfs of a few MB mounted on a test's folder, filled by a file.

Why a real mount and not a mocked `shutil.disk_usage` or `os.write`: the gateway meets a full disk through
SQLite (SQLITE_FULL), `open`/`write`/`fsync` (ENOSPC) and `statvfs` at once, in several processes; only a real
file system makes all of them fail the way a hospital server's disk does. Mounting needs root; without it the
tests that use this skip with the reason.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of `size_mb` MB on `path` (created), unmounted by `close()`."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {size_mb} MB tmpfs on {path} (needs root): {done.stderr.strip()}")
        self.ballast = path / "ballast"

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, leave: int = 0) -> int:
        """Grow the ballast file until at most `leave` bytes stay free (0: until ENOSPC); returns bytes free."""
        chunk = b"\0" * (1 << 16)
        with open(self.ballast, "ab") as fh:
            while (room := self.free() - leave) > 0:
                try:
                    fh.write(chunk[: min(len(chunk), room)])
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        return self.free()

    def drain(self) -> None:
        """Remove the ballast: what an admin does when the disk filled up."""
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
