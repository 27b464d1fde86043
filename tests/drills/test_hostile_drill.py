"""The hostile-network drill at CI size (issue 15): while each attack is in place, every legitimate mutual-TLS
C-ECHO succeeds, and with a hung PACS every series still reaches the archive and the healthy PACS within
their own destination's timeout. Behaviour, not timing: the counts asserted are refusals and late deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.drills.hostile import format_results, hostile_drill

pytestmark = pytest.mark.slow


def test_no_legitimate_sender_is_refused_and_no_delivery_waits_for_another_destination(tmp_path: Path) -> None:
    results = hostile_drill(tmp_path, seconds=5.0)
    table = format_results(results)
    assert len(results) == 7, table
    for result in results:
        assert result.probes, table
        assert result.failed == 0, f"{result.attack}: legitimate senders refused\n{table}"
    (hung,) = [r for r in results if r.attack == "hung PACS"]
    assert hung.delayed == 0, table
