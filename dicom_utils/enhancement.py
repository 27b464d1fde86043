"""The record of one enhancement, shared by ``derive`` and ``private_tags``.

Why a module of its own: ``derive`` writes the private block through ``private_tags`` and ``private_tags`` needs
this type; keeping it here avoids an import cycle. ``dicom_utils.derive`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Task(StrEnum):
    """What an enhancer does. The values are the strings configs, private tags and model cards carry: a member
    equals its string, so stored and configured values compare and look up unchanged."""

    DENOISE = "denoise"
    SR2X = "sr2x"
    SR4X = "sr4x"
    DEBLUR = "deblur"


TASKS: tuple[str, ...] = tuple(task.value for task in Task)
METRIC_BASES = ("INPUT", "DEGRADE_RESTORE")
QA_FLAGS = ("PASS", "WARN", "FAIL")


@dataclass(frozen=True)
class Enhancement:
    """What was done to one instance, and how well: the provenance written into the derived object.

    ``psnr``/``ssim`` compare what ``metric_basis`` says: ``INPUT`` = enhanced vs the received image (fidelity),
    ``DEGRADE_RESTORE`` = the received image degraded by the enhancer's own degradation then restored, vs the
    received image (a score against a real reference). When the headline score is DEGRADE_RESTORE, the fidelity
    score can be recorded as well in ``input_psnr``/``input_ssim`` (the issue asks for both).

    ``qa_flag`` is this instance's QA verdict; ``series_qa`` and ``qa_reasons`` the whole series' (the gate
    decides on the series). ``noise_*`` is the series' noise estimate in modality units, ``strength`` the
    route's strength, ``degrade_restore_slices`` the Instance Numbers the DEGRADE_RESTORE score was taken on.
    """

    enhancer: str
    version: str
    task: str
    weights_sha256: str
    psnr: float | None
    ssim: float | None
    metric_basis: str
    processing_ms: float
    qa_flag: str
    input_psnr: float | None = None
    input_ssim: float | None = None
    # Series-level facts (the same in every instance of a derived series); None/"" when not measured.
    noise_sigma: float | None = None
    noise_method: str = ""
    noise_background_sigma: float | None = None
    strength: float | None = None
    series_qa: str = ""
    qa_reasons: str = ""
    degrade_restore_slices: tuple[int, ...] = ()
    #: The enhancer was trained with an adversarial loss and may show plausible structure that is not in the
    #: patient's data: said in the Derivation Description and the private block of every derived instance.
    hallucination_risk: bool = False

    def __post_init__(self) -> None:
        """Reject values that would produce a non-conformant or misleading derived object."""
        if not self.enhancer or not self.version:
            raise ValueError("Enhancement needs a non-empty enhancer name and version")
        if self.task not in TASKS:
            raise ValueError(f"Enhancement.task must be one of {TASKS}, not {self.task!r}")
        if self.metric_basis not in METRIC_BASES:
            raise ValueError(
                f"Enhancement.metric_basis must be one of {METRIC_BASES}, not {self.metric_basis!r}"
            )
        if self.qa_flag not in QA_FLAGS:
            raise ValueError(f"Enhancement.qa_flag must be one of {QA_FLAGS}, not {self.qa_flag!r}")
        if self.series_qa and self.series_qa not in QA_FLAGS:
            raise ValueError(f"Enhancement.series_qa must be empty or one of {QA_FLAGS}, not {self.series_qa!r}")
