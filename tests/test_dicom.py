"""dicom.py: header reads of generated and real-world files, refusals, and the deflate-bomb cap."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian

from example_app.demo import make_dataset, write_session
from flask_dicom_inbox.dicom import DEFLATED, NotImportable, read_header

LIMIT = 64 * 2**20
BOMB_MB = 300
SOP_UID = "1.2.826.0.1.3680043.10.1457.4242"


def _bundled(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    assert found is not None, f"{name} is not in the installed pydicom test data"
    return Path(found)


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _dataset(**changes: object) -> Dataset:
    ds = make_dataset(
        study_uid="1.2.826.0.1.3680043.10.1457.1",
        series_uid="1.2.826.0.1.3680043.10.1457.2",
        sop_uid=SOP_UID,
        series_number=7,
        instance_number=3,
    )
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


# -- files that read ------------------------------------------------------------------------
def test_generated_file_header(tmp_path: Path) -> None:
    generated = write_session(tmp_path, series=1, files_per_series=1, seed=3)
    header = read_header(generated.files[0], max_inflated_bytes=LIMIT)
    assert header.sop_class_uid == CTImageStorage
    assert header.study_instance_uid == generated.study_instance_uid
    assert header.series_number == "1"
    assert header.instance_number == "1"
    assert header.patient_id == "PID0001"
    assert header.patient_name == "Doe^Jane"
    assert header.sop_instance_uid.startswith("1.2.826.0.1.3680043.10.1457.")
    assert header.series_instance_uid.startswith("1.2.826.0.1.3680043.10.1457.")
    assert header.subject_hint == ""
    assert header.session_hint == ""


def test_header_hints_come_from_any_comment_tag(tmp_path: Path) -> None:
    ds = _dataset(
        StudyComments="Session: sess_9",
        AdditionalPatientHistory="Project: p Subject: subj_9",
    )
    header = read_header(_save(ds, tmp_path / "c.dcm"), max_inflated_bytes=LIMIT)
    assert header.sop_instance_uid == SOP_UID
    assert header.series_number == "7"
    assert header.instance_number == "3"
    assert header.session_hint == "sess_9"
    assert header.subject_hint == "subj_9"


def test_generated_file_without_preamble_reads(tmp_path: Path) -> None:
    full = _save(_dataset(), tmp_path / "full.dcm").read_bytes()
    assert full[128:132] == b"DICM"
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(full[132:])  # file meta first, no preamble and no DICM prefix
    assert read_header(bare, max_inflated_bytes=LIMIT).sop_instance_uid == SOP_UID


@pytest.mark.parametrize(
    ("name", "sop_instance_uid"),
    [
        ("MR_small_implicit.dcm", "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"),
        ("MR_small_bigendian.dcm", "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"),
        ("image_dfl.dcm", "1.3.6.1.4.1.5962.1.1.0.0.0.977067309.6001.0"),
        ("JPEG2000.dcm", "1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457"),
        ("MR_small_RLE.dcm", "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"),
        (
            "emri_small.dcm",
            "1.2.826.0.1.3680043.2.1143.6455556726214900995651753669640998622",
        ),
        ("ExplVR_LitEndNoMeta.dcm", "1.2.333.4444.5.6.7.8"),
    ],
)
def test_bundled_real_world_files_read(name: str, sop_instance_uid: str) -> None:
    header = read_header(_bundled(name), max_inflated_bytes=LIMIT)
    assert header.sop_instance_uid == sop_instance_uid
    assert header.sop_class_uid


def test_deflated_file_under_the_limit_reads(tmp_path: Path) -> None:
    path = _deflate_bomb(tmp_path / "small_dfl.dcm", inflated_mb=8)
    assert path.stat().st_size < 64 * 1024
    header = read_header(path, max_inflated_bytes=LIMIT)
    assert header.sop_instance_uid == SOP_UID


# -- refusals -------------------------------------------------------------------------------
def test_dicomdir_is_refused_with_reason() -> None:
    with pytest.raises(NotImportable, match="DICOMDIR"):
        read_header(_bundled("DICOMDIR"), max_inflated_bytes=LIMIT)


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Patient notes: nothing to see here.\nSecond line.\n")
    with pytest.raises(NotImportable, match="not a DICOM file"):
        read_header(path, max_inflated_bytes=LIMIT)


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.touch()
    with pytest.raises(NotImportable, match="empty"):
        read_header(path, max_inflated_bytes=LIMIT)


def test_no_meta_junk_file_is_refused() -> None:
    with pytest.raises(NotImportable):
        read_header(_bundled("no_meta.dcm"), max_inflated_bytes=LIMIT)


@pytest.mark.parametrize("seed", range(8))
def test_garbage_with_dicm_prefix_is_refused(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "garbage.dcm"
    path.write_bytes(rng.randbytes(128) + b"DICM" + rng.randbytes(4096))
    with pytest.raises(NotImportable):
        read_header(path, max_inflated_bytes=LIMIT)


def test_garbage_file_meta_with_bad_element_length_is_refused(tmp_path: Path) -> None:
    # (0002,0000) FileMetaInformationGroupLength, VR UL, with a 3-byte value.
    path = tmp_path / "bad_meta.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + struct.pack("<HH2sH", 2, 0, b"UL", 3) + b"abc\0")
    with pytest.raises(NotImportable):
        read_header(path, max_inflated_bytes=LIMIT)


def test_dataset_lacking_sop_instance_uid_is_refused(tmp_path: Path) -> None:
    ds = _dataset()
    del ds.SOPInstanceUID
    path = _save(ds, tmp_path / "no_sop_instance.dcm")
    with pytest.raises(NotImportable, match="lacks"):
        read_header(path, max_inflated_bytes=LIMIT)


def test_dataset_lacking_sop_class_uid_is_refused(tmp_path: Path) -> None:
    ds = _dataset()
    del ds.SOPClassUID
    path = _save(ds, tmp_path / "no_sop_class.dcm")
    with pytest.raises(NotImportable, match="lacks"):
        read_header(path, max_inflated_bytes=LIMIT)


# -- deflate bomb ---------------------------------------------------------------------------
def _deflate_bomb(path: Path, *, inflated_mb: int, preamble: bool = True) -> Path:
    """A valid Part 10 file, deflated transfer syntax, whose body inflates past ``inflated_mb``.

    The body is a real dataset (SOP class and instance) ending in a PixelData OB element of
    ``inflated_mb`` MiB of zeros, compressed as raw deflate by streaming: 1 MiB at a time.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1457.1"
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    write_dataset(body, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_mb * 2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(2**20)
    with open(path, "wb") as out:
        if preamble:
            out.write(b"\0" * 128 + b"DICM")
        out.write(head.getvalue())
        out.write(compressor.compress(body.getvalue() + pixel_header))
        for _ in range(inflated_mb):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())
    return path


_BOMB_CHECK = """
import json, resource, sys
from pathlib import Path
from flask_dicom_inbox.dicom import NotImportable, read_header

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_header(Path(sys.argv[1]), max_inflated_bytes=int(sys.argv[2]))
    outcome = {"refused": False, "reason": ""}
except NotImportable as exc:
    outcome = {"refused": True, "reason": str(exc)}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome["growth_kib"] = after - before
print(json.dumps(outcome))
"""


@pytest.mark.slow
@pytest.mark.parametrize("preamble", [True, False], ids=["preamble", "no-preamble"])
def test_deflate_bomb_is_refused_without_inflating(tmp_path: Path, preamble: bool) -> None:
    bomb = _deflate_bomb(tmp_path / "bomb.dcm", inflated_mb=BOMB_MB, preamble=preamble)
    assert bomb.stat().st_size < 1024 * 1024  # a few hundred KiB that inflate to 300 MiB
    with open(bomb, "rb") as fp:
        assert DEFLATED.encode() in fp.read(512)
    # ru_maxrss is a high-water mark: measure in a fresh process.
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_CHECK, str(bomb), str(LIMIT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["refused"] is True
    assert str(LIMIT) in outcome["reason"]
    assert "limit" in outcome["reason"]
    assert outcome["growth_kib"] < 150 * 1024
