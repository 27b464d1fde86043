"""The corpus manifest: every source listed, split by patient, files as recorded."""

from __future__ import annotations

import copy

import pytest

from enhancers import corpus


def test_manifest_is_split_by_patient_and_covers_every_split() -> None:
    sources = corpus.read_manifest()
    included = [s for s in sources if s["included"]]
    patients: dict[tuple[str, str], set[str]] = {}
    for s in included:
        patients.setdefault((s["group"], s["patient"]), set()).add(s["split"])
    assert all(len(splits) == 1 for splits in patients.values()), patients
    for group in ("CT", "MR", "XR"):
        have = {s["split"] for s in included if s["group"] == group}
        assert {"train", "test"} <= have, (group, have)
    for group in ("CT", "MR"):
        assert "validation" in {s["split"] for s in included if s["group"] == group}


def test_other_encodings_of_a_test_image_are_not_training_data() -> None:
    sources = corpus.read_manifest()
    test_patients = {s["patient"] for s in sources if s["included"] and s["split"] == "test"}
    for s in sources:
        if not s["included"]:
            assert s["note"]
            if s["patient"] in test_patients:
                assert s["split"] == "test"


def test_manifest_matches_the_curated_definition() -> None:
    built = corpus.build_manifest()
    assert built["sources"] == corpus.read_manifest()


def test_leak_is_detected() -> None:
    sources = copy.deepcopy(corpus.read_manifest())
    first = next(s for s in sources if s["included"] and s["split"] == "test")
    clone = dict(first, id="leak", split="train")
    with pytest.raises(corpus.CorpusError, match="both"):
        corpus.check_split_by_patient([*sources, clone])


def test_load_split_reads_real_pixels_and_checks_hashes() -> None:
    slices = corpus.load_split("validation", ("CT",))
    assert slices and all(s.split == "validation" and s.group == "CT" for s in slices)
    assert slices[0].pixels.min() >= -1024.0  # CT padding is air
    entry = dict(next(s for s in corpus.read_manifest() if s["id"] == "ct-small"))
    entry["sha256"] = "0" * 64
    with pytest.raises(corpus.CorpusError, match="sha256"):
        corpus.load_source(entry)


def test_added_real_sources_load_in_their_units() -> None:
    by_id = {s["id"]: s for s in corpus.read_manifest()}
    cranium = corpus.load_source(by_id["ct-cranium"])
    assert len(cranium) == 36 and cranium[0].pixels.shape == (256, 256)
    assert cranium[0].pixels.min() >= -1024.0 and cranium[0].pixels.max() > 1000.0  # HU: air to bone
    a, b = (corpus.load_source(by_id[k])[0] for k in ("mr-pair-a", "mr-pair-b"))
    assert a.patient == b.patient and a.split == b.split == "test" and a.pixels.shape == b.pixels.shape


def test_templates_and_the_pair_are_never_denoising_truth() -> None:
    train = {s.source for s in corpus.load_split("train", ("MR",), denoise=True)}
    assert train and not any(s.startswith("mr-colin27") for s in train)
    test = {s.source for s in corpus.load_split("test", ("MR",), denoise=True)}
    assert "mr-pair-a" not in test and "mr-shoulder" in test
    assert any(s.startswith("mr-colin27") for s in {x.source for x in corpus.load_split("train", ("MR",))})
