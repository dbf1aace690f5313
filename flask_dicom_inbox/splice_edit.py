"""Anonymize a file without a pydicom read of its header, when the scripts only set a few
top-level text elements (XNAT's default site script is such a script) and delete elements
they name exactly or, unconditionally, by wildcards.

pydicom's read of a CT header builds an object for each of its 100-odd elements; with the
scripts' run and the encoding it was most of the CPU an anonymizing store spends on a file,
and as much as a whole read-modify-write of it. Here :mod:`.raw_header` walks the header's
bytes instead, a pydicom dataset is made of only the elements the scripts read or set (and the
ones the de-identification record sets), the scripts run over it, and the file is written as
its own bytes with those elements replaced or inserted in tag order, then the pixel data
copied by the kernel. :attr:`.dicomedit.Script.top_level_tags` says which scripts give the
same result on such a dataset as on the whole file.

Anything this is not sure of gets :func:`.dicom.open_for_rewrite` instead: a file without
the 128-byte preamble or with file meta pydicom would fix up, a big-endian or deflated one,
elements out of order or of undefined length where the scripts work, a de-identification
sequence already present, anything after the pixel data, a deleted tag's encoding (or one a
wildcard matches) inside a top-level element pydicom's deletion would look into.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.tag import BaseTag
from pydicom.uid import UID

from . import raw_header
from .anon_scripts import ScriptStep
from .dicom import (
    _LITTLE_ENDIAN_SYNTAXES,
    GEOMETRY_TAGS,
    HEADER_TAGS,
    MEDIA_STORAGE_DIRECTORY,
    DicomHeader,
    NotPlain,
    _only_pixel_elements,
    _snapshot,
    header_from_raw,
    left_as_read,
    native_pixel_bytes,
    write_element,
)
from .dicomedit import TagPath, may_nest, tag_pattern
from .raw_header import LONG_VRS
from .storage import copy_range, open_nofollow

_CHARSET = 0x00080005
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
#: What :func:`.dicomedit.record_deidentification` sets.
_IDENTITY_REMOVED, _DEID_SEQUENCE = 0x00120062, 0x00120064
#: The file meta elements pydicom's write would add when missing (or refuse without).
#: What every plan works on: the character set, and what the de-identification record sets.
_ALWAYS_WORKED_ON = frozenset({_CHARSET, _IDENTITY_REMOVED, _DEID_SEQUENCE})
_REQUIRED_META = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012)
_MEDIA_UIDS = {0x00020002: _SOP_CLASS, 0x00020003: _SOP_INSTANCE}
_PREAMBLE = b"\x00" * 128 + b"DICM"
_BLANK = b"\x00 \t\n\r\x0b\x0c"
_FIRST_READ = 16 * 1024  # a CT header is 2-10 KB
_MAX_HEADER_READ = 8 * 2**20
_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_U16 = struct.Struct("<H").unpack_from
_UNPACK_U32 = struct.Struct("<I").unpack_from


@dataclass(frozen=True)
class SplicePlan:
    """The steps of a request whose every script sets only top-level text elements."""

    #: Each step's script id and text: plans with the same are equal (the scripts' results
    #: are remembered by plan, and each chunk of a request makes its own).
    key: tuple[tuple[str, str], ...]
    steps: tuple[ScriptStep, ...] = field(compare=False)
    #: The elements the scripts and the de-identification record set, and the character
    #: set they are decoded and encoded in.
    tags: frozenset[int] = field(compare=False)
    #: What the walk keeps the values of: those, the header's and the pixel geometry's.
    wanted: frozenset[int] = field(compare=False)
    #: The tags the scripts delete by name.
    deleted: frozenset[int] = field(compare=False, default=frozenset())
    #: Of those, the ones no script sets: their values do not change the scripts' result.
    only_deleted: frozenset[int] = field(compare=False, default=frozenset())
    #: The wildcard deletions, each as ``(mask, value)``: a tag ``t`` matches when
    #: ``t & mask == value``. They match none of ``wanted``, so they delete whole top-level
    #: elements the scripts' run never sees.
    wildcards: tuple[tuple[int, int], ...] = field(compare=False, default=())
    #: The encodings of every deleted tag and of every tag a wildcard matches, as one
    #: pattern (``None`` when nothing is deleted).
    deletions: re.Pattern[bytes] | None = field(compare=False, default=None)

    @classmethod
    def of(cls, steps: Sequence[object]) -> SplicePlan | None:
        """The plan for ``steps``, or ``None`` when a step is not a script whose tags are
        known (a host's own step, a script that hashes, reads tags or removes private
        tags), or a wildcard deletion may match an element the plan works on or reads."""
        tags = set(_ALWAYS_WORKED_ON)
        deleted: set[int] = set()
        wildcards: list[TagPath] = []
        chosen: list[ScriptStep] = []
        for step in steps:
            if type(step) is not ScriptStep or step.needs_pixel_data:  # not a subclass's apply
                return None
            named = step.script.top_level_tags
            if named is None:
                return None
            tags.update(named)
            deleted.update(step.script.top_level_deletions)
            wildcards.extend(step.script.top_level_wildcards)
            chosen.append(step)
        geometry = {int(tag) for tag in GEOMETRY_TAGS.values()}
        wanted = tags | geometry | set(HEADER_TAGS) | {_SOP_CLASS, _SOP_INSTANCE}
        masks = tuple(dict.fromkeys(path.masks[0] for path in wildcards))
        if any(tag & mask == value for mask, value in masks for tag in wanted):
            return None
        encodings = [re.escape(struct.pack("<HH", tag >> 16, tag & 0xFFFF)) for tag in deleted]
        encodings += [tag_pattern(mask, value, True).pattern for mask, value in masks]
        key = tuple((step.script_id, step.script.source) for step in chosen)
        set_anywhere = {tag for step in chosen for tag in step.script.top_level_sets}
        return cls(
            key,
            tuple(chosen),
            frozenset(tags),
            frozenset(wanted),
            frozenset(deleted),
            frozenset(deleted - set_anywhere - _ALWAYS_WORKED_ON),
            masks,
            re.compile(b"|".join(sorted(set(encodings)))) if encodings else None,
        )


class SplicedEdit:
    """A file anonymized by :func:`open_spliced_edit`: its new header bytes (preamble to the
    pixel data), where the pixel data lies in the still-open source, and the new header's
    grouping fields."""

    def __init__(
        self, head: bytes, source: BinaryIO, tail: tuple[int, int], header: DicomHeader
    ) -> None:
        self.head = head
        self.header = header
        self._source = source
        self._tail = tail

    def write(self, out: BinaryIO) -> None:
        """Write the whole edited file to ``out``."""
        out.write(self.head)
        out.flush()
        copy_range(self._source.fileno(), out.fileno(), *self._tail)

    def to_bytes(self) -> bytes:
        """The whole edited file in memory (to compare with a file stored earlier)."""
        offset, end = self._tail
        return self.head + os.pread(self._source.fileno(), end - offset, offset)


@contextlib.contextmanager
def open_spliced_edit(
    path: Path, plan: SplicePlan, variables: Mapping[str, str]
) -> Iterator[SplicedEdit | None]:
    """Run ``plan``'s scripts over ``path`` by splicing; ``None`` when this file must get
    :func:`.dicom.open_for_rewrite` (see the module's docstring). A script's error (a value
    its element's VR refuses) is raised as the full rewrite would raise it."""
    with open(path, "rb", opener=open_nofollow) as fp:
        yield _edit(fp, plan, variables)


def _edit(fp: BinaryIO, plan: SplicePlan, variables: Mapping[str, str]) -> SplicedEdit | None:
    fd = fp.fileno()
    size = os.fstat(fd).st_size
    data = os.pread(fd, _FIRST_READ, 0)
    meta = _meta(data)
    if meta is None:
        return None
    meta_end, meta_values = meta
    implicit = _LITTLE_ENDIAN_SYNTAXES.get(_text(meta_values[0x00020010]))
    if implicit is None or _text(meta_values[0x00020002]) == MEDIA_STORAGE_DIRECTORY:
        return None
    walked = _walk(fd, data, meta_end, size, implicit, plan.wanted)
    if walked is None:
        return None
    data, found, spans = walked
    if not _sorted_and_plain(spans, plan.tags, found) or _DEID_SEQUENCE in found:
        return None
    if _holds_what_a_run_converts(data, spans, implicit):
        return None
    for media, own in _MEDIA_UIDS.items():  # else pydicom's write would set the meta's UID
        if meta_values[media].rstrip(b"\x00 ") != found.get(own, b"").rstrip(b"\x00 "):
            return None
    pixel_start = spans[-1][2] if spans else meta_end
    wild = {t for t, _s, _e in spans for m, v in plan.wildcards if t & m == v}
    if plan.deletions is not None and _may_delete_inside(
        data, spans, implicit, plan.deletions, wild
    ):
        return None
    try:
        expected = _expected_pixel_bytes(found, spans, data, implicit, meta_values[0x00020010])
    except NotPlain:
        return None
    if not _only_pixel_elements(fp, pixel_start, size, implicit, expected):
        return None
    only_deleted = plan.only_deleted  # (held as empty: one run serves every value)
    worked_on = tuple(
        (tag, None if implicit else _vr_at(data, start), b"" if tag in only_deleted else found[tag])
        for tag, start, _end in spans
        if tag in plan.tags
    )
    run = _run_scripts if sum(len(v) for _t, _vr, v in worked_on) <= _MEMO_MAX_BYTES else _run
    changed = run(plan, implicit, worked_on, tuple(sorted(variables.items())))
    if changed is None:
        return None
    if wild:  # (no script reads or sets them: the plan has none of them in its run)
        changed = {**changed, **dict.fromkeys(wild, (b"", None))}
    values = {**found, **{tag: value for tag, (_encoded, value) in changed.items()}}
    header = header_from_raw({tag: v for tag, v in values.items() if v is not None})
    if header is None:
        return None
    head = _spliced(data, meta_end, spans, changed)
    return SplicedEdit(head, fp, (pixel_start, size), header)


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ")


def _meta(data: bytes) -> tuple[int, dict[int, bytes]] | None:
    """Where the file meta ends and its values, when the file has the preamble and file meta
    that pydicom's write would keep as they are: a group length that is right, the required
    elements present and not empty, in tag order."""
    if data[128:132] != b"DICM":
        return None
    pos, values, last = 132, {}, -1
    while pos + 8 <= len(data):
        group, element = _UNPACK_TAG(data, pos)
        if group != 0x0002:
            break
        tag = group << 16 | element
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                return None
            (length,) = _UNPACK_U32(data, pos + 8)
            start = pos + 12
        else:
            (length,) = _UNPACK_U16(data, pos + 6)
            start = pos + 8
        if tag <= last or length == 0xFFFFFFFF or start + length > len(data):
            return None
        values[tag] = data[start : start + length]
        last, pos = tag, start + length
    group_length = values.get(0x00020000)
    if group_length is None or len(group_length) != 4 or data[136:138] != b"UL":
        return None
    if _UNPACK_U32(group_length)[0] != pos - 144:
        return None
    if any(not values.get(tag, b"").strip(_BLANK) for tag in _REQUIRED_META):
        return None  # (pydicom's conversion strips whitespace and NULs, then sees it empty)
    if 0x00020013 not in values:  # pydicom's write adds its own implementation version
        return None
    return pos, values


def _walk(
    fd: int, data: bytes, start: int, size: int, implicit: bool, wanted: frozenset[int]
) -> tuple[bytes, dict[int, bytes], list[tuple[int, int, int]]] | None:
    """The data set's top-level elements' spans and the ``wanted`` values, reading more of
    the file once if the header is longer than the first read (an element the walk skips
    may end past it: the last one of a file without pixel data)."""
    for attempt in range(2):
        spans: list[tuple[int, int, int]] = []
        try:
            found = raw_header.walk(
                data, start, size, implicit=implicit, wanted=wanted, spans=spans
            )
            if spans and spans[-1][2] > len(data):
                raise raw_header.NeedMore
        except raw_header.NeedMore:
            if attempt or size > _MAX_HEADER_READ:
                return None
            data = os.pread(fd, size, 0)
            continue
        return None if found is None else (data, found, spans)
    return None


def _sorted_and_plain(
    spans: Sequence[tuple[int, int, int]], tags: frozenset[int], found: Mapping[int, bytes]
) -> bool:
    """Elements in tag order, and every one the scripts work on of defined length."""
    last = -1
    for tag, _start, _end in spans:
        if tag <= last or (tag in tags and tag not in found):
            return False
        last = tag
    return True


def _may_delete_inside(
    data: bytes,
    spans: Sequence[tuple[int, int, int]],
    implicit: bool,
    deletions: re.Pattern[bytes],
    wild: set[int],
) -> bool:
    """Whether a deletion may reach inside a top-level element: the bytes after the tag of
    an element that may hold elements (:func:`.dicomedit.may_nest`) hold ``deletions`` (a
    deleted tag's encoding, or one a wildcard matches). Elsewhere such bytes are values,
    which the deletion neither converts nor looks into
    (:meth:`.dicomedit._Run._delete_everywhere`); an element a wildcard deletes goes whole."""
    for tag, start, end in spans:
        if tag in wild or not _nests(data, tag, start, implicit):
            continue
        if deletions.search(data, start + 4, end) is not None:
            return True
    return False


def _nests(data: bytes, tag: int, start: int, implicit: bool) -> bool:
    """:func:`.dicomedit.may_nest` of the top-level element at ``start``."""
    if implicit:
        return may_nest(tag, None, _UNPACK_U32(data, start + 4)[0])
    vr = data[start + 4 : start + 6]
    # Only a 4-byte length can be undefined (0xFFFFFFFF), the one length may_nest looks at.
    length = _UNPACK_U32(data, start + 8)[0] if vr in LONG_VRS else 0
    return may_nest(tag, vr.decode("latin-1"), length)


_ITEM_LE = struct.pack("<HH", 0xFFFE, 0xE000)
_UN_HEADER = b"UN\x00\x00"


def _holds_what_a_run_converts(
    data: bytes, spans: Sequence[tuple[int, int, int]], implicit: bool
) -> bool:
    """Whether a script's run over the whole file would convert an element the splice would
    copy as it is: before it runs, :func:`.dicomedit._expand_un_sequences` converts every
    top-level element whose bytes start with an item, and parses private UN elements that
    hold items as sequences, nested ones too (a conversion that can also fail).

    So: a top-level element that starts with an item but is not a sequence, and in an
    explicit VR file any UN element inside a top-level sequence (looked for as bytes: a
    text value that happens to hold them only sends the file to the pydicom path). Elements
    a wildcard deletes too: the run converts them before any script deletes them (and such a
    conversion can fail the file).
    """
    for tag, start, end in spans:
        if implicit:
            value_start = start + 8
            if data[value_start : value_start + 4] == _ITEM_LE and not _known_sequence(tag):
                return True
            continue
        vr = data[start + 4 : start + 6]
        long_vr = vr in LONG_VRS  # (only these have a 4-byte length, or room to read one)
        value_start = start + (12 if long_vr else 8)
        sequence = vr == b"SQ" or (long_vr and _UNPACK_U32(data, start + 8)[0] == 0xFFFFFFFF)
        if sequence:
            if vr == b"SQ" and _UN_HEADER in data[value_start:end]:
                return True
            if vr != b"SQ":  # UN of undefined length: pydicom reads it as a sequence
                return True
        elif data[value_start : value_start + 4] == _ITEM_LE:
            return True
    return False


@functools.lru_cache(maxsize=1024)
def _known_sequence(tag: int) -> bool:
    try:
        return not BaseTag(tag).is_private and dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _expected_pixel_bytes(
    found: Mapping[int, bytes],
    spans: Sequence[tuple[int, int, int]],
    data: bytes,
    implicit: bool,
    syntax: bytes,
) -> int | None:
    """The length the native pixel data must have; ``None`` for compressed pixel data (its
    fragments are walked instead); :class:`.dicom.NotPlain` when a geometry element needs
    pydicom."""
    if _compressed(_text(syntax)):
        return None
    starts = {tag: start for tag, start, _end in spans}

    def raw_of(tag: BaseTag) -> tuple[str | None, bytes] | None:
        value = found.get(int(tag))
        if value is None:
            if int(tag) in starts:  # of undefined length
                raise NotPlain
            return None
        return None if implicit else _vr_at(data, starts[int(tag)]), value

    return native_pixel_bytes(raw_of)


@functools.lru_cache(maxsize=64)
def _compressed(syntax: str) -> bool:
    return UID(syntax).is_compressed


def _vr_at(data: bytes, start: int) -> str:
    return data[start + 4 : start + 6].decode("ascii")


#: The scripts' results are remembered only for elements this small in all (a script may
#: name a long text element).
_MEMO_MAX_BYTES = 16 * 1024


def _run(
    plan: SplicePlan,
    implicit: bool,
    worked_on: tuple[tuple[int, str | None, bytes], ...],
    variables: tuple[tuple[str, str], ...],
) -> Mapping[int, tuple[bytes, bytes | None]] | None:
    """Run the scripts over a dataset of the elements they work on (``(tag, VR, value
    bytes)`` each, the VR ``None`` in an implicit VR file); the encoding of each one they
    set or added (tag: ``(element bytes, value bytes)``), in tag order, and ``(b"", None)``
    for each one they deleted.

    Remembered: the result depends on nothing else, and the files of a session mostly hold
    the same values in these elements, so one run serves the whole session.
    """
    ds = Dataset()
    for tag, vr, value in worked_on:  # (where the value lies in the file is not needed)
        ds._dict[BaseTag(tag)] = RawDataElement(
            BaseTag(tag), vr, len(value), value, 0, implicit, True
        )
    with warnings.catch_warnings():  # pydicom warns as it converts invalid values
        warnings.simplefilter("ignore")
        ds.set_original_encoding(implicit, True, ds._character_set)  # as pydicom's read does
        before = {tag: (elem, elem.VR, _snapshot(elem.value)) for tag, elem in ds._dict.items()}
        for step in plan.steps:
            step.apply(ds, dict(variables))
        encodings = ds.get("SpecificCharacterSet", default_encoding)
        changed: dict[int, tuple[bytes, bytes | None]] = {
            int(tag): (b"", None) for tag in before if tag not in ds._dict
        }
        for tag in sorted(ds._dict):
            elem = ds._dict[tag]
            if int(tag) in plan.only_deleted or left_as_read(before.get(tag), elem):
                continue  # its bytes stay (one only deleted is held as empty: not deleted)
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
            write_element(buffer, ds.get_item(tag), encodings)
            encoded = buffer.getvalue()
            offset = 8 if implicit or encoded[4:6] not in LONG_VRS else 12
            if int(tag) in HEADER_TAGS and not _written_as_text(encoded[offset:], elem.value):
                return None  # the header would be read from what pydicom wrote, not the value
            changed[int(tag)] = (encoded, encoded[offset:])
    return MappingProxyType(changed)


_run_scripts = functools.lru_cache(maxsize=256)(_run)


def _written_as_text(value: bytes, text: object) -> bool:
    """Whether ``value`` (an element's encoding) reads as the header's text of the element's
    value (as :func:`.dicom.header_of` takes it): not so for a character pydicom could only
    replace as it encoded it."""
    if not value.isascii():
        return False
    if text is None:
        expected = ""
    elif isinstance(text, bytes):
        expected = text.decode("ascii", "replace")
    else:
        expected = str(text)
    return value.decode("ascii").strip("\x00 ") == expected.strip("\x00 ")


def _spliced(
    data: bytes,
    meta_end: int,
    spans: Sequence[tuple[int, int, int]],
    changed: Mapping[int, tuple[bytes, bytes | None]],
) -> bytes:
    """The new file up to its pixel data: a zeroed preamble, the file meta as it was, and the
    data set's elements in tag order, each as it was unless the scripts changed or added it.
    Retired group lengths are left out, as pydicom's write leaves them out."""
    parts = [_PREAMBLE, data[132:meta_end]]
    new = sorted(changed)
    i = 0
    for tag, start, end in spans:
        while i < len(new) and new[i] < tag:
            parts.append(changed[new[i]][0])
            i += 1
        if i < len(new) and new[i] == tag:
            parts.append(changed[tag][0])
            i += 1
        elif tag & 0xFFFF or tag >> 16 <= 6:
            parts.append(data[start:end])
    parts.extend(changed[tag][0] for tag in new[i:])
    return b"".join(parts)
