"""Reading and writing DICOM files with pydicom: header reads, full reads and rewrites (the
scripts' own work on a dataset is in :mod:`.dicomedit`; the rewrite without a pydicom read of
the header in :mod:`.splice_edit`).

Header reads use ``stop_before_pixels=True`` and are never written back (pydicom would write a
file without pixel data). Deflated files are measured by streaming inflation before pydicom
sees them, because pydicom inflates the whole file into memory even for a header read.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset, validate_file_meta
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from . import deadline, raw_header
from .raw_header import ITEM, LONG_VRS, PIXEL_TAGS, SEQUENCE_END
from .storage import copy_range, open_nofollow

DEFLATED = "1.2.840.10008.1.2.1.99"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: Header tags a scan needs; reading stops after the last one we need before pixel data.
_COMMENT_TAGS = ("PatientComments", "StudyComments", "AdditionalPatientHistory")


#: UI and IS values, always ASCII: read from the raw bytes when still unconverted.
_ASCII_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
)
#: Text values, decoded in the file's character set.
_TEXT_KEYWORDS = ("PatientID", "PatientName", *_COMMENT_TAGS)


def _tags(*keywords: str) -> dict[str, BaseTag]:
    return {keyword: BaseTag(tag_for_keyword(keyword) or 0) for keyword in keywords}


_ASCII_TAGS = _tags(*_ASCII_KEYWORDS)
_MEDIA_TAGS = _tags(
    "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "SOPClassUID", "SOPInstanceUID"
)


class NotImportable(Exception):
    """A file that is not an importable DICOM instance; ``str(exc)`` is the reason."""


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """What grouping and naming need from one file's header (small: one per file is kept)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: str
    instance_number: str
    patient_id: str
    patient_name: str
    subject_hint: str
    session_hint: str


def read_header(path: str | Path, *, max_inflated_bytes: int) -> DicomHeader:
    """Read what grouping needs from ``path``; raise :class:`NotImportable` with a reason.

    Accepts Part 10 files with or without the 128-byte preamble. DICOMDIR files, non-DICOM
    files and instances lacking SOPInstanceUID or SOPClassUID are refused.
    """
    with open(path, "rb", opener=open_nofollow) as fp:
        size = os.fstat(fp.fileno()).st_size
        if size == 0:
            raise NotImportable("empty file")
        with _quiet():
            transfer_syntax, media_class = _peek_meta(fp)
        implicit = _LITTLE_ENDIAN_SYNTAXES.get(transfer_syntax)
        if implicit is not None and media_class != MEDIA_STORAGE_DIRECTORY:
            header = _walked_header(fp, fp.tell(), size, implicit)
            if header is not None:
                return header
        if transfer_syntax == DEFLATED:
            _check_inflated_size(fp, max_inflated_bytes)
        fp.seek(0)
        try:
            with _quiet():
                ds = pydicom.dcmread(_BoundedReader(fp, size), stop_before_pixels=True, force=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
            deadline.reraise_timeout(exc)  # pydicom turns a timeout into KeyError on the way
            raise NotImportable(f"not a DICOM file ({_short(exc)})") from exc
        except Exception as exc:  # pydicom raises many types on junk; none may stop a request
            deadline.reraise_timeout(exc)
            raise NotImportable(
                f"unreadable DICOM file ({type(exc).__name__}: {_short(exc)})"
            ) from exc
        with _quiet():
            truncation = _truncation(ds)
            header = _header_from(ds)  # "not a DICOM file" and the like come first
        if truncation:
            raise NotImportable(truncation)
        return header


def _little_endian_syntaxes() -> dict[str, bool]:
    """Transfer syntaxes whose data set is little endian and not deflated: implicit VR?"""
    known = {}
    for name in dir(pydicom.uid):
        uid = getattr(pydicom.uid, name)
        if isinstance(uid, pydicom.uid.UID) and uid.is_transfer_syntax and not uid.is_private:
            if uid.is_little_endian and not uid.is_deflated:
                known[str(uid)] = bool(uid.is_implicit_VR)
    return known


_LITTLE_ENDIAN_SYNTAXES = _little_endian_syntaxes()
_WALKED_TAGS = _tags("SpecificCharacterSet", *_ASCII_KEYWORDS, *_TEXT_KEYWORDS)
_WALKED = frozenset(int(tag) for tag in _WALKED_TAGS.values())


def _walked_header(fp: BinaryIO, start: int, size: int, implicit: bool) -> DicomHeader | None:
    """The header from :mod:`.raw_header`'s walk, or ``None`` (read it with pydicom)."""
    fp.seek(0)
    data = fp.read(16 * 1024)  # a CT header is 2-10 KB
    try:
        found = raw_header.walk(data, start, size, implicit=implicit, wanted=_WALKED)
    except raw_header.NeedMore:
        if size > 8 * 2**20:
            return None
        fp.seek(0)
        data = fp.read()
        try:
            found = raw_header.walk(data, start, size, implicit=implicit, wanted=_WALKED)
        except raw_header.NeedMore:
            return None
    if found is None:
        return None
    return header_from_raw(found)


#: The top-level tags :func:`header_from_raw` reads.
HEADER_TAGS = _WALKED


def header_from_raw(found: Mapping[int, bytes]) -> DicomHeader | None:
    """The header from the raw values of :data:`HEADER_TAGS` (absent ones left out), or
    ``None`` when a value needs pydicom: a character set to decode, several values, or no
    SOP UIDs (pydicom's read gives the reason)."""
    text: dict[str, str] = {}
    for keyword, tag in _WALKED_TAGS.items():
        raw = found.get(int(tag), b"")
        if not raw.isascii() or b"\x1b" in raw or b"\\" in raw:
            return None  # a character set to decode, or several values: pydicom's job
        text[keyword] = raw.decode("ascii").strip("\x00 ")
    if not text["SOPClassUID"] or not text["SOPInstanceUID"]:
        return None  # pydicom's read gives the reason
    return _header_with(text.__getitem__)


def _truncation(ds: Dataset) -> str | None:
    """Why a file with an element whose length runs past the end of the file is refused.

    pydicom reads such an element short without a word: a private element claiming 4 GiB
    would swallow the rest of the file (UIDs, pixel data) and import as a broken instance.
    Looked for before anything converts the raw values (conversion hides the short read).
    """
    for elem in ds._dict.values():
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF:
            if len(value) < length:
                return (
                    f"truncated: element {elem.tag} declares {length} bytes, "
                    f"the file holds {len(value)}"
                )
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns about quirks of real-world files it reads anyway; they are not faults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _header_from(ds: Dataset) -> DicomHeader:
    meta = getattr(ds, "file_meta", None)
    media_class = ""
    if meta is not None:  # read raw when it can be: a converted element is re-encoded later
        raw_class = _raw_ascii(meta, _MEDIA_TAGS["MediaStorageSOPClassUID"])
        media_class = (
            str(meta.get("MediaStorageSOPClassUID", "")) if raw_class is None else raw_class
        )
    if media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotImportable("DICOMDIR (a media directory, not an instance)")
    try:
        sop_class = _ascii(ds, "SOPClassUID")
        sop_instance = _ascii(ds, "SOPInstanceUID")
    except Exception as exc:  # a forced read of junk can fail on first element access
        deadline.reraise_timeout(exc)
        raise NotImportable(f"not a DICOM file ({_short(exc)})") from exc
    if not sop_instance or not sop_class:
        if len(ds) <= 2 and not sop_instance and not sop_class:
            raise NotImportable("not a DICOM file")
        raise NotImportable("DICOM file lacks SOPInstanceUID or SOPClassUID")
    return _header_with(lambda k: _ascii(ds, k) if k in _ASCII_TAGS else _text(ds, k))


def _header_with(value: Callable[[str], str]) -> DicomHeader:
    """The header from ``value(keyword)``, the element's text (``""`` when absent)."""
    comments = " ".join(value(t) for t in _COMMENT_TAGS)
    return DicomHeader(
        sop_class_uid=value("SOPClassUID"),
        sop_instance_uid=value("SOPInstanceUID"),
        study_instance_uid=value("StudyInstanceUID"),
        series_instance_uid=value("SeriesInstanceUID"),
        series_number=value("SeriesNumber"),
        instance_number=value("InstanceNumber"),
        patient_id=value("PatientID"),
        patient_name=value("PatientName"),
        subject_hint=_comment_field(comments, "Subject"),
        session_hint=_comment_field(comments, "Session"),
    )


def _comment_field(comments: str, field: str) -> str:
    """XNAT's ``Project: P Subject: S Session: E`` convention in the comment tags."""
    marker = f"{field}:"
    at = comments.find(marker)
    if at < 0:
        return ""
    rest = comments[at + len(marker) :].strip()
    return rest.split()[0] if rest else ""


def _ascii(ds: Dataset, keyword: str) -> str:
    """A UI or IS value (always ASCII) straight from the raw bytes when still unconverted:
    pydicom's conversion and validation of every value costs a third of a header read."""
    raw = _raw_ascii(ds, _ASCII_TAGS[keyword])
    return raw if raw is not None else _text(ds, keyword)


def _raw_ascii(ds: Dataset, tag: BaseTag) -> str | None:
    return raw_text(ds._dict.get(tag))


def raw_text(elem: object) -> str | None:
    """An element's value bytes as ASCII text while it is still unconverted, else ``None``:
    reading it so spares its conversion, and a rewrite then copies its original bytes."""
    value = getattr(elem, "value", None) if isinstance(elem, RawDataElement) else None
    return value.decode("ascii", "replace").strip("\x00 ") if isinstance(value, bytes) else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ")
    return str(value).strip("\x00 ")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_TRANSFER_SYNTAX_TAG = (0x0002, 0x0010)
_MEDIA_CLASS_TAG = (0x0002, 0x0002)


def _peek_transfer_syntax(fp: BinaryIO) -> str:
    """The transfer syntax from the file meta (``""`` when there is none to read); leaves
    ``fp`` just after the meta group, where a deflated data set starts."""
    return _peek_meta(fp)[0]


def _peek_meta(fp: BinaryIO) -> tuple[str, str]:
    """The transfer syntax and media storage SOP class from the file meta (``""`` when there
    is none to read); leaves ``fp`` just after the meta group.

    The meta group is walked by hand (explicit VR little endian, as Part 10 requires): it is
    read for every file before pydicom's own read, and a full meta parse costs as much as
    half a header read.
    """
    head = fp.read(132)
    offset = 132 if head[128:132] == b"DICM" else 0
    fp.seek(offset)
    meta = fp.read(64 * 1024)
    pos = 0
    values = {_TRANSFER_SYNTAX_TAG: "", _MEDIA_CLASS_TAG: ""}
    while pos + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, pos)
        if group != 0x0002:
            break
        vr = meta[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(meta):
                break
            (length,) = struct.unpack_from("<I", meta, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF:
            break
        if (group, element) in values:
            text = meta[start : start + length].decode("ascii", "replace").strip("\x00 ")
            values[group, element] = text
        pos = start + length
    fp.seek(offset + min(pos, len(meta)))
    return values[_TRANSFER_SYNTAX_TAG], values[_MEDIA_CLASS_TAG]


def _check_inflated_size(fp: BinaryIO, limit: int) -> None:
    """Inflate the deflated body in chunks, keeping nothing, and refuse it past ``limit``."""
    body_start = fp.tell()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    fp.seek(body_start)
    while chunk := fp.read(256 * 1024):
        data = inflater.decompress(chunk, 1024 * 1024)
        total += len(data)
        while inflater.unconsumed_tail:
            data = inflater.decompress(inflater.unconsumed_tail, 1024 * 1024)
            total += len(data)
            if total > limit:
                break
        if total > limit:
            raise NotImportable(
                f"deflated file inflates past the limit of {limit} bytes (possible deflate bomb)"
            )


class _BoundedReader:
    """A binary file whose reads never ask for more bytes than it holds.

    pydicom reads a value with one ``read(length)`` of the length the file declares, and
    CPython allocates that many bytes before reading: a 100-byte junk file declaring 4 GiB
    made a 4 GiB allocation (a ``MemoryError`` where memory is capped).
    """

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self._fp = fp
        self._size = size

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self._fp.tell())
        return self._fp.read(left if n is None or n < 0 or n > left else n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def __getattr__(self, name: str) -> Any:  # name, fileno, close: the file's own
        return getattr(self._fp, name)


def read_full(path: Path) -> FileDataset:
    """A full read (pixel data included) for rewriting; the only read that may be saved."""
    with open(path, "rb", opener=open_nofollow) as fp, _quiet():
        ds = pydicom.dcmread(_BoundedReader(fp, os.fstat(fp.fileno()).st_size), force=True)
        _convert_all(ds)
        _check_pixel_length(ds)
    return ds


def _convert_all(ds: Dataset) -> None:
    """pydicom converts (and validates, warning) each value on first access; convert them all
    here so invalid values (a UID '/etc/x') never warn inside a script."""
    for _elem in ds.iterall():
        pass


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    """The length native pixel data must have (``None``: compressed, or not knowable)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or syntax.is_compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (expected * bits + 7) // 8


_UNPACK_US = struct.Struct("<H").unpack


def _expected_pixel_bytes_le(ds: Dataset) -> int | None:
    """:func:`_expected_pixel_bytes` of a little-endian header read, from the raw bytes of
    its geometry elements: converting them costs a sixth of a header-only rewrite's read.
    Anything not plainly encoded gets the converting version."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or syntax.is_compressed:
        return None

    def raw_of(tag: BaseTag) -> tuple[str | None, bytes] | None:
        raw = ds._dict.get(tag)
        if raw is None:
            return None
        if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes):
            raise NotPlain
        return raw.VR, raw.value

    try:
        return native_pixel_bytes(raw_of)
    except NotPlain:
        return _expected_pixel_bytes(ds)


class NotPlain(Exception):
    """An element not plainly encoded: convert it with pydicom to know its value."""


GEOMETRY_TAGS = _tags("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames")


def native_pixel_bytes(raw_of: Callable[[BaseTag], tuple[str | None, bytes] | None]) -> int:
    """The length native pixel data must have, from the geometry elements' ``(VR, bytes)``
    as read (``None`` when absent; VR ``None`` in an implicit VR file); :class:`NotPlain`
    when one of them is not plainly encoded."""
    found: dict[str, int] = {}
    for keyword, tag in GEOMETRY_TAGS.items():
        raw = raw_of(tag)
        if raw is None:
            if keyword not in ("SamplesPerPixel", "NumberOfFrames"):
                raise NotPlain
            found[keyword] = 1
            continue
        vr, value = raw
        if keyword == "NumberOfFrames":  # IS: ASCII digits; empty or 0 counts as one frame
            if vr not in (None, "IS") or not value.strip(b" \x00").isdigit():
                if value.strip(b" \x00"):
                    raise NotPlain
                found[keyword] = 1
                continue
            found[keyword] = int(value.strip(b" \x00")) or 1
        elif vr in (None, "US") and len(value) == 2:
            found[keyword] = _UNPACK_US(value)[0] or (1 if keyword == "SamplesPerPixel" else 0)
        else:
            raise NotPlain
    expected = found["Rows"] * found["Columns"] * found["SamplesPerPixel"] * found["NumberOfFrames"]
    return (expected * found["BitsAllocated"] + 7) // 8


def _check_pixel_length(ds: FileDataset) -> None:
    """Refuse native pixel data shorter than its header says: pydicom reads a truncated file
    silently, and rewriting it would make the truncation look valid."""
    if "PixelData" not in ds:
        return
    expected_bytes = _expected_pixel_bytes(ds)
    if expected_bytes is None:
        return
    actual = len(ds.PixelData)
    if actual < expected_bytes:
        raise ValueError(f"pixel data is truncated: {actual} of {expected_bytes} bytes")


class Rewrite:
    """A file being anonymized: its dataset to edit, and how to write the edited file.

    Made by :func:`open_for_rewrite`. When nothing needs the pixel data, :attr:`dataset` is a
    header read and :meth:`write` re-encodes only the header, then has the kernel copy the
    pixel data elements from the still-open source: they are nearly all of the bytes, a
    pydicom read and write of them costs more CPU than everything else together, and this way
    they are stored exactly as they came.
    """

    def __init__(
        self,
        dataset: FileDataset,
        source: BinaryIO | None = None,
        tail: tuple[int, int] = (0, 0),
        originals: _Originals | None = None,
    ) -> None:
        self.dataset = dataset
        self._source = source
        self._tail = tail  # (offset, end) of the verbatim pixel data elements in the source
        self._originals = originals
        self._head: bytes | None = None

    @property
    def spliced(self) -> bool:
        """Whether the pixel data is copied verbatim rather than re-encoded by pydicom."""
        return self._source is not None

    def _encoded(self) -> bytes:
        if self._head is None:  # once the scripts have run: the dataset is final by then
            originals = self._originals
            if originals is not None and originals.charset == _charset(self.dataset):
                self._head = _encode_reusing(self.dataset, originals)
            else:
                self._head = encode_dataset(self.dataset)
        return self._head

    def write(self, out: BinaryIO) -> None:
        """Write the whole edited file to ``out``."""
        out.write(self._encoded())
        if self._source is not None:
            out.flush()
            copy_range(self._source.fileno(), out.fileno(), *self._tail)

    def to_bytes(self) -> bytes:
        """The whole edited file in memory (to compare with a file stored earlier)."""
        if self._source is None:
            return self._encoded()
        offset, end = self._tail
        return self._encoded() + os.pread(self._source.fileno(), end - offset, offset)


@contextlib.contextmanager
def open_for_rewrite(path: Path, *, pixels_needed: bool = True) -> Iterator[Rewrite]:
    """Open ``path`` to be edited and written elsewhere; see :class:`Rewrite`.

    The pixel data is left out of the read only when ``pixels_needed`` is false and the file
    is little endian, not deflated, encoded as its transfer syntax says, and holds from its
    pixel data on nothing but whole pixel data elements of the length its header promises.
    Anything else (trailing padding or private groups after the pixels, a truncated or
    mis-encoded file) gets the full read, with its checks and errors.
    """
    if not pixels_needed:
        with open(path, "rb", opener=open_nofollow) as fp:
            with _quiet():
                found = _header_and_pixel_tail(fp)
            if found is not None:
                ds, tail, originals = found
                yield Rewrite(ds, fp, tail, originals)
                return
    yield Rewrite(read_full(path))


def _header_and_pixel_tail(
    fp: BinaryIO,
) -> tuple[FileDataset, tuple[int, int], _Originals] | None:
    """A header read of ``fp``, where its pixel data elements lie and its elements' original
    bytes, or ``None`` when the file must be read whole (see :func:`open_for_rewrite`)."""
    size = os.fstat(fp.fileno()).st_size
    if _peek_transfer_syntax(fp) in (DEFLATED, ExplicitVRBigEndian):
        return None
    fp.seek(0)
    try:
        ds = pydicom.dcmread(_BoundedReader(fp, size), stop_before_pixels=True, force=True)
    except Exception as exc:  # the full read reports it
        deadline.reraise_timeout(exc)
        return None
    offset = fp.tell()
    spans = {**_spans(ds.file_meta, False), **_spans(ds, bool(ds.original_encoding[0]))}
    syntax = ds.file_meta.get("TransferSyntaxUID")
    implicit, little = ds.original_encoding
    try:  # the header is written back as its syntax says; the copied elements must match
        if not little or (syntax is not None and syntax.is_implicit_VR != implicit):
            return None
    except ValueError:  # a transfer syntax pydicom does not know
        return None
    if not _only_pixel_elements(fp, offset, size, bool(implicit), _expected_pixel_bytes_le(ds)):
        return None
    originals = _Originals(
        head=os.pread(fp.fileno(), offset, 0),
        spans=spans,
        elements={
            tag: (elem, elem.VR, _snapshot(elem.value))
            for tag, elem in [*ds.file_meta._dict.items(), *ds._dict.items()]
        },
        charset=_charset(ds),
    )
    return ds, (offset, size), originals


@dataclass(frozen=True, slots=True)
class _Originals:
    """What a header read saw: the bytes before the pixel data, where each top-level element
    (file meta included) lies in them, and each element as read, to tell which ones a script
    left alone."""

    head: bytes
    spans: dict[BaseTag, tuple[int, int]]
    elements: dict[BaseTag, tuple[object, str | None, object]]
    charset: object

    def write(
        self,
        buffer: DicomBytesIO,
        ds: Dataset,
        encodings: object,
        reference: Dataset | None = None,
    ) -> None:
        """Write ``ds``'s elements in tag order: the original bytes of each one left alone,
        pydicom's encoding of the others (sequences always: they change in place).

        ``reference`` is the dataset ``ds`` was copied from to be validated: the copy's
        elements are converted by the validation, not changed, so the original's say which
        ones were left alone."""
        head, spans, before = self.head, self.spans, self.elements
        for tag in sorted(ds._dict):
            if tag.element == 0 and tag.group > 6:  # retired group lengths: pydicom drops them
                continue
            elem = ds._dict[tag]
            current = elem
            if reference is not None and _validated_as_read(elem, reference._dict.get(tag)):
                current = reference._dict[tag]
            seen = before.get(tag)
            span = spans.get(tag)
            if span is not None and left_as_read(seen, current):
                buffer.write(head[span[0] : span[1]])
            else:
                write_element(buffer, ds.get_item(tag), encodings)


def _validated_as_read(elem: object, raw: object) -> bool:
    """Whether the validated copy's ``elem`` still holds the value of ``raw``, the element as
    read: the validation converts elements, and fills in empty required ones (a version, an
    implementation UID), which must then be written as filled in."""
    if elem is raw:
        return True
    if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes):
        return False
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        return value == raw.value
    if isinstance(value, str) and raw.value.isascii():
        return value == raw.value.decode("ascii").rstrip("\x00 ")
    return False


#: Encoded elements by content: the files of a request mostly get the same new values (the
#: subject, the session, the de-identification codes). Per process; only small encodings
#: (a per-frame sequence of an enhanced file is neither small nor shared); emptied when full.
_ENCODED: dict[Hashable, bytes] = {}
_ENCODED_MAX = 4096
_ENCODED_MAX_BYTES = 4096
_SEQUENCE_MAX_ITEMS = 8


def write_element(
    buffer: DicomBytesIO, elem: DataElement | RawDataElement, encodings: object
) -> None:
    """pydicom's ``write_data_element``, remembering the bytes it gives for each content:
    pydicom spends 40-250 µs on each element it encodes, half of a header-only rewrite."""
    key = _element_key(elem, encodings, buffer)
    if key is None:
        write_data_element(buffer, elem, encodings)  # type: ignore[arg-type]
        return
    encoded = _ENCODED.get(key)
    if encoded is None:
        scratch = DicomBytesIO()
        scratch.is_little_endian = buffer.is_little_endian
        scratch.is_implicit_VR = buffer.is_implicit_VR
        write_data_element(scratch, elem, encodings)  # type: ignore[arg-type]
        encoded = scratch.getvalue()
        if len(encoded) <= _ENCODED_MAX_BYTES:  # at most 16 MiB in all
            if len(_ENCODED) >= _ENCODED_MAX:
                _ENCODED.clear()
            _ENCODED[key] = encoded
    buffer.write(encoded)


def _element_key(elem: object, encodings: object, buffer: DicomBytesIO) -> Hashable | None:
    """What pydicom's encoding of ``elem`` depends on, or ``None`` when unsure."""
    if type(elem) is not DataElement:
        return None
    value = _value_key(elem.value)
    charset = _value_key(encodings)
    if value is None or charset is None:
        return None
    return (
        elem.tag, elem.VR, elem.is_undefined_length, value, charset,
        buffer.is_little_endian, buffer.is_implicit_VR,
    )  # fmt: skip


def _value_key(value: object, depth: int = 0) -> Hashable | None:
    """A value's content: its type, its text and the original text pydicom may write back
    (a DS of '1.50' is written so, though it equals 1.5); items of sequences element by
    element. ``None`` for anything else."""
    if depth > 8:
        return None
    if type(value) is float:  # 0.0 == -0.0 and NaNs differ in their bits: key the bits
        return ("float", struct.pack("<d", value))
    if value is None or type(value) in (bytes, str, int):
        return (type(value).__name__, value)
    if isinstance(value, Dataset):
        items: list[Hashable] = [getattr(value, "is_undefined_length_sequence_item", False)]
        for elem in value:
            key = _value_key(elem.value, depth + 1)
            if type(elem) is not DataElement or key is None:
                return None
            items.append((elem.tag, elem.VR, elem.is_undefined_length, key))
        return ("Dataset", tuple(items))
    if isinstance(value, DicomSequence) and len(value) > _SEQUENCE_MAX_ITEMS:
        return None  # per-frame or per-contour data: rarely shared, and costly to key
    if isinstance(value, list | tuple | MultiValue) and len(value) > 64:
        return None  # a table of values (a LUT, contour points): the same
    if isinstance(value, list | tuple | MultiValue | DicomSequence):
        keys = [_value_key(v, depth + 1) for v in value]
        if any(k is None for k in keys):
            return None
        return (type(value).__name__, tuple(keys))
    original = getattr(value, "original_string", None)
    if not isinstance(value, str | int | float | PersonName) or not isinstance(
        original, str | bytes | None
    ):
        return None
    return (type(value).__name__, str(value), original)


def _spans(ds: Dataset, implicit: bool) -> dict[BaseTag, tuple[int, int]]:
    """Where each still-raw element of defined length lies in the file (top level only)."""
    spans = {}
    for tag, raw in ds._dict.items():
        if not isinstance(raw, RawDataElement) or raw.length == 0xFFFFFFFF:
            continue
        vr = (raw.VR or "").encode("ascii", "replace")
        header = 8 if implicit or vr not in LONG_VRS else 12
        spans[tag] = (raw.value_tell - header, raw.value_tell + raw.length)
    return spans


def left_as_read(
    seen: tuple[object, str | None, object] | None, elem: DataElement | RawDataElement
) -> bool:
    """Whether ``elem`` is still the element read as ``seen`` (the element, its VR and a
    snapshot of its value), so its original bytes may be written: never for a sequence,
    which changes in place."""
    return (
        seen is not None
        and seen[0] is elem
        and seen[1] == elem.VR
        and elem.VR != "SQ"
        and seen[2] == _snapshot(elem.value)
    )


def _snapshot(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value  # MultiValue is changed in place


def _charset(ds: Dataset) -> object:
    return _snapshot(ds.get("SpecificCharacterSet"))


def _encode_reusing(ds: FileDataset, originals: _Originals) -> bytes:
    """:func:`encode_dataset` that copies the original bytes of every element a script left
    alone: pydicom spends about 40 µs on each element it writes, most of a rewrite's time.

    Gives the bytes pydicom gives (its file meta fix-ups included) for every element pydicom
    reads and writes back unchanged. Only for files :func:`open_for_rewrite` splices, so the
    file's encoding and character set are the ones written.
    """
    with _quiet():
        _ensure_file_meta(ds)
        meta = FileMetaDataset()  # validation adds to it; not the dataset's own
        meta._dict.update(ds.file_meta._dict)
        validate_file_meta(meta, enforce_standard=True)
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, False
        meta._dict.pop(BaseTag(0x00020000), None)  # written below, with the new length
        originals.write(body, meta, default_encoding, reference=ds.file_meta)
        group = body.getvalue()
        buffer = DicomBytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        buffer.write(struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(group)) + group)
        buffer.is_little_endian = True
        buffer.is_implicit_VR = bool(meta.TransferSyntaxUID.is_implicit_VR)
        originals.write(buffer, ds, ds.get("SpecificCharacterSet", default_encoding))
    ds.preamble = b"\x00" * 128
    return buffer.getvalue()


def _only_pixel_elements(
    fp: BinaryIO, pos: int, size: int, implicit: bool, expected: int | None
) -> bool:
    """Whether ``fp`` holds from ``pos`` to its end only whole pixel data elements, native
    pixel data no shorter than ``expected``."""
    while pos < size:
        fp.seek(pos)
        head = fp.read(12)
        if len(head) < 8:
            return False
        group, element = struct.unpack_from("<HH", head)
        tag = group << 16 | element
        if tag not in PIXEL_TAGS:
            return False
        if implicit:
            (length,) = struct.unpack_from("<I", head, 4)
            pos += 8
        else:
            if head[4:6] not in LONG_VRS or len(head) < 12:
                return False
            (length,) = struct.unpack_from("<I", head, 8)
            pos += 12
        if length == 0xFFFFFFFF:
            end = _end_of_fragments(fp, pos, size)
            if end is None:
                return False
            pos = end
            continue
        if tag == 0x7FE00010 and expected is not None and length < expected:
            return False
        pos += length
    return pos == size


def _end_of_fragments(fp: BinaryIO, pos: int, size: int) -> int | None:
    """Where encapsulated pixel data starting at ``pos`` ends (after its delimiter)."""
    while pos + 8 <= size:
        fp.seek(pos)
        group, element, length = struct.unpack("<HHI", fp.read(8))
        tag = group << 16 | element
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM or length == 0xFFFFFFFF:
            return None
        pos += length
    return None


def encode_dataset(ds: FileDataset) -> bytes:
    """``ds`` as Part 10 bytes, keeping its transfer syntax, with a zeroed preamble.

    The preamble is zeroed because vendors put data there (TIFF headers and more) that no
    anonymization script can see.
    """
    buffer = io.BytesIO()
    ds.preamble = b"\x00" * 128
    with _quiet():  # copying an invalid UID (e.g. '/etc/x') into the meta warns too
        _ensure_file_meta(ds)
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ensure_file_meta(ds: FileDataset) -> None:
    """Give a file read without file meta (no preamble) the meta a Part 10 file needs."""
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if implicit:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRBigEndian
    for media, own in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        own_bytes = _unpadded(ds, _MEDIA_TAGS[own])
        if own_bytes is not None and own_bytes == _unpadded(meta, _MEDIA_TAGS[media]):
            continue  # both still as read, with the same bytes: converting would only cost
        value = getattr(ds, own)
        if _raw_text_is(meta, _MEDIA_TAGS[media], value):
            continue  # still as read, and alike: converting it would only cost time
        if meta.get(media) != value:  # (an assignment validates)
            setattr(meta, media, value)


def _unpadded(ds: Dataset, tag: BaseTag) -> bytes | None:
    """An unconverted element's value bytes without trailing padding, else ``None``."""
    raw = ds._dict.get(tag)
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        return raw.value.rstrip(b"\x00 ")
    return None


def _raw_text_is(ds: Dataset, tag: BaseTag, text: object) -> bool:
    """Whether ``tag`` is still as read and its ASCII bytes (padding aside) are ``text``."""
    value = _unpadded(ds, tag)
    return (
        value is not None
        and value.isascii()
        and isinstance(text, str)
        and value.decode("ascii") == text
    )


def header_of(ds: Dataset) -> DicomHeader:
    """The naming/grouping fields of an in-memory dataset (e.g. after anonymization)."""
    with _quiet():
        return _header_from(ds)
