"""Anonymizing by splicing (no pydicom read of the header): for every file it takes, the
result must be what the pydicom rewrite gives (the very bytes, where that rewrite would keep
the source's bytes), with the same new header; every file it is not sure of, and every script
that reaches beyond the elements it names, must be left to the pydicom rewrite."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ImplicitVRLittleEndian

from flask_dicom_inbox.anon_scripts import DEFAULT_SITE_SCRIPT, ScriptStep, compile_script
from flask_dicom_inbox.dicom import header_of, open_for_rewrite, read_header
from flask_dicom_inbox.dicomedit import deidentification_item, parse_script
from flask_dicom_inbox.importer import FileStorer, ProgressReporter
from flask_dicom_inbox.splice_edit import SplicePlan, open_spliced_edit

from .test_rewrite import STORE_OPTIONS, VARIABLES, _bundled, _generated

#: Every kind of statement a splice may run: conditions on variables, variables assigned,
#: functions, set-if-present, a multi-valued value, numbers and UIDs as text.
BROAD_SCRIPT = r"""version "6.1"
site := "SITE"
project ~ "P.*" ? (0008,103E) := concatenate[site, "-", subject] : (0008,103E) := "other"
(0010,0030) := ""
(0020,0011) := "77"
(0008,0080) := uppercase[project]
(0010,1010) := "042Y"
(0020,0010) := session
(0008,0050) := replace[session, "1", "X"]
(0018,0015) ?= lowercase[site]
(0010,21B0) := "multi\value"
(0020,0052) := "1.2.3.4.5"
"""

#: Deletions of elements of many VRs (header elements among them), a deletion undone by a
#: set and a set undone by a deletion, one deletion only under a condition.
DELETE_SCRIPT = r"""version "6.1"
-(0010,0030)
-(0008,0090)
-(0008,1010)
-(0008,0020)
-(0010,0040)
-(0020,0013)
-(0028,0030)
-(0018,0050)
-(0008,0050)
(0010,1010) := "042Y"
-(0010,1010)
-(0008,103E)
(0008,103E) := "series"
subject = "S1" ? -(0008,0080) : (0008,0080) := "kept"
"""
DELETED_TAGS = (0x00100030, 0x00080090, 0x00081010, 0x00080020, 0x00100040, 0x00200013,
                0x00280030, 0x00180050, 0x00080050, 0x00101010, 0x00080080)  # fmt: skip

#: Wildcard deletions as de-identification scripts write them: overlays and curves, vendors'
#: private groups (their creators included), and the acquisition and content dates and
#: times; one deletion named exactly beside them.
WILDCARD_SCRIPT = r"""version "6.1"
-(60XX,3000)
-(50XX,XXXX)
-(0009,XXXX)
-(0019,XXXX)
-(0029,XXXX)
-(0043,XXXX)
-(0008,002X)
-(0008,003X)
-(0010,0030)
"""
WILDCARDS = [(0xFF00FFFF, 0x60003000), (0xFF000000, 0x50000000), (0xFFFF0000, 0x00090000),
             (0xFFFF0000, 0x00190000), (0xFFFF0000, 0x00290000), (0xFFFF0000, 0x00430000),
             (0xFFFFFFF0, 0x00080020), (0xFFFFFFF0, 0x00080030)]  # fmt: skip


def _wildcard_matches(tags: set[int]) -> set[int]:
    return {tag for tag in tags for mask, value in WILDCARDS if tag & mask == value}


def _step(script: str, script_id: str = "site") -> ScriptStep:
    return ScriptStep(script_id, compile_script(script))


def _default_and(project: str | None) -> list[ScriptStep]:
    """XNAT's default site script, then ``project`` as the project's script if given."""
    return [_step(DEFAULT_SITE_SCRIPT)] + ([_step(project, "project")] if project else [])


def _both(path: Path, steps: list[ScriptStep]) -> tuple[tuple[bytes, object] | None, tuple]:
    """(the splice's bytes and header, or None when it declines; the pydicom rewrite's)."""
    plan = SplicePlan.of(steps)
    assert plan is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_for_rewrite(path, pixels_needed=False) as rewrite:
            for step in steps:
                step.apply(rewrite.dataset, VARIABLES)
            full = (rewrite.to_bytes(), header_of(rewrite.dataset))
        with open_spliced_edit(path, plan, VARIABLES) as edit:
            spliced = None if edit is None else (edit.to_bytes(), edit.header)
    return spliced, full


def _elements(data: bytes) -> list[tuple[object, str, object]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        return [(elem.tag, elem.VR, elem.value) for part in (ds.file_meta, ds) for elem in part]


@pytest.mark.parametrize(
    "steps",
    [
        [_step(DEFAULT_SITE_SCRIPT)],
        [_step(DEFAULT_SITE_SCRIPT), _step(BROAD_SCRIPT, "project")],
        [_step(DEFAULT_SITE_SCRIPT), _step(DELETE_SCRIPT, "project")],
        [_step(DEFAULT_SITE_SCRIPT), _step(WILDCARD_SCRIPT, "project")],
    ],
    ids=["default", "default+broad", "default+deletions", "default+wildcards"],
)
def test_every_real_world_file_splices_to_what_the_pydicom_rewrite_gives(
    steps: list[ScriptStep],
) -> None:
    """All of pydicom's and pydicom-data's importable files: the same elements (tag, VR,
    value) and the same header; the same bytes but where the splice kept the source's own
    encoding of an element no script changed (a UN element pydicom writes with its VR)."""
    spliced = same_bytes = deleted = 0
    for found in sorted(get_testdata_files("**/*")):
        path = Path(found)
        try:
            read_header(path, max_inflated_bytes=2**26)
            result, full = _both(path, steps)
        except Exception:  # noqa: S112 - not importable, or the pydicom rewrite fails on it
            continue
        if result is None:
            continue
        spliced += 1
        assert result[1] == full[1], path.name
        if steps[-1].script.source == DELETE_SCRIPT:
            tags = {tag for tag, _vr, _value in _elements(result[0])}
            assert not tags & set(DELETED_TAGS), path.name
            deleted += len(set(DELETED_TAGS) & {t for t, _v, _x in _elements(path.read_bytes())})
        if steps[-1].script.source == WILDCARD_SCRIPT:
            tags = {tag for tag, _vr, _value in _elements(result[0])}
            assert not _wildcard_matches(tags), path.name
            deleted += len(_wildcard_matches({t for t, _v, _x in _elements(path.read_bytes())}))
        if result[0] == full[0]:
            same_bytes += 1
            continue
        with warnings.catch_warnings():  # comparing converts the source's invalid values
            warnings.simplefilter("ignore")
            assert _elements(result[0]) == _elements(full[0]), path.name
    # (A wildcard such as (50XX,XXXX) matches bytes found in many sequences, such as a "P".)
    least = 50 if steps[-1].script.source == WILDCARD_SCRIPT else 100
    assert spliced > least and same_bytes > spliced - 10, (spliced, same_bytes)
    if steps[-1].script.source == DELETE_SCRIPT:
        assert deleted > 500, deleted  # the files held the elements the script deleted
    if steps[-1].script.source == WILDCARD_SCRIPT:
        assert deleted > 500, deleted  # ... and the elements the wildcards matched


def test_the_spliced_file_keeps_the_pixel_data_and_gets_the_new_values(tmp_path: Path) -> None:
    path = _generated(tmp_path)
    result, full = _both(path, [_step(DEFAULT_SITE_SCRIPT)])
    assert result is not None and result[0] == full[0]
    source = path.read_bytes()
    at = source.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    assert result[0].endswith(source[at:])
    ds = pydicom.dcmread(io.BytesIO(result[0]))
    assert (ds.PatientName, ds.PatientID, ds.StudyDescription) == ("S1", "E1", "P1")
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "site"
    assert result[1].patient_name == "S1" and result[1].patient_id == "E1"


@pytest.mark.parametrize(
    ("script", "tags"),
    [
        (DEFAULT_SITE_SCRIPT, {0x00081030, 0x00100010, 0x00100020}),
        ('version "6.1"\nsubject = "S" ? (0010,0010) := "x"\n', {0x00100010}),
        ('version "6.1"\n(0008,0060) = "CT" ? (0010,0010) := "x"\n', None),  # reads a tag
        ('version "6.1"\n(0008,103E) := (0008,0060)\n', None),  # (its search converts all)
        ('version "6.1"\n(0020,000D) := hashUID["1.2.3"]\n', None),  # even from text
        ('version "6.1"\n-(0008,0050)\n', {0x00080050}),  # (the file's bytes must show it
        ('version "6.1"\n-(0028,0010)\n', {0x00280010}),  # in no sequence) of any VR
        (
            'version "6.1"\nsubject = "S" ? -(0010,0030) : (0010,0010) := "x"\n',
            {0x00100030, 0x00100010},
        ),
        ('version "6.1"\n-(0008,1110)/(0008,1155)\n', None),  # inside a sequence
        ('version "6.1"\n-(0019,1010)\n', None),  # private
        ('version "6.1"\n-(0008,0005)\n', None),  # the character set
        ('version "6.1"\n-(0008,0018)\n', None),  # the file meta follows it
        ('version "6.1"\n-(0002,0013)\n', None),  # the file meta
        ('version "6.1"\nremoveAllPrivateTags\n', None),
        ('version "6.1"\n(0020,000D) := hashUID[(0020,000D)]\n', None),  # replaced everywhere
        ('version "6.1"\n(0008,1110)/(0008,1155) := "1.2"\n', None),  # inside a sequence
        ('version "6.1"\n-(0010,XXXX)\n', set()),  # a wildcard: the file says which tags
        ('version "6.1"\nsubject = "S" ? -(60XX,3000)\n', None),  # a wildcard, if
        ('version "6.1"\n-(XXXX,0010)\n', None),  # a wildcard that may reach the file meta
        ('version "6.1"\n(0010,0010) := (0019,1010)\n', None),  # private
        ('version "6.1"\n(0008,0018) := "1.2.3"\n', None),  # the file meta follows it
        ('version "6.1"\n(0008,0005) := "ISO_IR 192"\n', None),  # the character set
        ('version "6.1"\n(0028,0010) := "16"\n', None),  # US: not text
        ('version "6.1"\n(0028,0106) := "0"\n', None),  # US or SS: decided by another element
        ('version "6.1"\n(0008,1140) := "x"\n', None),  # a sequence
    ],
)
def test_scripts_say_which_top_level_elements_they_work_on(
    script: str, tags: set[int] | None
) -> None:
    assert parse_script(script).top_level_tags == (None if tags is None else frozenset(tags))


class _HostStep:
    script_id = "host"
    needs_pixel_data = False

    def apply(self, ds: object, variables: object) -> None:
        return None


def test_a_plan_is_made_only_of_scripts_that_work_on_named_elements() -> None:
    assert SplicePlan.of([_step(DEFAULT_SITE_SCRIPT), _HostStep()]) is None
    assert (
        SplicePlan.of([_step(DEFAULT_SITE_SCRIPT), _step('version "6.1"\nremoveAllPrivateTags\n')])
        is None
    )
    plan = SplicePlan.of([_step(DEFAULT_SITE_SCRIPT)])
    assert plan is not None
    assert {0x00120062, 0x00120064, 0x00080005} <= plan.tags  # the record, the character set
    assert not plan.deleted
    assert plan == SplicePlan.of([_step(DEFAULT_SITE_SCRIPT)])  # each chunk makes its own
    # A tag deleted by one script and set by another is not "only deleted": its value counts.
    deleting = _step('version "6.1"\n-(0010,0030)\n-(0010,0010)\n', "project")
    plan = SplicePlan.of([_step(DEFAULT_SITE_SCRIPT), deleting])
    assert plan is not None
    assert plan.deleted == {0x00100030, 0x00100010} <= plan.tags
    assert plan.only_deleted == {0x00100030}


def _saved(tmp_path: Path, name: str, **save: object) -> Path:
    ds = pydicom.dcmread(_generated(tmp_path))
    edit = save.pop("edit", None)
    if callable(edit):
        edit(ds)
    path = tmp_path / name
    ds.save_as(path, **save)  # type: ignore[arg-type]
    return path


def _deidentified(ds: pydicom.Dataset) -> None:
    ds.DeidentificationMethodCodeSequence = Sequence([deidentification_item("earlier")])


def _other_media_uid(ds: pydicom.Dataset) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"


def _no_version_name(ds: pydicom.Dataset) -> None:
    del ds.file_meta.ImplementationVersionName


@pytest.mark.parametrize(
    ("name", "save"),
    [
        ("deidentified", {"edit": _deidentified}),  # the record must be appended to
        ("media-uid", {"edit": _other_media_uid, "enforce_file_format": False}),
        ("no-version-name", {"edit": _no_version_name, "enforce_file_format": False}),
    ],
)
def test_files_the_pydicom_rewrite_would_change_more_are_left_to_it(
    tmp_path: Path, name: str, save: dict[str, object]
) -> None:
    path = _saved(tmp_path, f"{name}.dcm", **save)
    result, _full = _both(path, [_step(DEFAULT_SITE_SCRIPT)])
    assert result is None


@pytest.mark.parametrize(
    ("name", "spliced"),
    [
        ("emri_small.dcm", True),  # explicit VR little endian, native, multi-frame
        ("MR_small_implicit.dcm", True),  # implicit VR little endian
        ("JPEG2000.dcm", True),  # encapsulated: fragments walked to the delimiter
        ("rtplan.dcm", False),  # no (0002,0013): pydicom's write adds its own
        ("CT_small.dcm", False),  # trailing padding (FFFC,FFFC) after the pixels
        ("MR_small_bigendian.dcm", False),  # big endian
        ("image_dfl.dcm", False),  # deflated
    ],
)
def test_real_world_files_are_spliced_where_they_can_be(name: str, spliced: bool) -> None:
    result, full = _both(_bundled(name), [_step(DEFAULT_SITE_SCRIPT)])
    assert (result is not None) is spliced
    if result is not None:
        assert result == full


def test_files_with_bytes_the_splice_is_not_sure_of_are_declined(tmp_path: Path) -> None:
    """Without a preamble, with a wrong group length, elements out of order, elements after
    the pixel data, truncated pixel data: each declined."""
    source = _generated(tmp_path).read_bytes()
    at = source.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    (group_length,) = struct.unpack_from("<I", source, 140)
    padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 4) + bytes(4)
    variants = {
        "no-preamble": source[128:],
        "group-length": source[:140] + struct.pack("<I", group_length + 1) + source[144:],
        "padding-after-pixels": source + padding,
        "truncated": source[:-100],
        "short-pixels": source[: at + 8] + struct.pack("<I", 100) + source[at + 12 : at + 112],
    }  # fmt: skip
    plan = SplicePlan.of([_step(DEFAULT_SITE_SCRIPT)])
    assert plan is not None
    for name, data in variants.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        with open_spliced_edit(path, plan, VARIABLES) as edit:
            assert edit is None, name
    swapped = _swap_first_two_elements(source)
    path = tmp_path / "out-of-order.dcm"
    path.write_bytes(swapped)
    with open_spliced_edit(path, plan, VARIABLES) as edit:
        assert edit is None


def _swap_first_two_elements(data: bytes) -> bytes:
    """The data set's first two (explicit VR, short) elements in the wrong order."""
    (meta_length,) = struct.unpack_from("<I", data, 140)
    start = 144 + meta_length
    first_end = start + 8 + struct.unpack_from("<H", data, start + 6)[0]
    second_end = first_end + 8 + struct.unpack_from("<H", data, first_end + 6)[0]
    return data[:start] + data[first_end:second_end] + data[start:first_end] + data[second_end:]


def test_each_file_gets_its_own_values_though_the_scripts_results_are_remembered(
    tmp_path: Path,
) -> None:
    """The scripts run once per distinct set of values; a file whose values differ must not
    get another file's result."""
    step = _step('version "6.1"\n(0010,0010) ?= concatenate[subject, "/", session]\n')
    plan = SplicePlan.of([step])
    assert plan is not None
    outcomes = []
    for name, variables in (("ANNA", VARIABLES), ("BERT", {**VARIABLES, "subject": "S2"})):
        for present in (True, False):
            path = _saved(tmp_path, f"{name}.dcm", edit=_patient_name(name if present else None))
            with open_spliced_edit(path, plan, variables) as edit:
                assert edit is not None
                written = pydicom.dcmread(io.BytesIO(edit.to_bytes()))
                outcomes.append(str(written.get("PatientName", "-")))
    assert outcomes == ["S1/E1", "-", "S2/E1", "-"]


def _patient_name(name: str | None) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        if name is None:
            del ds.PatientName
        else:
            ds.PatientName = name

    return edit


def test_a_value_the_element_refuses_fails_as_in_the_pydicom_rewrite(tmp_path: Path) -> None:
    step = _step('version "6.1"\n(0020,0011) := "not a number"\n')
    path = _generated(tmp_path)
    plan = SplicePlan.of([step])
    assert plan is not None
    with warnings.catch_warnings():  # as the importer runs scripts: pydicom's warnings off
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="not a number"):
            with open_for_rewrite(path, pixels_needed=False) as rewrite:
                step.apply(rewrite.dataset, VARIABLES)
        with pytest.raises(ValueError, match="not a number"):
            with open_spliced_edit(path, plan, VARIABLES):
                pass


@pytest.mark.parametrize("project", [None, DELETE_SCRIPT], ids=["default", "deletions"])
def test_the_store_phase_writes_spliced_files_as_the_pydicom_rewrite_would(
    tmp_path: Path, project: str | None
) -> None:
    """The importer's own path: a chunk stored with the default script (and a project
    script that deletes) equals the same chunk stored through the pydicom rewrite (a host
    step in the plan forces it)."""
    options = STORE_OPTIONS
    report = ProgressReporter.__new__(ProgressReporter)
    report.add = lambda **_: None  # type: ignore[method-assign]
    report.flush = lambda: None  # type: ignore[method-assign]
    source = _generated(tmp_path)
    stored = {}
    scripts = _default_and(project)
    for how, steps in (("spliced", scripts), ("full", [*scripts, _HostStep()])):
        storer = FileStorer(options=options, anonymization=steps, report=report)
        assert (storer.splice_plan is not None) is (how == "spliced")
        folder = tmp_path / how
        folder.mkdir()
        stat = source.stat()
        item = {
            "src": str(source), "size": stat.st_size, "mtime": stat.st_mtime_ns, "ino": stat.st_ino,
            "dir": str(folder), "name": None, "label": "E1", "subject": "S1", "study": "1.2.3.1",
        }  # fmt: skip
        [result] = storer([item], heartbeat=lambda: None)
        assert result["how"] == "write", result
        stored[how] = (folder / result["name"]).read_bytes()
    assert stored["spliced"] == stored["full"]
    birth_date = struct.pack("<HH", 0x0010, 0x0030) + b"DA"
    assert birth_date in source.read_bytes()
    assert (birth_date in stored["spliced"]) is (project is None)


def _item_bytes() -> bytes:
    """One sequence item (implicit VR, as a UN element holds it) with a CodeValue."""
    item = pydicom.Dataset()
    item.CodeValue = "X"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, item)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(buffer.getvalue())) + buffer.getvalue()


def _raw(tag: int, vr: str | None, value: bytes) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.add_new(0x00190010, "LO", "ACME")
        ds._dict[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)

    return edit


def test_files_a_scripts_run_would_convert_beyond_its_elements_are_left_to_pydicom(
    tmp_path: Path,
) -> None:
    """Before a script runs, the pydicom path parses private UN elements that hold items as
    sequences and converts every element that starts with an item (which can fail): the
    splice, which copies such elements as they are, must leave those files to it."""
    un_sequence = _saved(tmp_path, "un.dcm", edit=_raw(0x00191010, "UN", _item_bytes()))
    result, full = _both(un_sequence, [_step(DEFAULT_SITE_SCRIPT)])
    assert result is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom.dcmread(io.BytesIO(full[0]))[0x00191010].VR == "SQ"
    implicit = tmp_path / "implicit-un.dcm"
    ds = pydicom.dcmread(un_sequence)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)
    assert _both(implicit, [_step(DEFAULT_SITE_SCRIPT)])[0] is None
    item_start = _saved(tmp_path, "item.dcm", edit=_raw(0x00209228, "UL", _item_bytes()[:8]))
    plan = SplicePlan.of([_step(DEFAULT_SITE_SCRIPT)])
    assert plan is not None
    with open_spliced_edit(item_start, plan, VARIABLES) as edit:
        assert edit is None


def test_sequences_of_a_known_sequence_element_are_spliced_in_an_implicit_vr_file(
    tmp_path: Path,
) -> None:
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    reference.ReferencedSOPInstanceUID = "1.2.3.9"

    def referencing(ds: pydicom.Dataset) -> None:
        ds.ReferencedImageSequence = Sequence([reference])
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    path = _saved(tmp_path, "referencing.dcm", edit=referencing)
    result, full = _both(path, [_step(DEFAULT_SITE_SCRIPT)])
    assert result is not None and result == full


def test_a_file_without_pixel_data_ending_in_a_short_element_is_spliced(tmp_path: Path) -> None:
    """The last element (US, 2 bytes) ends the file: no 4-byte length may be read past it."""

    def up_to_pixel_representation(ds: pydicom.Dataset) -> None:
        for tag in [tag for tag in ds.keys() if tag > 0x00280103]:
            del ds[tag]

    path = _saved(tmp_path, "no-pixels.dcm", edit=up_to_pixel_representation)
    assert path.read_bytes()[-10:-6] == b"\x28\x00\x03\x01"  # (0028,0103) US, last
    result, full = _both(path, [_step(DEFAULT_SITE_SCRIPT)])
    assert result is not None and result == full


def test_a_value_pydicom_cannot_encode_in_the_files_character_set_is_left_to_it(
    tmp_path: Path,
) -> None:
    """pydicom writes '?' for a character the file's character set lacks; the header must
    then be the value's, as the pydicom path reads it, not the written bytes'."""
    result, full = _both(_generated(tmp_path), [_step('version "6.1"\n(0010,0010) := "Łukasz"\n')])
    assert result is None
    assert full[1].patient_name == "Łukasz"


def test_file_meta_pydicom_would_fill_in_or_that_outruns_the_first_read_is_declined(
    tmp_path: Path,
) -> None:
    plan = SplicePlan.of([_step(DEFAULT_SITE_SCRIPT)])
    assert plan is not None
    data = bytearray(_generated(tmp_path).read_bytes())
    at = data.index(b"\x02\x00\x12\x00UI")  # ImplementationClassUID: whitespace is empty
    (length,) = struct.unpack_from("<H", data, at + 6)
    data[at + 8 : at + 8 + length] = b"\t" * (length - 1) + b"\x00"
    blank = tmp_path / "blank-implementation.dcm"
    blank.write_bytes(bytes(data))
    ds = pydicom.dcmread(_generated(tmp_path))
    ds.file_meta.SourcePresentationAddress = "x"  # a long VR (UR): a 12-byte element header
    ds.file_meta.SendingPresentationAddress = "y"
    long_meta = tmp_path / "long-meta.dcm"
    ds.save_as(long_meta, enforce_file_format=True)
    at = long_meta.read_bytes().index(b"\x02\x00\x27\x00UR")  # moved to straddle 16 KiB
    ds.file_meta.SourcePresentationAddress = "x" * (16376 - at + 1)
    ds.save_as(long_meta, enforce_file_format=True)
    assert long_meta.read_bytes().index(b"\x02\x00\x27\x00UR") == 16376
    for path in (blank, long_meta):
        with open_spliced_edit(path, plan, VARIABLES) as edit:
            assert edit is None, path.name


def _birth_dates(
    top: str | None, nested: str | None, syntax: object = None
) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        if top is not None:
            ds.PatientBirthDate = top
        if nested is not None:
            other = pydicom.Dataset()
            other.PatientID = "OTHER-1"
            other.PatientBirthDate = nested
            ds.OtherPatientIDsSequence = Sequence([other])
        else:
            ds.ReferencedImageSequence = Sequence([pydicom.Dataset()])
            ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.9"
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax

    return edit


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_a_deleted_tag_inside_a_sequence_leaves_the_file_to_pydicom(
    tmp_path: Path, syntax: object
) -> None:
    """A deletion reaches into sequences; the splice only sees the top level, so a file whose
    sequences hold the deleted tag's bytes must take the pydicom rewrite, which deletes it
    there too. Where the tag is only at the top level (or nowhere), the splice deletes it."""
    steps = [_step(DEFAULT_SITE_SCRIPT), _step('version "6.1"\n-(0010,0030)\n', "project")]
    nested = _saved(tmp_path, "nested.dcm", edit=_birth_dates("19610817", "19610818", syntax))
    result, full = _both(nested, steps)
    assert result is None
    assert b"19610817" not in full[0] and b"19610818" not in full[0]
    assert b"OTHER-1" in full[0]  # the rest of the item stays
    for name, top in [("top.dcm", "19610817"), ("none.dcm", None)]:
        path = _saved(tmp_path, name, edit=_birth_dates(top, None, syntax))
        result, full = _both(path, steps)
        assert result is not None and result == full, name
        assert b"19610817" not in result[0]
        source = path.read_bytes()
        assert b"1.2.3.9" in result[0]  # the sequence is kept as it was
        if top is not None:  # the element's bytes, and only those, are gone
            at = source.index(struct.pack("<HH", 0x0010, 0x0030))
            assert source[at : at + 16] not in result[0]


def test_scripts_say_which_wildcards_they_delete_at_the_top_level() -> None:
    """A wildcard deletion outside conditions is spliced as ``(mask, value)``; the plan is
    refused when a wildcard may match an element it works on or reads (here the default
    script's patient name, and the header's series number)."""
    script = parse_script('version "6.1"\n-(60XX,3000)\n-(0019,XXXX)\n-(0010,0030)\n')
    assert [str(path) for path in script.top_level_wildcards] == ["(60XX,3000)", "(0019,XXXX)"]
    assert script.top_level_deletions == frozenset({0x00100030})
    plan = SplicePlan.of(_default_and(script.source))
    assert plan is not None
    assert plan.wildcards == ((0xFF00FFFF, 0x60003000), (0xFFFF0000, 0x00190000))
    assert SplicePlan.of(_default_and('version "6.1"\n-(0010,XXXX)\n')) is None
    assert SplicePlan.of(_default_and('version "6.1"\n-(0020,001X)\n')) is None


def _overlay_and_private(
    nested: bool, syntax: object = None, private_sequence: bool = True
) -> Callable[[pydicom.Dataset], None]:
    """An overlay, a private block holding a sequence with an overlay of its own (or the
    overlay's bytes in an OB), and a public sequence whose item holds an overlay only when
    ``nested``."""

    def edit(ds: pydicom.Dataset) -> None:
        ds.add_new(0x60000010, "US", 4)
        ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)
        inner = pydicom.Dataset()
        inner.add_new(0x60003000, "OW", b"\x03\x04" * 8)
        block = ds.private_block(0x0019, "ACME 1.0", create=True)
        if private_sequence:
            block.add_new(0x10, "SQ", Sequence([inner]))
        else:
            block.add_new(0x10, "OB", b"\x03\x04" * 8)
        block.add_new(0x11, "LO", "kept only by pydicom")
        item = pydicom.Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.9"
        if nested:
            item.add_new(0x60023000, "OW", b"\x05\x06" * 8)
        ds.ReferencedImageSequence = Sequence([item])
        ds.StudyDescription = "holds \x00\x60\x00\x30 in its text"  # (60XX,3000)'s bytes
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax

    return edit


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_wildcard_deletions_are_spliced_unless_they_may_reach_into_a_sequence(
    tmp_path: Path, syntax: object
) -> None:
    """The splice leaves out every top-level element a wildcard matches, a private sequence
    included whole, and gives what the pydicom rewrite gives; a match in a text value does
    not matter (nothing reads elements from it), but one inside a sequence the wildcards do
    not delete sends the file to the pydicom rewrite, which deletes it there too. In an
    implicit VR file pydicom reads the private sequence as UN and parses it before any
    script runs (which can fail the file), so that file too is left to the pydicom rewrite."""
    steps = _default_and('version "6.1"\n-(60XX,3000)\n-(0019,XXXX)\n')
    implicit = syntax is not None
    if implicit:
        private = _saved(tmp_path, "private.dcm", edit=_overlay_and_private(False, syntax))
        result, full = _both(private, steps)
        assert result is None
        assert b"\x03\x04" * 8 not in full[0] and b"\x01\x02" * 8 not in full[0]
    edit = _overlay_and_private(False, syntax, private_sequence=not implicit)
    flat = _saved(tmp_path, "flat.dcm", edit=edit)
    result, full = _both(flat, steps)
    assert result is not None and result == full
    tags = {tag for tag, _vr, _value in _elements(result[0])}
    assert 0x60003000 not in tags and 0x60000010 in tags
    assert not {tag for tag in tags if tag >> 16 == 0x0019}
    assert b"\x03\x04" * 8 not in result[0] and b"\x01\x02" * 8 not in result[0]
    assert b"kept only by pydicom" not in result[0]
    assert b"1.2.3.9" in result[0]
    nested = _saved(tmp_path, "nested.dcm", edit=_overlay_and_private(True, syntax))
    result, full = _both(nested, steps)
    assert result is None
    assert b"\x05\x06" * 8 not in full[0] and b"1.2.3.9" in full[0]


def test_a_deleted_tag_in_a_value_that_holds_no_elements_is_spliced(tmp_path: Path) -> None:
    """A deleted tag's bytes in a text or binary value: pydicom's deletion never reads
    elements from such a value, so the file is spliced as before; inside a private UN value
    (which may be a sequence) they send it to the pydicom rewrite."""
    birth = struct.pack("<HH", 0x0010, 0x0030)
    steps = _default_and('version "6.1"\n-(0010,0030)\n')
    for name, vr, value in [("text.dcm", "LO", b"a" + birth + b"b"), ("ob.dcm", "OB", birth * 2)]:
        path = _saved(tmp_path, name, edit=_raw(0x00191010, vr, value))
        result, full = _both(path, steps)
        assert result is not None and result == full, name
        assert value in result[0]
    un = _saved(tmp_path, "un.dcm", edit=_raw(0x00191010, "UN", birth * 2))
    result, full = _both(un, steps)
    assert result is None and birth * 2 in full[0]


@pytest.mark.parametrize(
    ("tag", "vr", "value", "script"),
    [
        (0x00181310, "US", b"\x19\x00\x10\x10\x01", "-(0019,XXXX)"),  # a bad US length
        (0x00181310, "US", b"\x10\x00\x30\x00\x01", "-(0010,0030)"),
        (0x00091001, "OB", b"\x19\x00\x10\x10\x01", "-(0019,XXXX)"),  # odd: pydicom pads
        (0x00091002, "AT", b"\x19\x00\x10\x10\x01\x00", "-(0019,XXXX)"),  # not 4n bytes
    ],
)
def test_values_that_cannot_hold_elements_are_left_as_read_by_both_paths(
    tmp_path: Path, tag: int, vr: str, value: bytes, script: str
) -> None:
    """A deleted tag's bytes (or a wildcard's) in a value that cannot hold elements: the
    pydicom path does not convert it either (a conversion failed the file, or re-encoded
    the value the splice copies), so both give the same bytes."""
    path = _saved(tmp_path, "flat.dcm", edit=_raw(tag, vr, value))
    result, full = _both(path, _default_and(f'version "6.1"\n{script}\n'))
    assert result is not None and result == full
    assert value in result[0]


def test_a_deletion_converts_only_elements_whose_bytes_may_hold_the_tag(tmp_path: Path) -> None:
    """The pydicom rewrite of a deleting script leaves the other elements as read: a value
    pydicom cannot convert no longer fails the file, and every other element keeps its
    bytes."""
    bad = _saved(tmp_path, "bad.dcm", edit=_raw(0x00280030, "DS", b"not\\a\\number"))
    steps = [_step('version "6.1"\n-(0010,0030)\n', "project")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a conversion of the DS would warn
        with open_for_rewrite(bad, pixels_needed=False) as rewrite:
            steps[0].apply(rewrite.dataset, VARIABLES)
            assert isinstance(rewrite.dataset._dict[BaseTag(0x00280030)], RawDataElement)
            written = rewrite.to_bytes()
    assert b"not\\a\\number" in written
    result, full = _both(bad, steps)
    assert result is not None and result[0] == full[0] == written


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_a_sequence_a_script_may_delete_stays_when_the_deletion_is_not_taken(
    tmp_path: Path, syntax: object
) -> None:
    """A tag only deleted is held as empty in the scripts' run: when the condition leaves it,
    the file keeps its bytes (a sequence, which is never taken as left alone, included)."""

    def referencing(ds: pydicom.Dataset) -> None:
        reference = pydicom.Dataset()
        reference.ReferencedSOPInstanceUID = "1.2.3.9"
        ds.ReferencedImageSequence = Sequence([reference])
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax

    path = _saved(tmp_path, "referencing.dcm", edit=referencing)
    for subject, kept in (("nobody", True), ("S1", False)):
        script = f'version "6.1"\nsubject = "{subject}" ? -(0008,1140)\n'
        result, full = _both(path, [_step(DEFAULT_SITE_SCRIPT), _step(script, "project")])
        assert result is not None and result == full, subject
        assert (b"1.2.3.9" in result[0]) is kept, subject


def test_a_file_without_pixel_data_whose_last_element_outruns_the_first_read(
    tmp_path: Path,
) -> None:
    """No pixel data, and a last element (no script names it) that ends past the first
    16 KiB read: the whole element must be written, not what the first read held of it."""

    def long_last_element(ds: pydicom.Dataset) -> None:
        for tag in [tag for tag in ds.keys() if tag >= 0x7FE00010]:
            del ds[tag]
        ds.add_new(0x00420011, "OB", b"\x01" * 20000)  # EncapsulatedDocument

    path = _saved(tmp_path, "document.dcm", edit=long_last_element)
    assert path.stat().st_size > 20000 and path.read_bytes().endswith(b"\x01" * 20000)
    for project in (None, 'version "6.1"\n-(0010,1000)\n'):
        steps = _default_and(project)
        result, full = _both(path, steps)
        assert result is not None and result == full
        assert result[0].endswith(b"\x01" * 20000)


@pytest.mark.parametrize("tag", [0x00100030, 0x00200013], ids=["DA", "IS"])
def test_an_empty_element_stored_as_un_keeps_its_bytes_on_both_paths(
    tmp_path: Path, tag: int
) -> None:
    """An empty public element an explicit VR file stores with VR UN: pydicom reads its value
    as None, and converting it would give it the dictionary's VR; neither the script run nor
    a deletion elsewhere converts it, so both paths keep it as UN, byte for byte."""
    source = _saved(tmp_path, "plain.dcm").read_bytes()
    encoded = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = source.index(encoded)
    length = 8 + struct.unpack_from("<H", source, at + 6)[0]
    data = source[:at] + encoded + b"UN\x00\x00\x00\x00\x00\x00" + source[at + length :]
    path = tmp_path / "empty-un.dcm"
    path.write_bytes(data)
    for project in (None, 'version "6.1"\n-(0010,1000)\n'):
        steps = _default_and(project)
        result, full = _both(path, steps)
        assert result is not None and result == full
        assert encoded + b"UN\x00\x00\x00\x00\x00\x00" in full[0]
