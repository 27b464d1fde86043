"""The report that travels with every derived series: a DICOM SR, TID 1500 Measurement Report (highdicom).

Why an SR and not only private tags: private elements are invisible in most viewers and lost by some archives;
an SR is a standard object PACS stores, lists in the study and shows as text, so the radiologist can read what
was done to the series and how it scored without any gateway tool.

Content (one TID 1501 measurement group):
- TID 4019 algorithm identification: enhancer name and version; parameters: weights sha256, task, strength.
- Finding type: the task (DCM 113087 Smoothing for denoise, DCM 113085 Spatial resampling for sr2x), as in
  the derived images' Derivation Code Sequence.
- Measurements (UCUM units): the series' noise sigma ([hnsf'U] for CT, else {arbitrary}), INPUT PSNR (dB)
  and SSIM (means over the series, the job's figures), DEGRADE_RESTORE PSNR and SSIM (when scored).
- Qualitative evaluation: the QA verdict (PASS / WARN / FAIL); the reasons as a TEXT item beside it.
- References: every derived and every source instance is evidence (Current Requested Procedure Evidence),
  and the group's source images are the middle derived instance and its source.
Codes with no standard equivalent use the private scheme `99ENHGW` (prefix 99 = local, PS3.16 8.2).
The SR's Series and SOP Instance UIDs derive from the derived series UID, so a re-run replaces it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_utils.derive import DERIVATION_CODES
from dicom_utils.enhancement import Task
from dicom_utils.uids import derived_uid

SCHEME = "99ENHGW"


def _code(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, SCHEME, meaning)


NOISE = _code("EGW001", "Noise standard deviation")
INPUT_PSNR = _code("EGW002", "PSNR enhanced vs received")
INPUT_SSIM = _code("EGW003", "SSIM enhanced vs received")
DR_PSNR = _code("EGW004", "PSNR degrade-restore vs received")
DR_SSIM = _code("EGW005", "SSIM degrade-restore vs received")
QA_VERDICT = _code("EGW010", "Enhancement QA verdict")
QA_REASONS = _code("EGW011", "Enhancement QA reasons")
VERDICTS = {
    "PASS": _code("EGW020", "QA passed"),
    "WARN": _code("EGW021", "QA warning"),
    "FAIL": _code("EGW022", "QA failed"),
}
#: The finding type of each task: the derived images' Derivation Code (why those codes: DERIVATION_CODES).
TASKS: dict[str, CodedConcept] = {task: CodedConcept(*DERIVATION_CODES[task]) for task in Task}
DB = CodedConcept("dB", "UCUM", "decibel")
NO_UNIT = CodedConcept("1", "UCUM", "no units")
HU = CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
ARBITRARY = CodedConcept("[arb'U]", "UCUM", "arbitrary unit")


@dataclass(frozen=True)
class ReportFacts:
    """What the report states about one derived series (the same numbers as the jobs table and private tags)."""

    enhancer: str
    version: str
    weights_sha256: str
    task: str
    strength: float | None
    modality: str
    noise_sigma: float | None
    input_psnr: float | None
    input_ssim: float | None
    dr_psnr: float | None
    dr_ssim: float | None
    qa_verdict: str | None
    qa_reasons: str
    software_version: str


def report_uids(derived_series_uid: str) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the SR of a derived series: deterministic."""
    return derived_uid(derived_series_uid, "sr-series"), derived_uid(derived_series_uid, "sr")


def _measurement(name: CodedConcept, value: float | None, unit: CodedConcept) -> list[Measurement]:
    if value is None:
        return []
    return [Measurement(name=name, value=float(min(value, 999.0)), unit=unit)]


def reference(study_uid: str, series_uid: str, sop_uid: str, sop_class_uid: str) -> Dataset:
    """An instance as the SR's evidence lists it: its four UIDs (what `build_report` needs of all but two)."""
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID, ds.SOPClassUID = sop_uid, sop_class_uid
    return ds


def build_report(
    facts: ReportFacts, derived: Sequence[Dataset], sources: Sequence[Dataset], *, series_number: int
) -> tuple[Dataset, bytes]:
    """The SR for a derived series (its instances, in order) and its source instances.

    Whole headers are needed only for the middle derived instance (the patient and study of the report, the
    image it measures) and the source it names; the others may be `reference`s (UIDs only).
    `series_number` is allocated by the caller like a derived series' (`finish.report_number_candidates`):
    the SR is a series of the study too, and must not share its number with another one.
    """
    if not derived or not sources:
        raise ValueError("an SR needs at least one derived and one source instance to reference")
    first = derived[len(derived) // 2]
    source = _source_of(first, sources)
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=derived_uid("2.25.1", "enhance-gateway-device"),
            name="enhance-gateway",
            manufacturer_name="enhance-gateway",
            model_name=facts.enhancer[:64],
        ),
    )
    parameters = [f"task {facts.task}"]
    if facts.weights_sha256:
        parameters.append(f"weights sha256 {facts.weights_sha256}")
    if facts.strength is not None:
        parameters.append(f"strength {facts.strength:g}")
    noise_unit = HU if facts.modality.upper() == "CT" else ARBITRARY
    measurements = (
        _measurement(NOISE, facts.noise_sigma, noise_unit)
        + _measurement(INPUT_PSNR, facts.input_psnr, DB)
        + _measurement(INPUT_SSIM, facts.input_ssim, NO_UNIT)
        + _measurement(DR_PSNR, facts.dr_psnr, DB)
        + _measurement(DR_SSIM, facts.dr_ssim, NO_UNIT)
    )
    evaluations = (
        [QualitativeEvaluation(QA_VERDICT, VERDICTS[facts.qa_verdict])] if facts.qa_verdict in VERDICTS else []
    )
    series_uid, sop_uid = report_uids(str(first.SeriesInstanceUID))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid(series_uid, "tracking"), identifier="enhancement quality"
        ),
        finding_type=TASKS[facts.task],
        algorithm_id=AlgorithmIdentification(name=facts.enhancer, version=facts.version, parameters=parameters),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[
            SourceImageForMeasurementGroup.from_source_image(first),
            SourceImageForMeasurementGroup.from_source_image(source),
        ],
    )
    if facts.qa_reasons:
        group[0].ContentSequence.append(
            TextContentItem(
                name=QA_REASONS, value=facts.qa_reasons[:1024], relationship_type=RelationshipTypeValues.CONTAINS
            )
        )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=[group],
    )
    with warnings.catch_warnings():
        # highdicom warns about odd Patient Names by quoting them: PHI that must never reach the logs
        warnings.simplefilter("ignore")
        # the measured instance first: the SR takes the patient and study from its first evidence
        evidence = [first, source, *(d for d in derived if d is not first), *(s for s in sources if s is not source)]
        sr = _sr(facts, report, evidence, series_uid, sop_uid, series_number)
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return sr, buf.getvalue()


def _sr(
    facts: ReportFacts,
    report: MeasurementReport,
    evidence: Sequence[Dataset],
    series_uid: str,
    sop_uid: str,
    number: int,
) -> Comprehensive3DSR:
    return Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="enhance-gateway",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"Enhancement report ({facts.enhancer})"[:64],
        software_versions=facts.software_version,
    )


def _source_of(derived: Dataset, sources: Sequence[Dataset]) -> Dataset:
    """The source instance a derived one names in its Source Image Sequence (else the middle source)."""
    refs = {str(item.ReferencedSOPInstanceUID) for item in derived.get("SourceImageSequence", [])}
    for ds in sources:
        if str(ds.SOPInstanceUID) in refs:
            return ds
    return sources[len(sources) // 2]


