"""naming.py: XNAT's hash and file-name template, and the label rules, made safe for paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from example_app.demo import make_dataset
from flask_dicom_inbox.dicom import DicomHeader, read_header
from flask_dicom_inbox.naming import (
    DEFAULT_SESSION_LABEL,
    base36,
    java_list_hash,
    java_string_hash,
    scan_folder_name,
    session_label,
    subject_label,
    template_file_name,
    xnat_instance_hash,
)

HEADER = DicomHeader(
    sop_class_uid="1.2.3.4.5",
    sop_instance_uid="2.4.6.8.10",
    study_instance_uid="1.2.826.0.1.3680043.10.1457.7",
    series_instance_uid="1.2.826.0.1.3680043.10.1457.8",
    series_number="3",
    instance_number="12",
    patient_id="PID0001",
    patient_name="Doe^Jane",
    subject_hint="subj_from_comment",
    session_hint="sess_from_comment",
)


def _header(**changes: str) -> DicomHeader:
    return dataclasses.replace(HEADER, **changes)


def test_xnat_instance_hash_matches_the_contract_example() -> None:
    assert xnat_instance_hash("1.2.3.4.5", "2.4.6.8.10") == "1q4d68t"


def test_xnat_instance_hash_depends_on_order_of_class_and_instance() -> None:
    assert xnat_instance_hash("2.4.6.8.10", "1.2.3.4.5") != "1q4d68t"


@pytest.mark.parametrize(
    ("text", "java_value"),
    [
        ("", 0),
        ("a", 97),
        ("abc", 96354),
        ("hello", 99162322),
        ("Aa", 2112),
        ("BB", 2112),
        ("é", 233),
        # A character outside the BMP counts as two UTF-16 code units, as in Java.
        ("\U0001f600", 0xD83D * 31 + 0xDE00),
    ],
)
def test_java_string_hash_matches_java_values(text: str, java_value: int) -> None:
    assert java_string_hash(text) == java_value


def test_java_string_hash_of_negative_java_hash_is_unsigned() -> None:
    # Java: "polygenelubricants".hashCode() == Integer.MIN_VALUE (-2147483648).
    assert java_string_hash("polygenelubricants") == 2147483648
    # Java: "hello world".hashCode() == 1794106052; x 31 overflows past 2**32 on the way.
    assert java_string_hash("hello world") == 1794106052


def test_java_list_hash_follows_list_hashcode() -> None:
    assert java_list_hash([]) == 1
    assert java_list_hash(["a"]) == 31 + 97
    assert java_list_hash(["a", "b"]) == (31 * (31 + 97) + 98)
    assert 0 <= java_list_hash(["polygenelubricants"] * 5) < 2**32


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (35, "z"), (36, "10"), (2**32 - 1, "1z141z3")]
)
def test_base36_digits(value: int, text: str) -> None:
    assert base36(value) == text


def test_template_file_name_format() -> None:
    assert template_file_name(HEADER) == ("1.2.826.0.1.3680043.10.1457.7-3-12-1q4d68t.dcm")


def test_template_file_name_sanitises_hostile_header_values() -> None:
    name = template_file_name(
        _header(study_instance_uid="../../etc", series_number="/x", instance_number="a b")
    )
    assert "/" not in name
    assert " " not in name
    assert name.endswith("-1q4d68t.dcm")
    assert Path(name).name == name


def test_session_label_prefers_expt_label() -> None:
    assert session_label("test_exp", HEADER) == "test_exp"


def test_session_label_uses_session_comment_when_no_expt_label() -> None:
    assert session_label(None, HEADER) == "sess_from_comment"
    assert session_label("", HEADER) == "sess_from_comment"


def test_session_label_uses_patient_id_when_no_comment() -> None:
    assert session_label(None, _header(session_hint="")) == "PID0001"
    assert session_label(None, _header(session_hint="   ")) == "PID0001"


def test_session_label_falls_back_to_dicom_upload() -> None:
    assert session_label(None, _header(session_hint="", patient_id="")) == "dicom_upload"
    assert DEFAULT_SESSION_LABEL == "dicom_upload"


def test_session_label_from_header_values_is_sanitised() -> None:
    label = session_label(None, _header(session_hint="", patient_id="../../etc/passwd"))
    assert "/" not in label
    assert label.strip(".") != ""
    assert label == "______etc_passwd"


def test_session_label_reads_session_from_real_file_comments(tmp_path: Path) -> None:
    ds = make_dataset(
        study_uid="1.2.826.0.1.3680043.10.1457.1",
        series_uid="1.2.826.0.1.3680043.10.1457.2",
        sop_uid="1.2.826.0.1.3680043.10.1457.3",
        series_number=1,
        instance_number=1,
    )
    ds.PatientComments = "Project: test_proj Subject: subj_c Session: sess_c"
    path = tmp_path / "commented.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path, max_inflated_bytes=64 * 2**20)
    assert header.sop_class_uid == CTImageStorage
    assert session_label(None, header) == "sess_c"
    assert subject_label(None, header) == "subj_c"
    assert session_label("given", header) == "given"
    assert subject_label("given_subj", header) == "given_subj"


def test_subject_label_prefers_subject_id() -> None:
    assert subject_label("test_subj", HEADER) == "test_subj"


def test_subject_label_uses_subject_comment_when_no_subject_id() -> None:
    assert subject_label(None, HEADER) == "subj_from_comment"


def test_subject_label_uses_patient_name_sanitised_when_no_comment() -> None:
    assert subject_label(None, _header(subject_hint="")) == "Doe_Jane"


def test_subject_label_is_empty_without_any_source() -> None:
    assert subject_label(None, _header(subject_hint="", patient_name="")) == ""


@pytest.mark.parametrize("hostile", ["../../x", "..", "/", "a/../../b", "..\\..\\x", "."])
def test_scan_folder_name_is_never_a_path(hostile: str) -> None:
    name = scan_folder_name(hostile)
    assert "/" not in name
    assert "\\" not in name
    assert name.strip(".") != ""
    assert Path(name).name == name


def test_scan_folder_name_keeps_plain_series_numbers() -> None:
    assert scan_folder_name("4") == "4"
    assert scan_folder_name(" 12 ") == "12"


def test_scan_folder_name_of_missing_series_number_is_zero() -> None:
    assert scan_folder_name("") == "0"
    assert scan_folder_name("   ") == "0"
