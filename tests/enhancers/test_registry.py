"""The registry: names, metadata, duplicates, defaults."""

from __future__ import annotations

import pytest

from enhancers import registry
from enhancers.base import ClassicalEnhancer, FloatArray
from enhancers.registry import EnhancerInfo


def _dummy_info(name: str) -> EnhancerInfo:
    return EnhancerInfo(
        name=name,
        version="0",
        task="denoise",
        modalities=("CT",),
        kind="classical",
        weights_sha256="",
        params=0,
    )


class _Identity(ClassicalEnhancer):
    def __init__(self, info: EnhancerInfo) -> None:
        self.info = info

    def apply(self, image: FloatArray) -> FloatArray:
        return image


def test_builtin_classical_enhancers_are_registered() -> None:
    names = registry.names()
    for expected in ("nlm", "gaussian", "unsharp", "clahe", "bicubic"):
        assert expected in names
    assert registry.info("bicubic").task == "sr2x"
    assert registry.info("nlm").kind == "classical"
    assert [i.name for i in registry.infos()] == names


def test_duplicate_name_is_rejected_with_the_name() -> None:
    meta = _dummy_info("test-dup")
    registry.register(meta, lambda: _Identity(meta))
    try:
        with pytest.raises(ValueError, match="test-dup"):
            registry.register(meta, lambda: _Identity(meta))
        with pytest.raises(ValueError, match="nlm"):
            registry.register(_dummy_info("nlm"))(lambda: _Identity(meta))
    finally:
        registry.unregister("test-dup")
    assert "test-dup" not in registry.names()


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as err:
        registry.info("no-such-model")
    assert "no-such-model" in str(err.value) and "nlm" in str(err.value)


def test_info_validation() -> None:
    with pytest.raises(ValueError, match="task"):
        EnhancerInfo(
            name="x",
            version="1",
            task="colorize",
            modalities=("CT",),
            kind="classical",
            weights_sha256="",
            params=0,
        )
    with pytest.raises(ValueError, match="modalities"):
        EnhancerInfo(
            name="x",
            version="1",
            task="denoise",
            modalities=("US",),
            kind="classical",
            weights_sha256="",
            params=0,
        )
    with pytest.raises(ValueError, match="sha256"):
        EnhancerInfo(
            name="x",
            version="1",
            task="denoise",
            modalities=("CT",),
            kind="model",
            weights_sha256="",
            params=10,
        )


@pytest.mark.parametrize(
    ("modality", "group"),
    [
        ("CT", "CT"),
        ("MR", "MR"),
        ("CR", "XR"),
        ("DX", "XR"),
        ("MG", "XR"),
        ("RG", "XR"),
        ("XA", "XR"),
        ("US", None),
        ("", None),
        ("ct", "CT"),
    ],
)
def test_modality_groups(modality: str, group: str | None) -> None:
    assert registry.modality_group(modality) == group


def test_default_enhancer_is_registered_safe_and_task_correct() -> None:
    for modality in ("CT", "MR", "CR", "DX", "MG", "XA", "US", "OT"):
        for task in ("denoise", "sr2x"):
            for quality in (False, True):
                name = registry.default_enhancer(modality, task, quality=quality)
                meta = registry.info(name)
                assert meta.task == task
                assert not meta.hallucination_risk
                group = registry.modality_group(modality)
                assert meta.kind == "classical" or group in meta.modalities
    assert registry.default_enhancer("US") == "nlm"
    assert registry.default_enhancer("US", "sr2x") == "bicubic"
    with pytest.raises(ValueError):
        registry.default_enhancer("CT", "colorize")


def test_retrained_weights_get_a_new_version_and_so_new_derived_uids() -> None:
    """Same name and manifest version, other weights: the derived UIDs must differ (a PACS keeps the first)."""
    from dicom_utils.derive import derived_series_uid
    from enhancers.models import info_from_entry
    from enhancers.store import read_manifest

    entry = dict(read_manifest()["ncdn-mr"])
    shipped = info_from_entry("ncdn-mr", entry)
    assert shipped.version == f"{entry['version']}+{entry['sha256'][:8]}"
    retrained = info_from_entry("ncdn-mr", entry | {"sha256": "0" * 64})
    series = "1.2.840.10008.1.2.3"
    assert derived_series_uid(series, "ncdn-mr", shipped.version) != derived_series_uid(
        series, "ncdn-mr", retrained.version
    )
