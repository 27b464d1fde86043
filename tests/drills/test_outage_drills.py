"""Destination outage and full-disk drills at CI size (the report runs them at full size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.drills.destination import destination_drill
from bench.drills.disk import disk_full_drill

pytestmark = pytest.mark.slow


def test_destination_down_then_back_delivers_once_with_backoff(tmp_path: Path) -> None:
    """Orthanc down before the send, then killed mid-send: every derived instance arrives once, backoff grows."""
    result = destination_drill(tmp_path, slices=10, down_seconds=5.0, timeout=180)
    print(result.summary())
    assert result.acknowledged == 20 and result.delivered == 20
    assert result.passed, result.summary()
    assert result.details["down-before-send next_try_in"][:3] == [0.5, 1.0, 2.0]


def test_disk_full_refuses_with_a700_and_recovers(tmp_path: Path) -> None:
    """var_dir on a 64 MB tmpfs (watermark fallback without mount rights): 0xA700, nothing corrupt, recovery."""
    result = disk_full_drill(tmp_path, slices=30, timeout=180)
    print(result.summary())
    assert result.acknowledged >= 30
    assert result.passed, result.summary()
