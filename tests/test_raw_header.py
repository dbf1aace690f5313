"""The raw header walk (raw_header.py) must give exactly what pydicom's header read gives, or
decline so that pydicom reads the file: checked on every real-world file pydicom and
pydicom-data ship, on generated files, and on the cases it must decline."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from example_app.demo import make_dataset, write_session
from flask_dicom_inbox import dicom
from flask_dicom_inbox.dicom import DicomHeader, NotImportable, read_header

LIMIT = 64 * 2**20


def _real_world_files() -> list[Path]:
    return sorted(Path(p) for p in get_testdata_files("**/*") if Path(p).is_file())


def _outcome(path: Path) -> DicomHeader | str:
    try:
        return read_header(path, max_inflated_bytes=LIMIT)
    except NotImportable as exc:
        return f"refused: {exc}"


class _Spy:
    """Counts the headers the walk served (it is the real function, called through)."""

    def __init__(self, real: Callable[..., DicomHeader | None]) -> None:
        self.real = real
        self.served: list[DicomHeader] = []

    def __call__(self, *args: Any) -> DicomHeader | None:
        header = self.real(*args)
        if header is not None:
            self.served.append(header)
        return header


def test_walk_and_pydicom_agree_on_every_real_world_file(monkeypatch: pytest.MonkeyPatch) -> None:
    files = _real_world_files()
    assert len(files) > 200, "pydicom-data is installed"
    spy = _Spy(dicom._walked_header)
    monkeypatch.setattr(dicom, "_walked_header", spy)
    walked = {path.name: _outcome(path) for path in files}
    monkeypatch.setattr(dicom, "_walked_header", lambda *args: None)
    read_by_pydicom = {path.name: _outcome(path) for path in files}
    differing = [name for name in walked if walked[name] != read_by_pydicom[name]]
    assert differing == []
    # The walk really ran: most vendor files are plain little-endian ones it serves.
    assert len(spy.served) > len(files) // 2


def test_generated_session_is_served_by_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_session(tmp_path, series=2, files_per_series=3, patient_name="Doe^Jane")
    spy = _Spy(dicom._walked_header)
    monkeypatch.setattr(dicom, "_walked_header", spy)
    headers = [read_header(p, max_inflated_bytes=LIMIT) for p in sorted(tmp_path.rglob("*.dcm"))]
    assert len(spy.served) == len(headers) == 6
    assert {h.patient_name for h in headers} == {"Doe^Jane"}


def _write(tmp_path: Path, name: str, **changes: Any) -> Path:
    ds = make_dataset(
        study_uid="1.2.3.1", series_uid="1.2.3.2", sop_uid="1.2.3.3", series_number=4,
        instance_number=5, rows=8, columns=8,
    )  # fmt: skip
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _served_and_agreed(path: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    spy = _Spy(dicom._walked_header)
    with monkeypatch.context() as patch:
        patch.setattr(dicom, "_walked_header", spy)
        walked = _outcome(path)
    with monkeypatch.context() as patch:
        patch.setattr(dicom, "_walked_header", lambda *args: None)
        assert _outcome(path) == walked
    return bool(spy.served)


def test_nested_sequences_of_undefined_length_are_walked_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = Dataset()
    inner.CodeValue = "X"
    item = Dataset()
    item.ConceptNameCodeSequence = Sequence([inner])
    item["ConceptNameCodeSequence"].is_undefined_length = True
    path = _write(tmp_path, "seq.dcm", ContentSequence=Sequence([item, item]))
    ds_path = path.read_bytes()
    assert b"\xfe\xff\xdd\xe0" in ds_path, "written with undefined lengths"
    assert _served_and_agreed(path, monkeypatch)
    assert read_header(path, max_inflated_bytes=LIMIT).series_number == "4"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jürgen"}, "charset"),
        ({"PatientID": ["A", "B"]}, "several values"),
        ({"SOPInstanceUID": ""}, "no SOPInstanceUID: pydicom's refusal"),
    ],
)
def test_what_the_walk_declines_pydicom_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], reason: str
) -> None:
    path = _write(tmp_path, "declined.dcm", **changes)
    assert not _served_and_agreed(path, monkeypatch), reason
    if "PatientName" in changes:
        assert read_header(path, max_inflated_bytes=LIMIT).patient_name == "Müller^Jürgen"


def test_an_element_running_past_the_end_is_refused_by_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write(tmp_path, "ok.dcm").read_bytes()
    at = data.index(struct.pack("<HH", 0x0010, 0x0020))  # PatientID, LO: 2-byte length
    lying = data[: at + 6] + struct.pack("<H", 0xFFF0) + data[at + 8 :]
    path = tmp_path / "lying.dcm"
    path.write_bytes(lying)
    assert not _served_and_agreed(path, monkeypatch)
    with pytest.raises(NotImportable, match="truncated: element \\(0010,0020\\) declares 65520"):
        read_header(path, max_inflated_bytes=LIMIT)


def test_a_header_longer_than_the_first_read_is_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "long.dcm", TextValue="x" * 40_000, PatientComments="Subject: S9")
    assert _served_and_agreed(path, monkeypatch)
    assert read_header(path, max_inflated_bytes=LIMIT).subject_hint == "S9"
