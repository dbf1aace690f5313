"""Session, subject, scan and file names: XNAT's rules, made safe for paths.

No header value reaches a path without passing through here.
"""

from __future__ import annotations

from collections.abc import Iterable

from .dicom import DicomHeader
from .storage import safe_file_name, safe_path_component

DEFAULT_SESSION_LABEL = "dicom_upload"
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode()`` as a signed-agnostic 32-bit value."""
    data = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h


def java_list_hash(items: Iterable[str]) -> int:
    """Java's ``List.hashCode()`` of strings, as an unsigned 32-bit integer."""
    h = 1
    for item in items:
        h = (31 * h + java_string_hash(item)) & 0xFFFFFFFF
    return h


def base36(value: int) -> str:
    if value == 0:
        return "0"
    out = []
    while value:
        value, digit = divmod(value, 36)
        out.append(_BASE36[digit])
    return "".join(reversed(out))


def xnat_instance_hash(sop_class_uid: str, sop_instance_uid: str) -> str:
    """XNAT's file-name hash: ``List.hashCode([class, instance])`` unsigned, base 36."""
    return base36(java_list_hash([sop_class_uid, sop_instance_uid]))


def template_file_name(header: DicomHeader) -> str:
    """``${StudyInstanceUID}-${SeriesNumber}-${InstanceNumber}-${hash}.dcm``, sanitised."""
    parts = [
        header.study_instance_uid,
        header.series_number,
        header.instance_number,
        xnat_instance_hash(header.sop_class_uid, header.sop_instance_uid),
    ]
    return safe_file_name("-".join(parts) + ".dcm")


def session_label(expt_label: str | None, header: DicomHeader) -> str:
    """EXPT_LABEL, else ``Session:`` in the comments, else PatientID, else ``dicom_upload``."""
    if expt_label:
        return expt_label
    for candidate in (header.session_hint, header.patient_id):
        if candidate.strip():
            return safe_path_component(candidate, DEFAULT_SESSION_LABEL)
    return DEFAULT_SESSION_LABEL


def subject_label(subject_id: str | None, header: DicomHeader) -> str:
    """SUBJECT_ID, else ``Subject:`` in the comments, else PatientName, else empty."""
    if subject_id:
        return subject_id
    for candidate in (header.subject_hint, header.patient_name):
        if candidate.strip():
            return safe_path_component(candidate, "")
    return ""


def scan_folder_name(series_number: str) -> str:
    """The scan folder for a series: its SeriesNumber, sanitised (``0`` when missing)."""
    return safe_path_component(series_number, "0")
