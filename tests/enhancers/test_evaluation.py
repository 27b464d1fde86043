"""`evaluate` on DICOM files the user points at: tables with the data range stated, figures, CLI exit codes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from enhancers.cli import main as cli_main
from tests.realdata import testfile


def test_evaluate_images_dir_writes_tables_and_figures(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(testfile("MR_small.dcm"), images / "a.dcm")
    (images / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    code = cli_main(
        [
            "evaluate",
            "--modality",
            "MR",
            "--task",
            "denoise",
            "--images",
            str(images),
            "--out",
            str(out),
            "--enhancers",
            "nlm,gaussian",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    with open(out / "evaluation.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = {(r["degradation"], r["enhancer"]) for r in rows}
    for deg in ("mr-rician-0.03", "mr-rician-0.05", "blur-1.0"):
        assert {(deg, "nlm"), (deg, "gaussian"), (deg, "(degraded input)")} <= names
    noisy = {r["enhancer"]: float(r["psnr_db"]) for r in rows if r["degradation"] == "mr-rician-0.05"}
    assert noisy["nlm"] > noisy["(degraded input)"]
    md = (out / "evaluation.md").read_text()
    assert "data range" in md and "| nlm |" in md
    figs = sorted((out / "figures").rglob("*.png"))
    assert len(figs) == 6


def test_cli_errors_are_exit_codes(tmp_path: Path) -> None:
    assert cli_main(["train", "--model", "nope", "--modality", "MR", "--out", str(tmp_path)]) == 2
    assert (
        cli_main(["train", "--model", "fastdn", "--task", "sr2x", "--modality", "MR", "--out", str(tmp_path)])
        == 2
    )
    assert cli_main(["evaluate", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_models_command_lists_the_registry(capsys: object) -> None:
    assert cli_main(["models"]) == 0
    assert cli_main(["models", "--json"]) == 0
