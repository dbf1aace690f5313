"""Unit tests for the DicomEdit 6 subset (``flask_dicom_inbox.dicomedit``).

Scripts run on real files from pydicom's bundled set (private tags, nested sequences, overlays,
waveforms) and on datasets built here; every element of the written result is compared with the
written original, recursively through sequences, so that only the expected tags differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
)

from flask_dicom_inbox.anon_scripts import DEFAULT_SITE_SCRIPT
from flask_dicom_inbox.dicomedit import (
    DEIDENTIFICATION_MEANING,
    Script,
    ScriptSyntaxError,
    hash_uid,
    parse_script,
    record_deidentification,
)

VARS = {"project": "P1", "subject": "S1", "session": "E1"}
DELETED = "<deleted>"

# --------------------------------------------------------------------------- helpers


def _path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is missing"
    return str(path)


def _write(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _reread(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


def _file_dataset(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """``ds`` written as a Part 10 file and read back, as the importer would see it."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return _reread(_write(ds))


def _curves() -> Dataset:
    """A file with retired curve groups (50xx), one of them also inside a sequence."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.1"
    ds.PatientName = "Curve^Patient"
    ds.PatientID = "CURVE-1"
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50000010, "US", 2)
    ds.add_new(0x50000022, "LO", "curve zero")
    ds.add_new(0x50020005, "US", 1)
    ds.add_new(0x50023000, "OW", b"\x01\x00\x02\x00")
    item = Dataset()
    item.CodeValue = "121320"
    item.add_new(0x50040022, "LO", "nested curve")
    ds.PurposeOfReferenceCodeSequence = Sequence([item])
    return _file_dataset(ds)


def _nested_private() -> Dataset:
    """Private blocks at the top level, inside a standard sequence and inside a private one."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.2"
    ds.PatientName = "Private^Patient"
    top = ds.private_block(0x0029, "ACME 1.0", create=True)
    top.add_new(0x01, "LO", "SECRET-TOP-NOTE")
    top.add_new(0x02, "LO", "KEEP-ME-TOP")
    inner = Dataset()
    inner.PatientBirthDate = "19230405"
    inner_block = inner.private_block(0x0031, "ACME 1.0", create=True)
    inner_block.add_new(0x01, "LO", "SECRET-DEEP-NOTE")
    top.add_new(0x10, "SQ", Sequence([inner]))
    item = Dataset()
    item.CodeValue = "121320"
    block = item.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "SECRET-ITEM-NOTE")
    block.add_new(0x02, "LO", "KEEP-ME-ITEM")
    ds.PurposeOfReferenceCodeSequence = Sequence([item])
    return _file_dataset(ds)


Source = str | Callable[[], Dataset]


def _load(source: Source) -> Dataset:
    if callable(source):
        return source()
    return pydicom.dcmread(_path(source))


def _norm(value: Any) -> Any:
    if isinstance(value, MultiValue | list):
        return tuple(_norm(v) for v in value)
    if value is None or isinstance(value, bytes):
        return value
    return str(value)


def _flatten(ds: Dataset, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Every element, keyed like ``(300A,00B0)[0](0008,0080)``, as (VR, value)."""
    out: dict[str, tuple[str, Any]] = {}
    for elem in ds:
        key = f"{prefix}({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            out[key] = ("SQ", len(elem.value))
            for i, item in enumerate(elem.value):
                out.update(_flatten(item, f"{key}[{i}]"))
        else:
            out[key] = (elem.VR, _norm(elem.value))
    return out


def _snapshot(ds: Dataset) -> dict[str, tuple[str, Any]]:
    """The written file, read back, flattened (data set and file meta)."""
    back = _reread(_write(ds))
    flat = _flatten(back)
    flat.update(_flatten(back.file_meta, "meta"))
    flat.pop("meta(0002,0000)", None)  # the group length follows the meta's content
    return flat


def _diff(before: dict[str, tuple[str, Any]], after: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """key -> new value (or DELETED) for every element that differs; a whole sequence added or
    deleted is reported once, not item by item."""
    out: dict[str, Any] = {}
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old != new:
            out[key] = DELETED if new is None else new[1]
    whole = [
        k
        for k in out
        if (k not in after and before[k][0] == "SQ") or (k not in before and after[k][0] == "SQ")
    ]
    return {k: v for k, v in out.items() if not any(k.startswith(w + "[") for w in whole)}


def _run(source: Source, script: str, variables: dict[str, str] | None = None) -> dict[str, Any]:
    before = _snapshot(_load(source))
    ds = _load(source)
    parse_script(script).apply(ds, VARS if variables is None else variables)
    return _diff(before, _snapshot(ds))


def _private_keys(flat: dict[str, Any]) -> set[str]:
    """The keys of top-level private elements (odd group)."""
    return {k for k in flat if k.startswith("(") and "[" not in k and int(k[1:5], 16) % 2 == 1}


def _walk(ds: Dataset) -> Iterator[Any]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _java_name_uuid_uid(text: str) -> str:
    """``"2.25." + new BigInteger(1, UUID.nameUUIDFromBytes(text.getBytes(UTF_8)))``, by hand."""
    raw = bytearray(hashlib.md5(text.encode("utf-8")).digest())
    raw[6] = (raw[6] & 0x0F) | 0x30  # version 3 (name based, MD5)
    raw[8] = (raw[8] & 0x3F) | 0x80  # IETF variant
    return "2.25." + str(int.from_bytes(bytes(raw), "big"))


# --------------------------------------------------------------------------- default site script


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"])
def test_default_site_script_changes_exactly_name_id_and_description(name: str) -> None:
    variables = {"project": "PROJ1", "subject": "SUBJ1", "session": "SESS1"}
    assert _run(name, DEFAULT_SITE_SCRIPT, variables) == {
        "(0008,1030)": "PROJ1",
        "(0010,0010)": "SUBJ1",
        "(0010,0020)": "SESS1",
    }


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_default_site_script_unassigned_leaves_study_description(name: str) -> None:
    variables = {"project": "Unassigned", "subject": "SUBJ1", "session": "SESS1"}
    assert _run(name, DEFAULT_SITE_SCRIPT, variables) == {
        "(0010,0010)": "SUBJ1",
        "(0010,0020)": "SESS1",
    }


# --------------------------------------------------------------------------- the script table

CT_PATIENT = ["(0010,0010)", "(0010,0020)", "(0010,0030)", "(0010,0040)"]
CT_PATIENT += ["(0010,1002)", "(0010,1010)", "(0010,1030)", "(0010,21B0)"]
OVERLAY = ["(6000,0010)", "(6000,0011)", "(6000,0015)", "(6000,0022)", "(6000,0040)"]
OVERLAY += ["(6000,0050)", "(6000,0051)", "(6000,0100)", "(6000,0102)", "(6000,3000)"]
BEAM = "(300A,00B0)[0]"
CONTROL = BEAM + "(300A,0111)"

TABLE: list[tuple[str, Source, str, dict[str, Any]]] = [
    # := on a present element, on an absent one (added), a no-op, a multi-valued value
    ("set", "CT_small.dcm", '(0010,0010) := "Anon^Patient"', {"(0010,0010)": "Anon^Patient"}),
    ("set-adds", "MR_small.dcm", '(0008,1030) := "Brain MR"', {"(0008,1030)": "Brain MR"}),
    ("set-same", "CT_small.dcm", '(0008,0060) := "CT"', {}),
    (
        "set-multi",
        "CT_small.dcm",
        r'(0008,0008) := "DERIVED\\SECONDARY"',
        {"(0008,0008)": ("DERIVED", "SECONDARY")},
    ),
    ("set-top-only", "rtplan.dcm", '(0008,0080) := "Elsewhere"', {"(0008,0080)": "Elsewhere"}),
    (
        "set-path",
        "rtplan.dcm",
        '(300A,00B0)/(0008,0080) := "Elsewhere"',
        {BEAM + "(0008,0080)": "Elsewhere"},
    ),
    # ?= only when present
    ("setif-present", "CT_small.dcm", '(0008,1030) ?= "Head CT"', {"(0008,1030)": "Head CT"}),
    ("setif-absent", "MR_small.dcm", '(0008,1030) ?= "Head CT"', {}),
    ("setif-path-absent", "rtplan.dcm", '(300A,00B0)/(0008,0081) ?= "x"', {}),
    # deletion: top level and every nesting level, by path, whole sequences, wildcards
    (
        "delete-reaches-sequences",
        "CT_small.dcm",
        "- (0010,0020)",
        {
            "(0010,0020)": DELETED,
            "(0010,1002)[0](0010,0020)": DELETED,
            "(0010,1002)[1](0010,0020)": DELETED,
        },
    ),
    (
        "delete-top-and-nested",
        "rtplan.dcm",
        "- (0008,0080)",
        {"(0008,0080)": DELETED, BEAM + "(0008,0080)": DELETED},
    ),
    (
        "delete-path",
        "rtplan.dcm",
        "- (300A,00B0)/(0008,0080)",
        {BEAM + "(0008,0080)": DELETED},
    ),
    (
        "delete-three-levels-deep",
        "rtplan.dcm",
        "- (300A,011C)",
        {
            CONTROL + "[0](300A,011A)[0](300A,011C)": DELETED,
            CONTROL + "[0](300A,011A)[1](300A,011C)": DELETED,
        },
    ),
    (
        "delete-nested-sequences",
        "rtplan.dcm",
        "- (300C,0050)",
        {CONTROL + "[0](300C,0050)": DELETED, CONTROL + "[1](300C,0050)": DELETED},
    ),
    (
        "delete-wildcard-group",
        "CT_small.dcm",
        "- (0010,XXXX)",
        dict.fromkeys(CT_PATIENT, DELETED),
    ),
    (
        "delete-wildcard-overlay",
        "examples_overlay.dcm",
        "- (60XX,XXXX)",
        dict.fromkeys(OVERLAY, DELETED),
    ),
    (
        "delete-wildcard-curves",
        _curves,
        "- (50XX,XXXX)",
        {
            "(5000,0005)": DELETED,
            "(5000,0010)": DELETED,
            "(5000,0022)": DELETED,
            "(5002,0005)": DELETED,
            "(5002,3000)": DELETED,
            "(0040,A170)[0](5004,0022)": DELETED,
        },
    ),
    ("delete-absent", "MR_small.dcm", "- (0008,1030)", {}),
    # conditions, both branches
    *[
        (
            f"cond-eq-{name}",
            name,
            '(0008,0060) = "CT" ? (0008,1030) := "is CT" : (0008,1030) := "not CT"',
            {"(0008,1030)": expected},
        )
        for name, expected in (("CT_small.dcm", "is CT"), ("MR_small.dcm", "not CT"))
    ],
    *[
        (
            f"cond-ne-{name}",
            name,
            '(0008,0060) != "MR" ? (0010,0020) := "not-mr" : (0010,0020) := "mr"',
            {"(0010,0020)": expected},
        )
        for name, expected in (("CT_small.dcm", "not-mr"), ("MR_small.dcm", "mr"))
    ],
    *[
        (
            f"cond-match-{name}",
            name,
            '(0010,0010) ~ "Compressed.*CT1" ? - (0008,0080) : - (0008,1010)',
            {key: DELETED},
        )
        for name, key in (("CT_small.dcm", "(0008,0080)"), ("MR_small.dcm", "(0008,1010)"))
    ],
    *[
        (
            f"cond-nomatch-{name}",
            name,
            '(0008,0060) !~ "C.*" ? (0008,1030) := "no C" : (0008,1030) := "C"',
            {"(0008,1030)": expected},
        )
        for name, expected in (("CT_small.dcm", "C"), ("MR_small.dcm", "no C"))
    ],
    ("cond-no-else-false", "MR_small.dcm", '(0008,0060) = "CT" ? - (0010,0010)', {}),
    (
        "cond-on-variable",
        "CT_small.dcm",
        'project = "P1" ? (0008,1030) := subject',
        {"(0008,1030)": "S1"},
    ),
    # variables: assignment, reassignment, then use
    (
        "variable",
        "CT_small.dcm",
        "site := lowercase[(0008,0080)]\n(0008,1030) := site",
        {"(0008,1030)": "jfk imaging center"},
    ),
    (
        "variable-reassigned",
        "CT_small.dcm",
        'x := "a"\nx := concatenate[project, "_", (0010,0020)]\n(0010,0020) := x',
        {"(0010,0020)": "P1_1CT1"},
    ),
    # tag-to-tag copies
    ("copy-empty", "CT_small.dcm", "(0008,0080) := (0008,0090)", {"(0008,0080)": ""}),
    (
        "copy",
        "rtplan.dcm",
        "(0008,0080) := (0008,1010)",
        {"(0008,0080)": "COMPUTER002"},
    ),
    # functions
    (
        "lowercase",
        "CT_small.dcm",
        "(0010,0010) := lowercase[(0010,0010)]",
        {"(0010,0010)": "compressedsamples^ct1"},
    ),
    ("uppercase", "MR_small.dcm", '(0010,0010) := uppercase["anon^x"]', {"(0010,0010)": "ANON^X"}),
    (
        "replace",
        "CT_small.dcm",
        '(0010,0010) := replace[(0010,0010), "CT1", "XX"]',
        {"(0010,0010)": "CompressedSamples^XX"},
    ),
    # comments and blank lines are nothing
    (
        "comments",
        "JPEG2000.dcm",
        'version "6.1"\n\n// a comment\n  (0010,0020) := "A" // trailing\n',
        {"(0010,0020)": "A"},
    ),
]


@pytest.mark.parametrize(
    ("source", "script", "expected"),
    [pytest.param(s, sc, e, id=i) for i, s, sc, e in TABLE],
)
def test_script_table(source: Source, script: str, expected: dict[str, Any]) -> None:
    assert _run(source, script) == expected


def test_remove_all_private_tags_ct() -> None:
    before = _snapshot(_load("CT_small.dcm"))
    private = _private_keys(before)
    assert len(private) > 100
    ds = _load("CT_small.dcm")
    parse_script("removeAllPrivateTags").apply(ds, VARS)
    assert _diff(before, _snapshot(ds)) == dict.fromkeys(private, DELETED)
    assert not any(e.tag.is_private for e in _walk(_reread(_write(ds))))


def test_remove_all_private_tags_at_every_nesting_level() -> None:
    before = _snapshot(_nested_private())
    ds = _nested_private()
    parse_script("removeAllPrivateTags").apply(ds, VARS)
    data = _write(ds)
    assert _diff(before, _snapshot(ds)) == {
        "(0029,0010)": DELETED,
        "(0029,1001)": DELETED,
        "(0029,1002)": DELETED,
        "(0029,1010)": DELETED,
        "(0040,A170)[0](0029,0010)": DELETED,
        "(0040,A170)[0](0029,1001)": DELETED,
        "(0040,A170)[0](0029,1002)": DELETED,
    }
    assert not any(e.tag.is_private for e in _walk(_reread(data)))
    for secret in (b"SECRET-TOP-NOTE", b"SECRET-DEEP-NOTE", b"SECRET-ITEM-NOTE", b"19230405"):
        assert secret not in data


def test_remove_all_private_tags_real_nested_private_sequences() -> None:
    ds = _load("nested_priv_SQ.dcm")
    # the file's meta is empty; give it the identity the importer requires
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.3"
    assert any(e.tag.is_private for e in _walk(ds))
    parse_script("removeAllPrivateTags").apply(ds, VARS)
    data = _write(ds)
    assert not any(e.tag.is_private for e in _walk(_reread(data)))
    assert b"Nested SQ" not in data


@pytest.mark.parametrize(
    "script",
    [
        "retainPrivateTags[(0019,1002)]\nremoveAllPrivateTags",
        "removeAllPrivateTags\nretainPrivateTags[(0019,1002), (0043,1028)]",
    ],
    ids=["retain-first", "retain-after"],
)
def test_retain_private_tags_keeps_the_tag_and_its_creator(script: str) -> None:
    retained = {"(0019,0010)", "(0019,1002)"}
    if "(0043,1028)" in script:
        retained |= {"(0043,0010)", "(0043,1028)"}
    before = _snapshot(_load("CT_small.dcm"))
    private = _private_keys(before)
    ds = _load("CT_small.dcm")
    parse_script(script).apply(ds, VARS)
    after = _snapshot(ds)
    assert _diff(before, after) == dict.fromkeys(private - retained, DELETED)
    for key in retained:
        assert after[key] == before[key]
    assert after["(0019,0010)"][1] == "GEMS_ACQU_01"
    assert pydicom.dcmread(BytesIO(_write(ds))).private_block(0x0019, "GEMS_ACQU_01")[0x02]


def test_retain_private_tags_in_nested_items() -> None:
    before = _snapshot(_nested_private())
    ds = _nested_private()
    parse_script("retainPrivateTags[(0029,1002)]\nremoveAllPrivateTags").apply(ds, VARS)
    assert _diff(before, _snapshot(ds)) == {
        "(0029,1001)": DELETED,
        "(0029,1010)": DELETED,
        "(0040,A170)[0](0029,1001)": DELETED,
    }
    data = _write(ds)
    assert b"KEEP-ME-TOP" in data and b"KEEP-ME-ITEM" in data
    assert b"SECRET-" not in data


# --------------------------------------------------------------------------- hashUID

CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
HASH_CT = """version "6.1"
(0008,0018) := hashUID[(0008,0018)]
(0020,000D) := hashUID[(0020,000D)]
(0020,000E) := hashUID[(0020,000E)]
(0020,0052) := hashUID[(0020,0052)]
"""


def test_hash_uid_matches_java_name_uuid_from_bytes() -> None:
    expected = _java_name_uuid_uid(CT_SOP)
    assert expected == "2.25.200770339162259824316477171571062278919"
    assert hash_uid(CT_SOP) == expected
    ds = _load("CT_small.dcm")
    parse_script(HASH_CT).apply(ds, VARS)
    assert ds.SOPInstanceUID == expected
    assert len(ds.SOPInstanceUID) <= 64
    for text in ("1.2.3", "1.2.840.10008.5.1.4.1.1.2", "2.25.1"):
        assert hash_uid(text) == _java_name_uuid_uid(text)


def test_hash_uid_is_deterministic_across_parses_and_runs() -> None:
    first, second = _load("CT_small.dcm"), _load("CT_small.dcm")
    parse_script(HASH_CT).apply(first, VARS)
    parse_script(HASH_CT).apply(second, {"project": "other", "subject": "x", "session": "y"})
    assert _snapshot(first) == _snapshot(second)
    assert first.StudyInstanceUID == _java_name_uuid_uid(
        str(_load("CT_small.dcm").StudyInstanceUID)
    )


def test_hash_uid_salt_changes_the_result() -> None:
    plain, salted = _load("CT_small.dcm"), _load("CT_small.dcm")
    script = parse_script(HASH_CT)
    script.apply(plain, VARS)
    script.apply(salted, VARS, uid_salt="site-secret")
    assert salted.SOPInstanceUID != plain.SOPInstanceUID
    assert salted.SOPInstanceUID == hash_uid(CT_SOP, "site-secret")
    assert salted.file_meta.MediaStorageSOPInstanceUID == salted.SOPInstanceUID


def test_hash_uid_ct_only_uids_change_and_none_survives() -> None:
    original = _load("CT_small.dcm")
    uids = {
        k: str(original[k].value)
        for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    }
    before = _snapshot(original)
    ds = _load("CT_small.dcm")
    parse_script(HASH_CT).apply(ds, VARS)
    new_sop = _java_name_uuid_uid(uids["SOPInstanceUID"])
    assert _diff(before, _snapshot(ds)) == {
        "(0008,0018)": new_sop,
        "(0020,000D)": _java_name_uuid_uid(uids["StudyInstanceUID"]),
        "(0020,000E)": _java_name_uuid_uid(uids["SeriesInstanceUID"]),
        "(0020,0052)": _java_name_uuid_uid(uids["FrameOfReferenceUID"]),
        "meta(0002,0003)": new_sop,
    }
    data = _write(ds)
    for uid in uids.values():
        assert uid.encode() not in data
    back = _reread(data)
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID == new_sop


RTPLAN_SOP = "1.2.777.777.77.7.7777.7777.20030903150023"
RTPLAN_META_SOP = "1.2.999.999.99.9.9999.9999.20030903150023"
RTPLAN_STUDY = "1.22.333.4.555555.6.7777777777777777777777777777"
RTPLAN_STRUCT = "1.2.333.444.55.6.7777.88888"
RTPLAN_PRED = "1.9.999.999.99.9.9999.9999.20030903145128"
HASH_RTPLAN = """version "6.1"
(0008,0018) := hashUID[(0008,0018)]
(0020,000D) := hashUID[(0020,000D)]
(300C,0060)/(0008,1155) := hashUID[(300C,0060)/(0008,1155)]
(300C,0002)/(0008,1155) := hashUID[(300C,0002)/(0008,1155)]
"""


def test_hash_uid_rtplan_references_match_the_instances_they_point_to() -> None:
    before = _snapshot(_load("rtplan.dcm"))
    plan = _load("rtplan.dcm")
    parse_script(HASH_RTPLAN).apply(plan, VARS)
    assert _diff(before, _snapshot(plan)) == {
        "(0008,0018)": _java_name_uuid_uid(RTPLAN_SOP),
        "(0020,000D)": _java_name_uuid_uid(RTPLAN_STUDY),
        "(300C,0060)[0](0008,1155)": _java_name_uuid_uid(RTPLAN_STRUCT),
        "(300C,0002)[0](0008,1155)": _java_name_uuid_uid(RTPLAN_PRED),
        "meta(0002,0003)": _java_name_uuid_uid(RTPLAN_SOP),
    }

    # The structure set the plan points to, anonymized with the usual instance script.
    struct = Dataset()
    struct.SOPClassUID = RTStructureSetStorage
    struct.SOPInstanceUID = RTPLAN_STRUCT
    struct.StudyInstanceUID = RTPLAN_STUDY
    struct = _file_dataset(struct)
    parse_script("(0008,0018) := hashUID[(0008,0018)]\n(0020,000D) := hashUID[(0020,000D)]").apply(
        struct, VARS
    )
    ref = plan.ReferencedStructureSetSequence[0]
    assert ref.ReferencedSOPInstanceUID == struct.SOPInstanceUID
    assert plan.StudyInstanceUID == struct.StudyInstanceUID

    data = _write(plan)
    for uid in (RTPLAN_SOP, RTPLAN_META_SOP, RTPLAN_STUDY, RTPLAN_STRUCT, RTPLAN_PRED):
        assert uid.encode() not in data
    back = _reread(data)
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID


def test_hash_uid_jpeg2000_source_image_reference_matches_its_predecessor() -> None:
    derived = _load("JPEG2000.dcm")
    source_uid = str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID)
    script = parse_script(
        "(0008,0018) := hashUID[(0008,0018)]\n"
        "(0008,2112)/(0008,1155) := hashUID[(0008,2112)/(0008,1155)]"
    )
    script.apply(derived, VARS)
    predecessor = Dataset()
    predecessor.SOPClassUID = SecondaryCaptureImageStorage
    predecessor.SOPInstanceUID = source_uid
    predecessor = _file_dataset(predecessor)
    script.apply(predecessor, VARS)
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == predecessor.SOPInstanceUID
    assert source_uid.encode() not in _write(derived)


def _self_referencing() -> Dataset:
    """An instance whose nested sequences refer to its own study, series and instance."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.100"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.200"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.300"
    ds.PatientName = "Ref^Patient"
    instance = Dataset()
    instance.ReferencedSOPClassUID = CTImageStorage
    instance.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = ds.SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = ds.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    image = Dataset()
    image.ReferencedSOPClassUID = CTImageStorage
    image.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([image])
    return _file_dataset(ds)


def test_hash_uid_replaces_references_inside_nested_sequences() -> None:
    original = _self_referencing()
    sop, study, series = (
        str(original.SOPInstanceUID),
        str(original.StudyInstanceUID),
        str(original.SeriesInstanceUID),
    )
    before = _snapshot(original)
    ds = _self_referencing()
    parse_script(
        "(0008,0018) := hashUID[(0008,0018)]\n"
        "(0020,000D) := hashUID[(0020,000D)]\n"
        "(0020,000E) := hashUID[(0020,000E)]"
    ).apply(ds, VARS)
    h_sop, h_study, h_series = (_java_name_uuid_uid(u) for u in (sop, study, series))
    evidence = "(0040,A375)[0]"
    assert _diff(before, _snapshot(ds)) == {
        "(0008,0018)": h_sop,
        "(0020,000D)": h_study,
        "(0020,000E)": h_series,
        "(0008,1140)[0](0008,1155)": h_sop,
        evidence + "(0020,000D)": h_study,
        evidence + "(0008,1115)[0](0020,000E)": h_series,
        evidence + "(0008,1115)[0](0008,114A)[0](0008,1155)": h_sop,
        "meta(0002,0003)": h_sop,
    }
    data = _write(ds)
    for uid in (sop, study, series):
        assert uid.encode() not in data
    assert _reread(data).file_meta.MediaStorageSOPInstanceUID == h_sop


def test_hash_uid_path_hashes_each_item_by_its_own_value() -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.400"
    items = []
    for n in (1, 2, 3):
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.1234.40{n}"
        items.append(item)
    ds.ReferencedImageSequence = Sequence(items)
    ds = _file_dataset(ds)
    parse_script("(0008,1140)/(0008,1155) := hashUID[(0008,1140)/(0008,1155)]").apply(ds, VARS)
    assert [str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedImageSequence] == [
        _java_name_uuid_uid(f"1.2.826.0.1.3680043.10.1234.40{n}") for n in (1, 2, 3)
    ]


def _private_uid_file(transfer_syntax: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.500"
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "UI", ds.SOPInstanceUID)
    return _file_dataset(ds, transfer_syntax)


def test_hash_uid_replaces_a_private_ui_copy_in_explicit_vr() -> None:
    ds = _private_uid_file(ExplicitVRLittleEndian)
    parse_script("(0008,0018) := hashUID[(0008,0018)]").apply(ds, VARS)
    assert b"1.2.826.0.1.3680043.10.1234.500" not in _write(ds)


def test_hash_uid_replaces_a_private_uid_copy_in_implicit_vr() -> None:
    ds = _private_uid_file(ImplicitVRLittleEndian)
    parse_script("(0008,0018) := hashUID[(0008,0018)]").apply(ds, VARS)
    assert b"1.2.826.0.1.3680043.10.1234.500" not in _write(ds)


# --------------------------------------------------------------------------- privacy


def test_deleted_values_do_not_survive_in_the_written_file() -> None:
    secrets = {
        "(0010,0030)": b"19710123",  # PatientBirthDate
        "(0010,0020)": b"642341",  # PatientID
        "(0008,0080)": b"E. O. Ospedali Galliera",  # InstitutionName
        "(0008,0050)": b"03028041970546",  # AccessionNumber
    }
    path = _path("waveform_ecg.dcm")
    with open(path, "rb") as f:
        raw = f.read()
    for secret in secrets.values():
        assert raw.count(secret) == 1
    before = _snapshot(_load("waveform_ecg.dcm"))
    ds = _load("waveform_ecg.dcm")
    script = "\n".join(f"- {tag}" for tag in secrets)
    parse_script(script).apply(ds, VARS)
    data = _write(ds)
    for secret in secrets.values():
        assert secret not in data
    assert _diff(before, _snapshot(ds)) == dict.fromkeys(secrets, DELETED)


def test_deleted_values_inside_sequences_do_not_survive() -> None:
    ds = _load("CT_small.dcm")
    ds.PatientBirthDate = "19610817"
    ds.OtherPatientIDsSequence[1].PatientBirthDate = "19610818"
    ds = _reread(_write(ds))
    parse_script("- (0010,0020)\n- (0010,0030)").apply(ds, VARS)
    data = _write(ds)
    for secret in (b"ABCD1234", b"1234ABCD", b"19610817", b"19610818"):
        assert secret not in data
    # the same deletion inside a private sequence
    ds = _nested_private()
    parse_script("- (0010,0030)").apply(ds, VARS)
    data = _write(ds)
    assert b"19230405" not in data
    assert b"SECRET-DEEP-NOTE" in data  # only what the script removes goes


#: One deletion named exactly and two by wildcards that match the same tag (and no other
#: tag of the tests' files).
BIRTH_DATE_DELETIONS = ["- (0010,0030)", "- (0010,003X)", "- (00X0,XX30)"]


@pytest.mark.parametrize("script", BIRTH_DATE_DELETIONS)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_deleted_values_two_sequences_deep_in_a_file_as_read_do_not_survive(
    syntax: str, script: str
) -> None:
    """Read from a file, the inner sequence is still raw bytes inside the outer one's item
    (the script's run converts it, as it starts with an item): the deletion must reach it,
    and leave every other raw element as it was read, a wildcard's too (its bytes hold no
    tag the wildcard matches)."""
    inner = Dataset()
    inner.PatientBirthDate = "19230405"
    outer = Dataset()
    outer.PatientID = "OUTER-ID"
    outer.OtherPatientIDsSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.601"
    ds.OtherPatientIDsSequence = Sequence([outer])
    ds.StudyDescription = "kept as read"
    ds = _file_dataset(ds, syntax)
    parse_script(script).apply(ds, VARS)
    assert isinstance(ds._dict[Tag(0x00081030)], RawDataElement)  # never converted
    assert isinstance(ds._dict[Tag(0x00101002)], DataElement)  # (its items were looked into)
    data = _write(ds)
    assert b"19230405" not in data
    assert b"OUTER-ID" in data and b"kept as read" in data


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    "first", [b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"], ids=["mistagged", "delimiter"]
)
def test_deleted_values_in_a_sequence_not_starting_with_an_item_do_not_survive(
    syntax: str, first: bytes
) -> None:
    """A sequence whose first item is tagged as something else (pydicom still reads it as an
    item), or whose bytes start with a sequence delimiter (pydicom reads no item, and the
    bytes after it hide the value): its bytes hold the deleted tag, so it is looked into."""
    inner = Dataset()
    inner.PatientID = "OTHER-ID"
    inner.PatientBirthDate = "19230405"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.602"
    ds.OtherPatientIDsSequence = Sequence([inner])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    data = bytearray(_write(ds))
    at = data.index(b"\x10\x00\x02\x10") + (12 if syntax == ExplicitVRLittleEndian else 8)
    assert data[at : at + 4] == b"\xfe\xff\x00\xe0"
    data[at : at + 4] = first
    ds = _reread(bytes(data))
    parse_script("- (0010,0030)").apply(ds, VARS)
    assert b"19230405" not in _write(ds)


def _birth_date_item(item_tag: bytes) -> bytes:
    """The bytes of a UN value holding one item (tagged ``item_tag``) with a birth date."""
    inner = Dataset()
    inner.PatientBirthDate = "19230405"
    body = BytesIO()
    fp = DicomFileLike(body)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, inner)
    item = body.getvalue()
    return item_tag + len(item).to_bytes(4, "little") + item


@pytest.mark.parametrize("script", BIRTH_DATE_DELETIONS)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_deleted_values_in_a_private_un_sequence_with_a_mistagged_item_do_not_survive(
    syntax: str, script: str
) -> None:
    """A private element of an unknown creator, stored as UN, holding a sequence whose first
    item is tagged as something else: its bytes hold the deleted tag, so they are read as a
    sequence, and the element becomes one, without the value; by a wildcard's deletion too.
    A UN element whose bytes hold the tag but whose sequence does not keeps its bytes."""
    mistagged = _birth_date_item(b"\xfe\xff\x0d\xe0")
    blob = b"\x10\x00\x30\x00 not a sequence"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.603"
    ds.add_new(0x00990010, "LO", "ACME 1.0")
    ds.add_new(0x00991010, "UN", mistagged)
    ds.add_new(0x00991011, "UN", blob)
    ds = _file_dataset(ds, syntax)
    parse_script(script).apply(ds, VARS)
    data = _write(ds)
    assert b"19230405" not in data
    assert ds[0x00991010].VR == "SQ" and len(ds[0x00991010].value) == 1
    assert blob in data


@pytest.mark.parametrize("script", BIRTH_DATE_DELETIONS)
@pytest.mark.parametrize(
    "item_tag", [b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0"], ids=["item", "mistagged"]
)
def test_deleted_values_in_a_un_sequence_pydicom_gives_a_flat_vr_do_not_survive(
    script: str, item_tag: bytes
) -> None:
    """A private element stored as UN whose private dictionary VR is OB (pydicom converts
    it to that VR), holding a sequence: its bytes hold the deleted tag, so it is read as a
    sequence all the same, and the value goes."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.604"
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291010, "UN", _birth_date_item(item_tag))
    ds = _file_dataset(ds, ExplicitVRLittleEndian)
    parse_script(script).apply(ds, VARS)
    assert b"19230405" not in _write(ds)


def test_deleted_values_inside_an_implicit_vr_private_sequence_do_not_survive() -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.600"
    item = Dataset()
    item.PatientBirthDate = "19230405"
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x01, "SQ", Sequence([item]))
    ds = _file_dataset(ds, ImplicitVRLittleEndian)
    parse_script("- (0010,0030)").apply(ds, VARS)
    assert b"19230405" not in _write(ds)


# --------------------------------------------------------------------------- syntax errors

SYNTAX_ERRORS = [
    ("unterminated-string", 'version "6.1"\n(0010,0010) := "abc', 2, 16),
    ("bad-tag", '// comment\n\n  (0010,00ZZ) := "x"', 3, 3),
    ("bad-tag-in-value", "(0010,0010) := (0010,0Z10)", 1, 16),
    ("missing-value", 'version "6.1"\n(0010,0010) :=', 2, 15),
    ("double-equals", '(0010,0010) == "x"', 1, 14),
    ("unknown-function", '(0010,0010) := "a"\n(0010,0010) := foo[(0010,0010)]', 2, 16),
    ("bad-version", 'version "5"\n(0010,0010) := "x"', 1, 9),
    ("version-without-value", "version", 1, 8),
    ("nothing-after-question", '(0008,0060) = "CT" ?', 1, 21),
    ("nothing-after-colon", '(0008,0060) = "CT" ? - (0010,0010) :', 1, 37),
    ("garbage-at", "(0010,0010) := @", 1, 16),
    ("garbage-in-comment-free-line", '(0010,0010) := "a" # note', 1, 20),
    ("unknown-variable", "(0010,0010) := patient", 1, 16),
    ("variable-used-before-assigned", '(0010,0010) := later\nlater := "x"', 1, 16),
    ("wildcard-target", '(0010,XXXX) := "x"', 1, 1),
    ("wildcard-target-setif", '\t(50XX,0010) ?= "x"', 1, 2),
    ("version-not-first", '(0010,0010) := "x"\n\n  version "6.1"', 3, 3),
    ("unknown-tag", '(0008,9999) := "x"', 1, 1),
    ("delete-without-tag", '- "x"', 1, 3),
    ("trailing-text", '(0010,0010) := "a" "b"', 1, 20),
    ("wrong-arity", '(0010,0010) := lowercase[(0010,0010), "x"]', 1, 16),
    ("retain-without-tag", "retainPrivateTags[]", 1, 19),
    ("lonely-tag", "(0010,0010)", 1, 12),
]


@pytest.mark.parametrize(
    ("script", "line", "column"),
    [pytest.param(s, ln, c, id=i) for i, s, ln, c in SYNTAX_ERRORS],
)
def test_syntax_errors_name_line_and_column(script: str, line: int, column: int) -> None:
    with pytest.raises(ScriptSyntaxError) as info:
        parse_script(script)
    assert (info.value.line, info.value.column) == (line, column)
    assert str(info.value).startswith(f"line {line}, column {column}:")
    assert isinstance(info.value, ValueError)


def test_valid_scripts_parse() -> None:
    script = parse_script(DEFAULT_SITE_SCRIPT)
    assert isinstance(script, Script)
    assert len(script.statements) == 3
    assert parse_script("").statements == ()
    assert parse_script("// only a comment\n\n").statements == ()
    assert parse_script('version "6.1"\r\n(0010,0010) := "x"\r\n').statements


def test_invalid_regex_is_refused_or_harmless() -> None:
    try:
        script = parse_script('(0010,0010) ~ "[unclosed" ? - (0010,0020)')
    except ScriptSyntaxError as exc:
        assert (exc.line, exc.column) == (1, 15)
        return
    script.apply(_load("CT_small.dcm"), VARS)


def test_setting_an_absent_private_tag_is_refused_or_works() -> None:
    try:
        script = parse_script('(0019,1099) := "x"')
    except ScriptSyntaxError:
        return
    ds = _load("MR_small.dcm")
    script.apply(ds, VARS)
    assert _reread(_write(ds))[0x00191099].value in ("x", b"x")


def test_apply_on_a_dataset_without_sop_instance_uid() -> None:
    ds = Dataset()
    ds.PatientName = "No^Sop"
    assert parse_script("(0010,0010) := subject").apply(ds, VARS)
    assert ds.PatientName == "S1"


# ------------------------------------------------------------------------ deidentification record


def test_record_deidentification_items_and_identity_removed() -> None:
    ds = _load("CT_small.dcm")
    assert "DeidentificationMethodCodeSequence" not in ds
    record_deidentification(ds, "site")
    record_deidentification(ds, "project-script-long-id")
    back = _reread(_write(ds))
    items = back.DeidentificationMethodCodeSequence
    assert [i.CodeValue for i in items] == ["site", "project-script-l"]
    for item in items:
        assert item.CodeMeaning == DEIDENTIFICATION_MEANING == "XNAT DicomEdit 6 Script"
        assert item.CodingSchemeDesignator == "XNAT"
        assert item.CodingSchemeVersion == "1.0"
    assert back.PatientIdentityRemoved == "YES"
    assert back[0x00120064].VR == "SQ"


def test_record_deidentification_appends_to_an_existing_sequence() -> None:
    ds = _load("MR_small.dcm")
    prior = Dataset()
    prior.CodeValue = "113100"
    prior.CodingSchemeDesignator = "DCM"
    prior.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([prior])
    ds.PatientIdentityRemoved = "NO"
    record_deidentification(ds, "site")
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "site"]
    assert ds.PatientIdentityRemoved == "YES"


# --------------------------------------------------------------------------- change report


def test_apply_reports_each_change_by_tag() -> None:
    ds = _load("CT_small.dcm")
    changes = parse_script(
        '(0010,0010) := "Anon"\n'
        "- (0010,1010)\n"
        '(0008,0060) := "CT"\n'  # unchanged: not reported
        '(0008,1030) ?= "Head"\n'
        "(0008,0018) := hashUID[(0008,0018)]\n"
        "- (7777,XXXX)\n"  # matches nothing
    ).apply(ds, VARS)
    assert all(isinstance(c, str) for c in changes)
    assert len(changes) == 4, changes
    name, age, description, sop = changes
    assert "(0010,0010)" in name and "PatientName" in name
    assert "CompressedSamples^CT1" in name and "Anon" in name
    assert "(0010,1010)" in age and "PatientAge" in age and "deleted" in age
    assert "(0008,1030)" in description and "StudyDescription" in description
    assert "(0008,0018)" in sop and "SOPInstanceUID" in sop and hash_uid(CT_SOP) in sop


def test_apply_reports_nothing_when_nothing_changes() -> None:
    ds = _load("MR_small.dcm")
    assert parse_script('(0008,1030) ?= "x"\n- (0010,21B0)\n').apply(ds, VARS) == []


def test_apply_reports_private_and_nested_deletions() -> None:
    ds = _load("CT_small.dcm")
    changes = parse_script("- (0010,0020)\n- (0009,1001)").apply(ds, VARS)
    assert sum("(0010,0020)" in c and "deleted" in c for c in changes) == 3
    assert any("(0009,1001)" in c and "deleted" in c for c in changes)
    removed = parse_script("removeAllPrivateTags").apply(ds, VARS)
    assert removed and all("deleted" in c for c in removed)
    assert any("(0043,104E)" in c for c in removed)
