"""Anonymizing rewrites: a header read with the pixel data copied verbatim must give the data
set a full pydicom read and write gives (the very bytes, where pydicom would write back the
source's bytes of the elements no script touched), and every file it cannot be sure of gets the
full read."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from example_app.demo import make_dataset
from flask_dicom_inbox.anon_scripts import DEFAULT_SITE_SCRIPT, ScriptStep, compile_script
from flask_dicom_inbox.dicom import (
    _element_key,
    _expected_pixel_bytes,
    _expected_pixel_bytes_le,
    encode_dataset,
    open_for_rewrite,
    read_full,
    read_header,
    write_element,
)
from flask_dicom_inbox.dicomedit import parse_script
from flask_dicom_inbox.importer import FileStorer, ImportOptions, ProgressReporter

VARIABLES = {"project": "P1", "subject": "S1", "session": "E1"}
SITE = ScriptStep("site", compile_script(DEFAULT_SITE_SCRIPT))
#: A store phase's options for a request of project P1, session E1, into the prearchive.
STORE_OPTIONS = ImportOptions(
    project_id="P1", subject_id=None, expt_label="E1", destination="prearchive",
    overwrite="none", rename=False, cleanup=False, keep_root=False,
    max_inflated_bytes=2**20, progress_every=10,
)  # fmt: skip


def _bundled(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    assert found is not None, f"{name} is not in the installed pydicom test data"
    return Path(found)


def _rewritten(path: Path, *, pixels_needed: bool, out: Path) -> tuple[bool, bytes]:
    with open_for_rewrite(path, pixels_needed=pixels_needed) as rewrite:
        SITE.apply(rewrite.dataset, VARIABLES)
        with open(out, "wb") as fp:
            rewrite.write(fp)
        in_memory = rewrite.to_bytes()
    written = out.read_bytes()
    assert written == in_memory, "write() and to_bytes() agree"
    return rewrite.spliced, written


def _full_rewrite(path: Path) -> bytes:
    ds = read_full(path)
    SITE.apply(ds, VARIABLES)
    return encode_dataset(ds)


@pytest.mark.parametrize(
    ("name", "spliced"),
    [
        ("emri_small.dcm", True),  # explicit VR little endian, native, multi-frame
        ("CT_small.dcm", False),  # trailing padding (FFFC,FFFC) after the pixels: full read
        ("MR_small.dcm", False),  # the same
        ("MR_small_implicit.dcm", True),  # implicit VR little endian
        ("JPEG2000.dcm", True),  # encapsulated: fragments walked to the delimiter
        ("SC_rgb_rle.dcm", True),  # RLE, encapsulated
        ("rtplan.dcm", True),  # no pixel data at all
        ("MR_small_bigendian.dcm", False),  # big endian: full read
        ("image_dfl.dcm", False),  # deflated: full read
    ],
)
def test_header_rewrite_gives_the_bytes_of_a_full_rewrite(
    tmp_path: Path, name: str, spliced: bool
) -> None:
    path = _bundled(name)
    was_spliced, written = _rewritten(path, pixels_needed=False, out=tmp_path / "out.dcm")
    assert was_spliced is spliced
    assert written == _full_rewrite(path)
    full_spliced, full = _rewritten(path, pixels_needed=True, out=tmp_path / "full.dcm")
    assert full_spliced is False and full == written


def _elements(data: bytes) -> tuple[list[tuple[object, str, object]], ...]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return tuple([(elem.tag, elem.VR, elem.value) for elem in part] for part in (ds.file_meta, ds))


def test_every_real_world_file_rewrites_to_the_same_data_set(tmp_path: Path) -> None:
    """All of pydicom's and pydicom-data's importable files: a spliced rewrite holds the same
    elements (tag, VR, value) as a full rewrite; its bytes differ only where it kept the
    source's encoding of an element no script touched (padding, sequence lengths)."""
    spliced = same_bytes = 0
    for found in sorted(get_testdata_files("**/*")):
        path = Path(found)
        if not path.is_file():
            continue
        try:
            read_header(path, max_inflated_bytes=2**26)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                full = _full_rewrite(path)
        except Exception:  # noqa: S112 - not importable, or the full read fails on it too
            continue  # (the importer records such a file's error; test_import_e2e checks it)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            was_spliced, written = _rewritten(path, pixels_needed=False, out=tmp_path / "o.dcm")
            assert _elements(written) == _elements(full), path.name
        spliced += was_spliced
        same_bytes += written == full
    assert spliced > 150 and same_bytes > 150, (spliced, same_bytes)


def _generated(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    ds = make_dataset(
        study_uid="1.2.3.1", series_uid="1.2.3.2", sop_uid="1.2.3.3", series_number=1,
        instance_number=1, rows=16, columns=16,
    )  # fmt: skip
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_file_without_preamble_and_file_meta_is_spliced(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_generated(tmp_path))
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[:4] == b"\x08\x00\x16\x00"  # (0008,0016) first: no preamble
    spliced, written = _rewritten(bare, pixels_needed=False, out=tmp_path / "out.dcm")
    assert spliced
    assert written == _full_rewrite(bare)
    assert written[128:132] == b"DICM"  # stored as a Part 10 file


def test_empty_required_file_meta_is_filled_in_as_a_full_rewrite_does(tmp_path: Path) -> None:
    """pydicom's meta validation fills in an empty version and implementation UID; the
    spliced rewrite must write them filled in, not the source's empty bytes."""
    ds = pydicom.dcmread(_generated(tmp_path))
    ds.file_meta.FileMetaInformationVersion = b""
    ds.file_meta.ImplementationClassUID = ""
    empty = tmp_path / "empty-meta.dcm"
    ds.save_as(empty, enforce_file_format=False)
    written_meta = pydicom.dcmread(empty).file_meta
    assert written_meta.FileMetaInformationVersion in (b"", None)  # the source is as meant
    spliced, written = _rewritten(empty, pixels_needed=False, out=tmp_path / "out.dcm")
    assert spliced
    assert written == _full_rewrite(empty)
    meta = pydicom.dcmread(io.BytesIO(written)).file_meta
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.ImplementationClassUID


def test_elements_after_the_pixel_data_get_the_full_read(tmp_path: Path) -> None:
    """Trailing padding (FFFC,FFFC) or a private group after the pixels: the scripts must see
    them (removeAllPrivateTags), so the file is read whole."""
    path = _generated(tmp_path)
    for tail in (
        struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 4) + b"\x00" * 4,
        struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 4) + b"ACME",
    ):
        padded = tmp_path / "padded.dcm"
        padded.write_bytes(path.read_bytes() + tail)
        spliced, written = _rewritten(padded, pixels_needed=False, out=tmp_path / "out.dcm")
        assert spliced is False
        assert written == _full_rewrite(padded)


def test_truncated_pixel_data_gets_the_full_read_and_its_error(tmp_path: Path) -> None:
    path = _generated(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-100])  # the element still claims the whole length
    with pytest.raises(ValueError, match="truncated"):
        with open_for_rewrite(cut, pixels_needed=False):
            pass
    short = tmp_path / "short.dcm"  # length and bytes agree, but fewer than Rows x Columns
    at = data.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    short.write_bytes(data[: at + 8] + struct.pack("<I", 100) + data[at + 12 : at + 112])
    with pytest.raises(ValueError, match="truncated"):
        with open_for_rewrite(short, pixels_needed=False):
            pass


def test_pixel_length_from_raw_bytes_agrees_with_pydicom_on_every_real_world_file() -> None:
    """The splice's truncation check reads Rows, Columns, BitsAllocated, SamplesPerPixel and
    NumberOfFrames from their raw bytes; it must expect what pydicom's conversion expects."""
    checked = 0
    for found in sorted(get_testdata_files("**/*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(found, stop_before_pixels=True, force=True)
                if not ds.original_encoding[1]:
                    continue  # big endian: never spliced
                raw = _expected_pixel_bytes_le(ds)
                converted = _expected_pixel_bytes(pydicom.dcmread(found, force=True))
        except Exception:  # noqa: S112 - not a file pydicom reads
            continue
        assert raw == converted, found
        checked += raw is not None
    assert checked > 60, checked  # native pixel data: compressed ones expect nothing


@pytest.mark.parametrize(
    ("frames", "samples", "expected"),
    [
        (b"3 ", struct.pack("<H", 3), 3 * 3 * 16 * 16 * 2),
        (b"0 ", struct.pack("<H", 0), 16 * 16 * 2),  # pydicom: 0 counts as 1
        (b"", struct.pack("<H", 1), 16 * 16 * 2),  # empty: one frame
        (b"2\\3", struct.pack("<H", 1), None),  # several values: pydicom's int() fails
        (b"+2", struct.pack("<H", 1), 2 * 16 * 16 * 2),  # not plain digits: converted
        (b"1 ", struct.pack("<HH", 1, 1), None),  # US with two values: no expectation
    ],
)
def test_pixel_length_from_raw_bytes_handles_odd_encodings(
    tmp_path: Path, frames: bytes, samples: bytes, expected: int | None
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_generated(tmp_path), stop_before_pixels=True)
        ds._dict[pydicom.tag.Tag("NumberOfFrames")] = RawDataElement(
            pydicom.tag.Tag("NumberOfFrames"), "IS", len(frames), frames, 0, False, True
        )
        ds._dict[pydicom.tag.Tag("SamplesPerPixel")] = RawDataElement(
            pydicom.tag.Tag("SamplesPerPixel"), "US", len(samples), samples, 0, False, True
        )
        assert _expected_pixel_bytes_le(ds) == expected


def _encoded(elem: object, *, implicit: bool, encodings: object, remembered: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    if remembered:
        write_element(buffer, elem, encodings)  # type: ignore[arg-type]
    else:
        write_data_element(buffer, elem, encodings)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_remembered_encodings_are_pydicoms_for_every_element_of_every_real_world_file() -> None:
    """write_element gives pydicom's bytes, first time (encoded) and second (remembered), for
    every element (sequences included) of every file pydicom reads, in both VR encodings."""
    remembered = 0
    for found in sorted(get_testdata_files("**/*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(found, force=True)
                elements = [ds[tag] for tag in ds.keys() if tag.group > 2]
        except Exception:  # noqa: S112 - not a file pydicom reads
            continue
        encodings = ds.get("SpecificCharacterSet", "iso8859")
        for elem in elements:
            for implicit in (False, True):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        expected = _encoded(
                            elem, implicit=implicit, encodings=encodings, remembered=False
                        )
                    except Exception:  # noqa: S112 - pydicom cannot write it either
                        continue
                    first = _encoded(elem, implicit=implicit, encodings=encodings, remembered=True)
                    again = _encoded(elem, implicit=implicit, encodings=encodings, remembered=True)
                assert first == expected == again, (found, elem.tag, implicit)
                remembered += _element_key(elem, encodings, _buffer(implicit)) is not None
    assert remembered > 5000, remembered


def _buffer(implicit: bool) -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    return buffer


def test_remembered_encodings_tell_values_apart_by_their_text() -> None:
    """Equal values written differently ('1.50' and '1.5'; another character set) are
    remembered apart."""
    tag = pydicom.tag.Tag("SliceThickness")
    written = set()
    for text in ("1.50", "1.5", "1.500"):
        elem = pydicom.dataelem.DataElement(tag, "DS", pydicom.valuerep.DSfloat(text))
        written.add(_encoded(elem, implicit=False, encodings="iso8859", remembered=True))
    assert len(written) == 3

    def name() -> object:  # a fresh one each time: a PersonName keeps the bytes it encoded
        return pydicom.dataelem.DataElement(pydicom.tag.Tag("PatientName"), "PN", "Müller^Jörg")

    latin1 = _encoded(name(), implicit=False, encodings="iso8859", remembered=True)
    utf8 = _encoded(name(), implicit=False, encodings="ISO_IR 192", remembered=True)
    assert b"M\xfcller" in latin1 and "Müller".encode() in utf8


def test_pixel_data_of_a_spliced_rewrite_is_the_source_bytes(tmp_path: Path) -> None:
    path = _generated(tmp_path)
    source = path.read_bytes()
    spliced, written = _rewritten(path, pixels_needed=False, out=tmp_path / "out.dcm")
    assert spliced
    at = source.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    assert written.endswith(source[at:])
    assert b"PatientName" not in written and written != source


@pytest.mark.parametrize(
    ("script", "needs"),
    [
        (DEFAULT_SITE_SCRIPT, False),
        ('version "6.1"\n-(7FE0,0010)\n', True),
        ('version "6.1"\n(0010,0010) := (7FE0,0010)\n', True),
        ('version "6.1"\n-(7FEX,XXXX)\n', True),
        ('version "6.1"\n(0008,1030) = "x" ? -(7FE0,0008) : (0010,0010) := "y"\n', True),
        ('version "6.1"\nretainPrivateTags[(0019,XX10)]\nremoveAllPrivateTags\n', False),
    ],
)
def test_scripts_say_whether_they_need_pixel_data(script: str, needs: bool) -> None:
    assert parse_script(script).needs_pixel_data is needs


class _HostStep:
    """A host's own step: nothing says it leaves the pixels alone."""

    script_id = "host"

    def apply(self, ds: object, variables: object) -> None:
        assert "PixelData" in ds  # type: ignore[operator]


def test_a_step_without_needs_pixel_data_gets_full_reads(tmp_path: Path) -> None:
    options = STORE_OPTIONS
    report = ProgressReporter.__new__(ProgressReporter)
    assert FileStorer(options=options, anonymization=[SITE], report=report).pixels_needed is False
    mixed = FileStorer(options=options, anonymization=[SITE, _HostStep()], report=report)
    assert mixed.pixels_needed is True
    path = _generated(tmp_path)
    with open_for_rewrite(path, pixels_needed=mixed.pixels_needed) as rewrite:
        _HostStep().apply(rewrite.dataset, VARIABLES)
        assert not rewrite.spliced
