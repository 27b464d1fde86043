"""The real peers work: dcmtk storescu/storescp, dcmtk encoders and Orthanc, on loopback.

Why these tests exist: every end-to-end test of the gateway trusts these fixtures. If storescu silently
transcoded, storescp dropped a syntax or Orthanc lost data on restart, gateway tests would pass or fail
for reasons that have nothing to do with the gateway. Each test here is fast (well under a second, except
the graceful Orthanc restart, which Orthanc itself makes take ~4 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.peers import (
    LOOPBACK,
    Orthanc,
    PeerCommandError,
    PeerMissingError,
    StoreSCP,
    recompress,
    require_binary,
    storescu,
    transcoded_files,
)
from tests.realdata import testfile

SeriesFactory = Callable[..., list[Path]]


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def syntax_of(path: Path) -> UID:
    return UID(read_file_meta_info(path).TransferSyntaxUID)


def test_storescu_pushes_ct_series_to_storescp(storescp: StoreSCP, tmp_series: SeriesFactory) -> None:
    sent = tmp_series("693_UNCR.dcm", 3)

    storescu(storescp.port, sent, called_aet=storescp.aet)

    received = storescp.wait_for(3)
    assert len(received) == 3
    assert {sop_uid(p) for p in received} == {sop_uid(p) for p in sent}
    original = pydicom.dcmread(sent[0]).pixel_array
    for path in received:
        assert syntax_of(path) == ExplicitVRLittleEndian
        assert np.array_equal(pydicom.dcmread(path).pixel_array, original)


def test_storescu_pushes_series_to_orthanc(orthanc: Orthanc, tmp_series: SeriesFactory) -> None:
    sent = tmp_series("693_UNCR.dcm", 3)
    first = pydicom.dcmread(sent[0])

    storescu(orthanc.dicom_port, sent, called_aet=orthanc.aet)

    series = orthanc.study_series(str(first.StudyInstanceUID))
    assert len(series) == 1
    assert series[0]["MainDicomTags"]["SeriesInstanceUID"] == first.SeriesInstanceUID
    assert len(series[0]["Instances"]) == 3
    assert orthanc.count_instances() == 3
    stored = orthanc.instance_file(series[0]["Instances"][0])
    assert stored.SOPInstanceUID in {sop_uid(p) for p in sent}
    assert np.array_equal(stored.pixel_array, first.pixel_array)
    assert orthanc.study_series("1.2.3.4.5.6.7.8.9") == []


def test_orthanc_restart_keeps_data_and_ports(orthanc: Orthanc, tmp_series: SeriesFactory) -> None:
    sent = tmp_series("693_UNCR.dcm", 3)
    study_uid = str(pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(orthanc.dicom_port, sent, called_aet=orthanc.aet)
    ports = (orthanc.dicom_port, orthanc.http_port)

    orthanc.stop()
    assert not orthanc.running
    with pytest.raises(PeerCommandError):  # the PACS is really down: a store now fails
        storescu(orthanc.dicom_port, sent[:1], called_aet=orthanc.aet, timeout=30)
    orthanc.start()

    assert (orthanc.dicom_port, orthanc.http_port) == ports
    assert orthanc.count_instances() == 3
    assert len(orthanc.study_series(study_uid)[0]["Instances"]) == 3
    more = tmp_series("MR_small.dcm", 2)
    storescu(orthanc.dicom_port, more, called_aet=orthanc.aet)
    assert orthanc.count_instances() == 5


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, RLELossless, JPEGLSLossless], ids=lambda s: UID(s).name)
def test_recompress_is_lossless_and_keeps_uids(
    syntax: str, tmp_series: SeriesFactory, tmp_path: Path
) -> None:
    sources = tmp_series("693_UNCR.dcm", 2) + tmp_series("MR_small.dcm", 1)
    # distinct names: both series number their files from 0001
    renamed = []
    for i, path in enumerate(sources):
        target = path.with_name(f"in-{i}.dcm")
        path.rename(target)
        renamed.append(target)

    encoded = recompress(renamed, tmp_path / "encoded", syntax)

    assert [p.name for p in encoded] == [p.name for p in renamed]
    for source, target in zip(renamed, encoded, strict=True):
        before, after = pydicom.dcmread(source), pydicom.dcmread(target)
        assert after.file_meta.TransferSyntaxUID == syntax
        assert after.SOPInstanceUID == before.SOPInstanceUID
        assert np.array_equal(after.pixel_array, before.pixel_array)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLosslessSV1, RLELossless, JPEGLSLossless],
                         ids=lambda s: UID(s).name)  # fmt: skip
def test_storescu_sends_compressed_files_unchanged(
    syntax: str, storescp: StoreSCP, tmp_series: SeriesFactory, tmp_path: Path
) -> None:
    if syntax == JPEG2000Lossless:
        sent = tmp_series("693_J2KR.dcm", 3)  # the real J2K encoding, as the source file has it
    else:
        sent = recompress(tmp_series("693_UNCR.dcm", 3), tmp_path / "encoded", syntax)
    assert all(syntax_of(p) == syntax for p in sent)

    run = storescu(storescp.port, sent, called_aet=storescp.aet)

    assert transcoded_files(run.stdout + run.stderr) == []
    by_uid = {sop_uid(p): p for p in storescp.wait_for(3)}
    for path in sent:
        got = pydicom.dcmread(by_uid[sop_uid(path)])
        assert got.file_meta.TransferSyntaxUID == syntax
        assert got.PixelData == pydicom.dcmread(path).PixelData  # the same encoded bytes, not re-encoded


def test_mixed_syntaxes_reach_orthanc_as_sent(
    orthanc: Orthanc, tmp_series: SeriesFactory, tmp_path: Path
) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    plain = tmp_series("693_UNCR.dcm", 2, study_uid=study)
    j2k = tmp_series("693_J2KR.dcm", 2, study_uid=study)
    rle = recompress(tmp_series("MR_small.dcm", 2, study_uid=study), tmp_path / "rle", RLELossless)
    sent = plain + j2k + rle
    expected = {sop_uid(p): syntax_of(p) for p in sent}

    storescu(orthanc.dicom_port, sent, called_aet=orthanc.aet)

    series = orthanc.wait_for_study(study, 6, timeout=10)
    assert len(series) == 3
    for item in series:
        for instance in item["Instances"]:
            uid = orthanc.get(f"/instances/{instance}/simplified-tags")["SOPInstanceUID"]
            assert (
                orthanc.get_bytes(f"/instances/{instance}/metadata/TransferSyntax").decode() == expected[uid]
            )


def test_storescu_refuses_silent_transcoding(storescp: StoreSCP, tmp_path: Path) -> None:
    # An Implicit VR file; with "-x=" storescu proposes Explicit VR first and converts the file on the fly.
    implicit = tmp_path / "implicit.dcm"
    ds = pydicom.dcmread(testfile("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)

    with pytest.raises(PeerCommandError, match="converted files"):
        storescu(storescp.port, [implicit], called_aet=storescp.aet, extra=["-x="])
    storescu(storescp.port, [implicit], called_aet=storescp.aet, extra=["-x="], allow_transcoding=True)
    assert syntax_of(storescp.wait_for(1)[0]) == ExplicitVRLittleEndian

    # The default profile proposes the file's own syntax, so the same file goes as it is.
    run = storescu(storescp.port, [implicit], called_aet=storescp.aet)
    assert "Little Endian Implicit -> Little Endian Implicit" in run.stderr
    assert syntax_of(storescp.wait_for(1)[0]) == ImplicitVRLittleEndian


def test_storescu_reports_a_refusing_peer(tmp_path: Path, tmp_series: SeriesFactory) -> None:
    with StoreSCP(tmp_path / "refusing", aet="REFUSER", extra=["--refuse"]) as scp:
        with pytest.raises(PeerCommandError, match="(?i)reject"):
            storescu(scp.port, tmp_series("MR_small.dcm", 1), called_aet=scp.aet)
        assert scp.received() == []


def test_orthanc_sends_to_a_registered_modality(
    orthanc: Orthanc, storescp: StoreSCP, tmp_series: SeriesFactory
) -> None:
    sent = tmp_series("MR_small.dcm", 2)
    storescu(orthanc.dicom_port, sent, called_aet=orthanc.aet)
    study_uid = str(pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    series_id = orthanc.study_series(study_uid)[0]["ID"]

    orthanc.add_modality("DEST", storescp.aet, LOOPBACK, storescp.port)
    orthanc.send_to_modality("DEST", [series_id])

    assert {sop_uid(p) for p in storescp.wait_for(2)} == {sop_uid(p) for p in sent}


def test_missing_peer_fails_with_the_install_command() -> None:
    with pytest.raises(PeerMissingError, match="apt-get install -y dcmtk orthanc orthanc-dicomweb dicom3tools"):
        require_binary("no-such-dicom-peer")


def test_dcmtk_is_found_even_when_the_venv_with_pynetdicoms_storescp_comes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom installs `storescp`/`storescu` scripts into the venv; an activated venv must not shadow dcmtk."""
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "storescp").exists():
        pytest.skip("this environment has no pynetdicom storescp script to shadow dcmtk's")
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    found = Path(require_binary("storescp"))
    assert found.parent.resolve() != venv_bin.resolve()
    version = subprocess.run([str(found), "--version"], check=False, capture_output=True).stdout
    assert b"dcmtk" in version.lower()
