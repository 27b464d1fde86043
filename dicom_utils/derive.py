"""Build the derived instance the gateway sends back to PACS.

Why so much care: the derived series lands in the patient's study next to the original. A radiologist must see
at once that it is derived, by what software and from which images; a PACS must file it in the same study and
frame of reference without clashing with the source; a re-run must replace, not duplicate. So: same Patient,
Study and Frame of Reference; new deterministic Series/SOP Instance UIDs; DERIVED\\SECONDARY Image Type;
Derivation Description and codes; Source Image / Referenced Series / Related Series references; Contributing
Equipment recording both the acquisition device and the gateway; the gateway's private block with metrics.
Output is always uncompressed Explicit VR Little Endian: never a lossy re-encoding of diagnostic pixels.

The rules follow DICOM PS3.3 (General Image C.7.6.1, General Series C.7.3.1, Enhanced General Equipment
C.7.5.2, SOP Common's Contributing Equipment C.12.1, Common Instance Reference C.12.2, Derivation Image
Functional Group C.7.6.16.2.6) and are checked in the tests by dicom3tools' ``dciodvfy``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from dicom_utils import private_tags
from dicom_utils.classify import DX_FAMILY_CLASSES, is_enhanced_multiframe
from dicom_utils.enhancement import Enhancement
from dicom_utils.errors import DerivationError, DicomUtilsError
from dicom_utils.pixels import number_of_frames, stored_frames, to_stored
from dicom_utils.uids import derived_uid

__all__ = [
    "DerivationOptions",
    "Enhancement",
    "derive_instance",
    "derived_series_uid",
    "derived_sop_uid",
]

#: Implementation Class UID of files written by the gateway (deterministic, 2.25 form).
IMPLEMENTATION_CLASS_UID = derived_uid("enhance-gateway", "implementation-class-uid")

# (code value, coding scheme, meaning)
CodeTuple = tuple[str, str, str]
DERIVATION_CODES: dict[str, CodeTuple] = {
    "denoise": ("113087", "DCM", "Smoothing"),
    "sr2x": ("113085", "DCM", "Spatial resampling"),
    "sr4x": ("113085", "DCM", "Spatial resampling"),
    # Deblurring restores edge sharpness at the same matrix. CID 7203 (Image Derivation) has no "deconvolution"
    # (DCM 126310/126311/113238 belong to perfusion and diffusion models); "Unsharp mask" (113089) names one
    # classical algorithm and "Gaussian blur" (113088) the opposite operation; "Edge enhancement" (113086) says
    # what was done to the pixels, whichever algorithm (CNN or tuned unsharp mask) did it.
    "deblur": ("113086", "DCM", "Edge enhancement"),
}
PURPOSE_SOURCE_IMAGE: CodeTuple = ("121322", "DCM", "Source image for image processing operation")
PURPOSE_ACQUISITION_EQUIPMENT: CodeTuple = ("109101", "DCM", "Acquisition Equipment")
PURPOSE_PROCESSING_EQUIPMENT: CodeTuple = ("109102", "DCM", "Processing Equipment")
TASK_SCALE: dict[str, int] = {"denoise": 1, "sr2x": 2, "sr4x": 4, "deblur": 1}

#: Elements never copied from the source: pixel payloads, signatures that the change invalidates, a thumbnail
#: of the old pixels, per-series statistics that one instance cannot know.
_DROP_KEYWORDS = (
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelDataProviderURL",
    "IconImageSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "DataSetTrailingPadding",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "EncapsulatedPixelDataValueTotalLength",
)

#: Equipment attributes that describe the acquisition device: moved into Contributing Equipment.
_ACQUISITION_EQUIPMENT_KEYWORDS = (
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
)

#: MR Pulse Sequence / Bulk Motion attributes conditional on Image Type value 1 ORIGINAL or MIXED.
_ORIGINAL_ONLY_KEYWORDS = (
    "PulseSequenceName",
    "MRAcquisitionType",
    "EchoPulseSequence",
    "MultipleSpinEcho",
    "MultiPlanarExcitation",
    "PhaseContrast",
    "VelocityEncodingAcquisitionSequence",
    "TimeOfFlightContrast",
    "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence",
    "SaturationRecovery",
    "SpectrallySelectedSuppression",
    "OversamplingPhase",
    "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal",
    "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories",
    "BulkMotionCompensationTechnique",
    "BulkMotionSignalSource",
)

#: Transfer syntaxes that are always lossy: instances received in them are flagged as lossy.
_LOSSY_SYNTAX_METHOD: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
}
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93"})


@dataclass(frozen=True)
class DerivationOptions:
    """Site choices for derived series (from the gateway settings).

    ``series_datetime``: when set (the worker passes one per job), Series Date/Time of the derived series;
    otherwise the source's are kept so the derived series sorts beside its source.
    ``device_serial_number``/``model_name``: the gateway as equipment (Enhanced CT/MR require a serial number).
    ``series_number``: the derived series' Series Number when the caller chose one (the gateway allocates one
    per derived series so that two enhancers of one source never share it); otherwise the source's number plus
    ``series_number_offset``.
    """

    software_version: str
    series_number_offset: int = 1000
    series_number: int | None = None
    description_suffix: str = "ENHANCED"
    manufacturer: str = "enhance-gateway"
    institution_name: str | None = None
    model_name: str = "enhance-gateway"
    device_serial_number: str = "unspecified"
    station_name: str | None = None
    series_datetime: datetime | None = None


def derived_series_uid(source_series_uid: str, enhancer: str, version: str) -> str:
    """Series Instance UID of the derived series: same source series + enhancer + version, same UID."""
    return derived_uid(source_series_uid, "series", enhancer, version)


def derived_sop_uid(source_sop_uid: str, enhancer: str, version: str) -> str:
    """SOP Instance UID of the derived instance: same source instance + enhancer + version, same UID."""
    return derived_uid(source_sop_uid, "sop", enhancer, version)


def _code(code: CodeTuple) -> Dataset:
    """A Code Sequence item (Basic Code Sequence macro)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _ds(value: float) -> str:
    """A number formatted for DS (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _da_tm(moment: datetime) -> tuple[str, str]:
    """DICOM DA and TM strings."""
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def _copy_without_pixels(source: Dataset, *, drop_overlays: bool) -> Dataset:
    """Deep copy of every element except pixel payloads and what a derived object must not inherit."""
    drop_tags = {tag for tag in (tag_for_keyword(k) for k in _DROP_KEYWORDS) if tag is not None}
    out = Dataset()
    for elem in source:
        tag = int(elem.tag)
        group, element = tag >> 16, tag & 0xFFFF
        if tag in drop_tags or element == 0x0000:
            continue
        if drop_overlays and 0x6000 <= group <= 0x601E and group % 2 == 0:
            continue
        if group == private_tags.PRIVATE_GROUP:
            continue
        out.add(copy.deepcopy(elem))
    return out


def _swap_big_endian_words(ds: Dataset) -> None:
    """Byte-swap OW/OL/OF/OD/OV payloads read from a big endian file, since output is little endian."""
    sizes = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}

    def callback(_ds: Dataset, elem: DataElement) -> None:
        size = sizes.get(str(elem.VR))
        if size and isinstance(elem.value, bytes | bytearray) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()

    ds.walk(callback)


def _image_type(values: Any, *, enhanced: bool, dx_family: bool) -> list[str]:
    """DERIVED\\SECONDARY keeping value 3 (and beyond) by modality rules; 4 values for Enhanced objects."""
    if values is None or values == "":
        current: list[str] = []
    elif isinstance(values, str):
        current = [values]
    else:
        current = [str(v) for v in values]
    current = [v.strip() for v in current]
    if enhanced:
        # Enhanced CT/MR: value 2 is enumerated PRIMARY only (dciodvfy enforces it): keep the source's.
        result = ["DERIVED", current[1] if len(current) > 1 and current[1] else "PRIMARY", *current[2:]]
    else:
        result = ["DERIVED", "SECONDARY", *current[2:]]
    if enhanced:
        while len(result) < 4:
            result.append("NONE" if len(result) == 3 else "")
    elif dx_family:
        if len(result) < 3:
            result.append("")
        result[2] = ""
    return result


def _series_description(source: str, suffix: str, enhancer: str) -> str:
    """'<source> <suffix> (<enhancer>)' in at most 64 characters, shortening the source part first."""
    tail = f"{suffix} ({enhancer})"[:64]
    source = source.strip()
    room = 64 - len(tail) - 1
    if source and room > 0:
        return f"{source[:room].rstrip()} {tail}"
    return tail


def mark_series_qa(ds: Dataset, verdict: str, reasons: str, *, marker: bool) -> None:
    """Record the series' QA verdict in a derived instance; with `marker`, prefix Series Description "QA WARN".

    Why a prefix: a viewer's series list shows the start of Series Description, and a radiologist must see
    the flag before opening the series. The result stays within 64 characters: the start of the source's
    description is cut, so the gateway's suffix and the enhancer's name stay.
    """
    private_tags.set_series_qa(ds, verdict, reasons)
    if not marker or verdict == "PASS":
        return
    prefix = f"QA {verdict} "
    current = str(ds.get("SeriesDescription", "") or "")
    if current.startswith(prefix):
        return
    room = 64 - len(prefix)
    ds.SeriesDescription = prefix + (current if len(current) <= room else current[-room:].lstrip())


def _source_reference(source: Dataset, frame: int | None = None) -> Dataset:
    """An item of Source Image Sequence pointing at the source (and one of its frames)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    item.PurposeOfReferenceCodeSequence = Sequence([_code(PURPOSE_SOURCE_IMAGE)])
    return item


def _derivation_description(enh: Enhancement, opts: DerivationOptions) -> str:
    """Human-readable line a radiologist reads in the viewer's header panel."""
    what = {
        "denoise": "denoising",
        "sr2x": "2x super-resolution",
        "sr4x": "4x super-resolution",
        "deblur": "deblurring",
    }[enh.task]
    text = f"{what} by {opts.manufacturer} {opts.software_version}: {enh.enhancer} {enh.version}"
    if enh.hallucination_risk:
        # first, so a viewer that truncates the line still shows it
        text = f"HALLUCINATION RISK (adversarially trained; may show structure not in the data): {text}"
    if enh.weights_sha256:
        text += f" (weights sha256 {enh.weights_sha256[:16]})"
    if enh.psnr is not None:
        text += f"; PSNR {enh.psnr:.2f} dB"
    if enh.ssim is not None:
        text += f", SSIM {enh.ssim:.4f}"
    return f"{text} ({enh.metric_basis}); QA {enh.qa_flag}"[:1024]


def _equipment_item(
    purpose: CodeTuple,
    attributes: Iterable[tuple[str, Any]],
    moment: datetime | None,
    description: str | None,
) -> Dataset:
    """A Contributing Equipment Sequence item."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = Sequence([_code(purpose)])
    for keyword, value in attributes:
        if value not in (None, ""):
            setattr(item, keyword, copy.deepcopy(value))
    if "Manufacturer" not in item:
        item.Manufacturer = "UNKNOWN"  # Type 1 in Contributing Equipment; the source did not say
    if moment is not None:
        item.ContributionDateTime = moment.strftime("%Y%m%d%H%M%S.%f")
    if description:
        item.ContributionDescription = description[:1024]
    return item


def _contributing_equipment(
    source: Dataset, enh: Enhancement, opts: DerivationOptions, moment: datetime
) -> Sequence:
    """Existing items kept, the acquisition device added once (109101), the gateway appended (109102)."""
    items = [copy.deepcopy(item) for item in source.get("ContributingEquipmentSequence", [])]
    has_acquisition = any(
        str(code.get("CodeValue", "")) == PURPOSE_ACQUISITION_EQUIPMENT[0]
        for item in items
        for code in item.get("PurposeOfReferenceCodeSequence", [])
    )
    if not has_acquisition:
        attrs = [(kw, source.get(kw)) for kw in _ACQUISITION_EQUIPMENT_KEYWORDS]
        items.append(_equipment_item(PURPOSE_ACQUISITION_EQUIPMENT, attrs, None, None))
    gateway = [
        ("Manufacturer", opts.manufacturer),
        ("InstitutionName", opts.institution_name),
        ("StationName", opts.station_name),
        ("ManufacturerModelName", opts.model_name),
        ("DeviceSerialNumber", opts.device_serial_number),
        ("SoftwareVersions", opts.software_version),
    ]
    description = f"{enh.task} by {enh.enhancer} {enh.version}"
    items.append(_equipment_item(PURPOSE_PROCESSING_EQUIPMENT, gateway, moment, description))
    return Sequence(items)


def _set_equipment(ds: Dataset, opts: DerivationOptions) -> None:
    """General / Enhanced General Equipment now describe the gateway (the device is in Contributing Equip.)."""
    for keyword in ("StationName", "InstitutionalDepartmentName", "DeviceSerialNumber", "DeviceUID"):
        if keyword in ds:
            del ds[keyword]
    ds.Manufacturer = opts.manufacturer
    ds.ManufacturerModelName = opts.model_name
    ds.DeviceSerialNumber = opts.device_serial_number
    ds.SoftwareVersions = opts.software_version
    if opts.station_name:
        ds.StationName = opts.station_name
    if opts.institution_name is not None:
        ds.InstitutionName = opts.institution_name
        if "InstitutionAddress" in ds:
            del ds.InstitutionAddress


def _referenced_series(source: Dataset) -> Sequence:
    """Common Instance Reference: the source series and instance, merged into any existing references."""
    items = [copy.deepcopy(item) for item in source.get("ReferencedSeriesSequence", [])]
    ref_instance = Dataset()
    ref_instance.ReferencedSOPClassUID = source.SOPClassUID
    ref_instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    for item in items:
        if str(item.get("SeriesInstanceUID", "")) == str(source.SeriesInstanceUID):
            refs = item.get("ReferencedInstanceSequence")
            if refs is None:
                item.ReferencedInstanceSequence = Sequence([ref_instance])
            elif not any(str(r.get("ReferencedSOPInstanceUID")) == str(source.SOPInstanceUID) for r in refs):
                refs.append(ref_instance)
            return Sequence(items)
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([ref_instance])
    items.append(series)
    return Sequence(items)


def _related_series(source: Dataset) -> Sequence:
    """General Series' Related Series Sequence: the source series, with the derivation purpose."""
    items = [copy.deepcopy(item) for item in source.get("RelatedSeriesSequence", [])]
    related = Dataset()
    related.StudyInstanceUID = source.StudyInstanceUID
    related.SeriesInstanceUID = source.SeriesInstanceUID
    related.PurposeOfReferenceCodeSequence = Sequence([_code(PURPOSE_SOURCE_IMAGE)])
    items.append(related)
    return Sequence(items)


def _floats(value: Any) -> list[float]:
    """A multi-valued DS as a list of floats."""
    if isinstance(value, str | int | float):
        return [float(value)]
    return [float(v) for v in value]


def _halve_spacing(container: Dataset, keyword: str, scale: int) -> tuple[float, float] | None:
    """Divide a row/column spacing attribute by ``scale``; return the OLD (row, column) spacing."""
    if keyword not in container or not container[keyword].value:
        return None
    old = _floats(container[keyword].value)
    if len(old) != 2:
        return None
    container[keyword].value = [_ds(v / scale) for v in old]
    return old[0], old[1]


def _shift_position(
    container: Dataset, orientation: list[float] | None, old_spacing: tuple[float, float] | None, scale: int
) -> None:
    """Move Image Position (Patient) to the centre of the new first pixel.

    The old first pixel's centre sits half an old pixel from the image corner, the new one half a new pixel:
    the shift is (new - old)/2 along the row direction (column spacing) and the column direction (row spacing).
    """
    if orientation is None or old_spacing is None or "ImagePositionPatient" not in container:
        return
    position = _floats(container.ImagePositionPatient)
    if len(position) != 3 or len(orientation) != 6:
        return
    row_dir = np.array(orientation[:3])
    col_dir = np.array(orientation[3:])
    row_spacing, col_spacing = old_spacing
    shift = (
        row_dir * (col_spacing / scale - col_spacing) / 2 + col_dir * (row_spacing / scale - row_spacing) / 2
    )
    container.ImagePositionPatient = [_ds(p + s) for p, s in zip(position, shift, strict=True)]


def _first(group: Dataset | None, keyword: str) -> Dataset | None:
    """First item of a functional group macro sequence."""
    if group is None or keyword not in group or not group[keyword].value:
        return None
    item: Dataset = group[keyword].value[0]
    return item


def _resample_geometry_enhanced(ds: Dataset, scale: int) -> None:
    """Per-frame and shared Pixel Measures and Plane Position for super-resolution of Enhanced objects."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    shared_measures = _first(shared, "PixelMeasuresSequence")
    shared_orientation = _first(shared, "PlaneOrientationSequence")
    shared_old = _halve_spacing(shared_measures, "PixelSpacing", scale) if shared_measures else None
    shared_position = _first(shared, "PlanePositionSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if shared_position is not None:
        orientation_item = shared_orientation
        orientation = _floats(orientation_item.ImageOrientationPatient) if orientation_item else None
        _shift_position(shared_position, orientation, shared_old, scale)
    for group in per_frame:
        measures = _first(group, "PixelMeasuresSequence")
        old = _halve_spacing(measures, "PixelSpacing", scale) if measures else shared_old
        orientation_item = _first(group, "PlaneOrientationSequence") or shared_orientation
        orientation = (
            _floats(orientation_item.ImageOrientationPatient)
            if orientation_item is not None and "ImageOrientationPatient" in orientation_item
            else None
        )
        position = _first(group, "PlanePositionSequence")
        if position is not None:
            _shift_position(position, orientation, old, scale)


def _resample_geometry_classic(ds: Dataset, scale: int) -> None:
    """Pixel Spacing, Imager Pixel Spacing and Image Position for super-resolution of classic images."""
    old = _halve_spacing(ds, "PixelSpacing", scale)
    imager_old = _halve_spacing(ds, "ImagerPixelSpacing", scale)
    _halve_spacing(ds, "NominalScannedPixelSpacing", scale)
    orientation = _floats(ds.ImageOrientationPatient) if ds.get("ImageOrientationPatient") else None
    _shift_position(ds, orientation, old or imager_old, scale)


def _update_frame_types(ds: Dataset) -> None:
    """Frame Type (4 values) in CT/MR Image Frame Type sequences: DERIVED\\SECONDARY, values 3-4 kept."""
    groups: list[Dataset] = []
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        groups.append(shared)
    groups.extend(ds.get("PerFrameFunctionalGroupsSequence") or [])
    for group in groups:
        for keyword in ("CTImageFrameTypeSequence", "MRImageFrameTypeSequence"):
            item = _first(group, keyword)
            if item is not None and "FrameType" in item:
                item.FrameType = _image_type(item.FrameType, enhanced=True, dx_family=False)


def _source_image_evidence(source: Dataset) -> Sequence:
    """Source Image Evidence Sequence (Hierarchical SOP Instance Reference) naming the source instance."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    return Sequence([study])


def _set_enhanced_derivation(ds: Dataset, source: Dataset, enh: Enhancement, description: str) -> bool:
    """Derivation Image functional group per frame: frame i derives from source frame i.

    Returns False (nothing done) when the source has no usable Per-frame Functional Groups: creating them
    would add a half-empty module; the caller then records the derivation at the top level.
    """
    frames = number_of_frames(source)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        return False
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    if shared is not None and "DerivationImageSequence" in shared:
        del shared.DerivationImageSequence
    for index, group in enumerate(per_frame):
        derivation = Dataset()
        derivation.DerivationDescription = description
        derivation.DerivationCodeSequence = Sequence([_code(DERIVATION_CODES[enh.task])])
        derivation.SourceImageSequence = Sequence([_source_reference(source, index + 1)])
        group.DerivationImageSequence = Sequence([derivation])
    return True


def _lossy_flags(ds: Dataset, source: Dataset) -> None:
    """Carry Lossy Image Compression over; flag a source received in an always-lossy syntax."""
    if str(source.get("LossyImageCompression", "")) == "01":
        return
    meta = getattr(source, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    method = _LOSSY_SYNTAX_METHOD.get(syntax)
    if method is None and syntax in _J2K_SYNTAXES and _j2k_is_irreversible(source):
        method = "ISO_15444_1"
    if method is None:
        return
    ds.LossyImageCompression = "01"
    methods = list(_multi(source.get("LossyImageCompressionMethod")))
    ratios = list(_multi(source.get("LossyImageCompressionRatio")))
    ratio = _compression_ratio(source)
    if ratio is not None and len(ratios) == len(methods):
        ds.LossyImageCompressionRatio = [*ratios, _ds(ratio)]
        ds.LossyImageCompressionMethod = [*methods, method]


def _multi(value: Any) -> list[Any]:
    """A possibly multi-valued element value as a list ([] when absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, str | int | float):
        return [value]
    return list(value)


def _fragments(source: Dataset) -> list[bytes]:
    """Encapsulated fragments of the source's pixel data ([] when not encapsulated)."""
    meta = getattr(source, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else None
    if syntax is None or not syntax.is_encapsulated or "PixelData" not in source:
        return []
    try:
        # The first item is the Basic Offset Table, not a fragment.
        return list(generate_fragments(source.PixelData))[1:]
    except (ValueError, TypeError):
        return []


def _compression_ratio(source: Dataset) -> float | None:
    """Uncompressed size / encapsulated size of the source pixel data."""
    fragments = _fragments(source)
    compressed = sum(len(f) for f in fragments)
    if compressed == 0:
        return None
    bits = int(source.get("BitsAllocated") or 16)
    size = (
        int(source.Rows)
        * int(source.Columns)
        * number_of_frames(source)
        * int(source.get("SamplesPerPixel", 1))
    )
    return round(size * bits / 8 / compressed, 2)


def _j2k_is_irreversible(source: Dataset) -> bool:
    """True when the first JPEG 2000 codestream uses the irreversible 9/7 wavelet (COD marker)."""
    fragments = _fragments(source)
    if not fragments:
        return False
    stream = fragments[0]
    at = stream.find(b"\xff\x52")
    # COD: marker(2) Lcod(2) Scod(1) SGcod(4) then SPcod: levels, cb w, cb h, cb style, transformation
    if at < 0 or len(stream) < at + 14:
        return False
    return stream[at + 13] == 0


def _preserve_padding(source: Dataset, stored: np.ndarray, scale: int) -> None:
    """Keep Pixel Padding Value pixels (e.g. outside the CT field of view) exactly as they were.

    Viewers and analysis tools treat padding as "no data"; an enhancer smoothing it into plausible values would
    hide the field-of-view edge. With a Pixel Padding Range Limit, every pixel in the range is kept.
    """
    if "PixelPaddingValue" not in source:
        return
    try:
        original = stored_frames(source)
    except DicomUtilsError:
        return
    info = np.iinfo(stored.dtype)
    pad = _as_stored_int(source.PixelPaddingValue, stored.dtype)
    limit_value = source.get("PixelPaddingRangeLimit")
    if limit_value is not None:
        low, high = sorted((pad, _as_stored_int(limit_value, stored.dtype)))
        mask = (original >= low) & (original <= high)
    else:
        mask = original == pad
    if not mask.any() or not info.min <= pad <= info.max:
        return
    if scale != 1:
        mask = mask.repeat(scale, axis=1).repeat(scale, axis=2)
        original = original.repeat(scale, axis=1).repeat(scale, axis=2)
    if mask.shape == stored.shape:
        stored[mask] = original[mask].astype(stored.dtype)


def _as_stored_int(value: Any, dtype: np.dtype[Any]) -> int:
    """A padding value as a stored integer: one read as unsigned (implicit VR 'US or SS') becomes signed."""
    number = int(value)
    if np.issubdtype(dtype, np.signedinteger) and number > np.iinfo(dtype).max:
        number -= 1 << (8 * dtype.itemsize)
    return number


def _strip_original_only(ds: Dataset, source: Dataset) -> None:
    """Drop Enhanced MR acquisition attributes that dciodvfy allows only on ORIGINAL/MIXED images.

    PS3.3 says "may be present otherwise" for most of them; dciodvfy reads them as forbidden for DERIVED.
    Absence is conformant under both readings, and the acquisition details remain in the source series.
    """
    image_type = _multi(source.get("ImageType"))
    if not image_type or str(image_type[0]).strip() not in ("ORIGINAL", "MIXED"):
        return
    for keyword in _ORIGINAL_ONLY_KEYWORDS:
        if keyword in ds:
            del ds[keyword]


def _set_pixel_statistics(ds: Dataset, stored: np.ndarray) -> None:
    """Recompute Smallest/Largest Image Pixel Value when the source had them (VR by Pixel Representation)."""
    vr = "SS" if int(ds.get("PixelRepresentation", 0) or 0) == 1 else "US"
    for keyword, value in (
        ("SmallestImagePixelValue", int(stored.min())),
        ("LargestImagePixelValue", int(stored.max())),
    ):
        if keyword in ds:
            del ds[keyword]
            ds.add_new(keyword, vr, value)


def _file_meta(ds: Dataset, opts: DerivationOptions) -> FileMetaDataset:
    """Part 10 file meta for uncompressed Explicit VR Little Endian, matching the dataset's SOP UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = f"ENHGW_{opts.software_version}"[:16]
    return meta


def _check_shape(source: Dataset, values: np.ndarray, enh: Enhancement) -> int:
    """Validate the enhanced array against the source and the task; return the spatial scale."""
    frames, rows, cols = number_of_frames(source), int(source.Rows), int(source.Columns)
    scale = TASK_SCALE[enh.task]
    expected = (frames, rows * scale, cols * scale)
    if values.ndim == 2 and frames == 1:
        values = values[np.newaxis]
    if tuple(values.shape) != expected:
        raise DerivationError(
            f"task {enh.task} on instance {source.get('SOPInstanceUID', '?')} ({frames} frame(s) of "
            f"{rows}x{cols}) needs values of shape {expected}, got {tuple(values.shape)}"
        )
    return scale


def derive_instance(
    source: Dataset,
    values: np.ndarray,
    enh: Enhancement,
    opts: DerivationOptions,
    *,
    now: datetime | None = None,
) -> Dataset:
    """Build the derived instance for ``source`` holding the enhanced modality ``values``.

    ``values``: float (frames, rows', cols') enhanced modality values; rows'/cols' are twice the source's for
    task ``sr2x`` and four times for ``sr4x`` (spacings divided, positions moved to the new first pixel). The result has file meta for uncompressed Explicit VR Little Endian and is ready for
    ``save_as(path, enforce_file_format=True)``. ``source`` is never modified. ``now`` fixes the creation time
    (tests); by default the local time.
    """
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "Rows",
        "Columns",
    ):
        if keyword not in source:
            raise DerivationError(f"source instance lacks {keyword}: cannot derive from it")
    array = np.asarray(values)
    scale = _check_shape(source, array, enh)
    if array.ndim == 2:
        array = array[np.newaxis]
    moment = now or datetime.now()
    enhanced = is_enhanced_multiframe(source)
    dx_family = str(source.SOPClassUID) in DX_FAMILY_CLASSES

    stored = to_stored(source, array)
    _preserve_padding(source, stored, scale)

    ds = _copy_without_pixels(source, drop_overlays=scale != 1)
    meta = getattr(source, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not UID(str(syntax)).is_little_endian:
        _swap_big_endian_words(ds)

    # Identity: new series and instance in the same study and frame of reference.
    ds.SeriesInstanceUID = derived_series_uid(str(source.SeriesInstanceUID), enh.enhancer, enh.version)
    ds.SOPInstanceUID = derived_sop_uid(str(source.SOPInstanceUID), enh.enhancer, enh.version)
    date, time = _da_tm(moment)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    if opts.series_datetime is not None:
        ds.SeriesDate, ds.SeriesTime = _da_tm(opts.series_datetime)

    # Series.
    source_number = source.get("SeriesNumber")
    number = opts.series_number
    if number is None:
        number = (int(source_number) if source_number not in (None, "") else 0) + opts.series_number_offset
    if not -(2**31) <= number < 2**31:
        raise DerivationError(
            f"derived Series Number {number} does not fit an IS; lower series_number_offset"
        )
    ds.SeriesNumber = number
    ds.SeriesDescription = _series_description(
        str(source.get("SeriesDescription", "") or ""), opts.description_suffix, enh.enhancer
    )
    ds.RelatedSeriesSequence = _related_series(source)
    ds.ReferencedSeriesSequence = _referenced_series(source)

    # Equipment.
    ds.ContributingEquipmentSequence = _contributing_equipment(source, enh, opts, moment)
    _set_equipment(ds, opts)

    # Image type and derivation.
    ds.ImageType = _image_type(source.get("ImageType"), enhanced=enhanced, dx_family=dx_family)
    description = _derivation_description(enh, opts)
    if enhanced:
        _update_frame_types(ds)
        _strip_original_only(ds, source)
    if enhanced and _set_enhanced_derivation(ds, source, enh, description):
        # Required once functional groups carry a Source Image Sequence (frames derived from other instances).
        ds.SourceImageEvidenceSequence = _source_image_evidence(source)
        for keyword in ("DerivationDescription", "DerivationCodeSequence", "SourceImageSequence"):
            if keyword in ds:
                del ds[keyword]
    else:
        ds.DerivationDescription = description
        ds.DerivationCodeSequence = Sequence([_code(DERIVATION_CODES[enh.task])])
        ds.SourceImageSequence = Sequence([_source_reference(source)])
    _lossy_flags(ds, source)

    # Geometry for super-resolution.
    if scale != 1:
        if enhanced:
            _resample_geometry_enhanced(ds, scale)
        else:
            _resample_geometry_classic(ds, scale)

    # Pixels.
    ds.Rows = int(stored.shape[1])
    ds.Columns = int(stored.shape[2])
    _set_pixel_statistics(ds, stored)
    pixel_vr = "OB" if int(source.get("BitsAllocated") or 16) == 8 else "OW"
    ds.add_new(
        "PixelData", pixel_vr, np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    )

    private_tags.write_block(ds, enh)
    ds.file_meta = _file_meta(ds, opts)
    return ds
