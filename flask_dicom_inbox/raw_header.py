"""A walk over the raw bytes of a little-endian data set for the few elements grouping needs.

Reading headers is the floor of every import (a move is little more than a header read per
file), and pydicom's parse of a whole header costs about 0.4 ms for a CT file because it builds
an element object for each of its elements. This walk only reads tags and lengths, skips
values and sequences, and keeps the bytes of the top-level elements asked for: several times
faster. It *declines* (returns ``None``) on anything it is not sure of, and the caller then
reads the file with pydicom, whose checks and error messages apply: values that need a
character set or hold several values, elements running past the end of the file, malformed or
deeply nested sequences, a DICOMDIR, a VR that is not a VR.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

#: The tags pydicom stops a header read at; also used by dicom.py's rewrite checks.
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_DIRECTORY_RECORDS = 0x00041220
ITEM, _ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 8
#: Explicit VRs with a reserved field and a 4-byte length.
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_U16 = struct.Struct("<H").unpack_from
_UNPACK_U32 = struct.Struct("<I").unpack_from


class _Decline(Exception):
    """Not a file this walk is sure of."""


class NeedMore(Exception):
    """The header runs past the bytes read so far."""


def walk(
    data: bytes,
    start: int,
    size: int,
    *,
    implicit: bool,
    wanted: Collection[int],
    spans: list[tuple[int, int, int]] | None = None,
) -> dict[int, bytes] | None:
    """The raw values of the ``wanted`` top-level tags present in the data set that starts at
    ``start`` of ``data`` (the first bytes of a file of ``size`` bytes), read up to its pixel
    data or its end.

    ``spans``, when given, receives ``(tag, start, end)`` of every top-level element walked,
    in file order: where each element's bytes lie, its tag and length included. The last
    end is where the pixel data (or the end of the file) starts.

    ``None`` when the walk declines; :class:`NeedMore` when ``data`` ends before the header
    does (read more of the file and call again).
    """
    if implicit and len(data) >= start + 6 and data[start + 4 : start + 6] in _SHORT_VRS:
        return None  # says implicit, looks explicit: pydicom knows how to guess
    found: dict[int, bytes] = {}
    try:
        _walk(data, start, size, implicit, 0, found, wanted, spans)
    except _Decline:
        return None
    return found


def _walk(
    data: bytes,
    pos: int,
    size: int,
    implicit: bool,
    depth: int,
    found: dict[int, bytes] | None,
    wanted: Collection[int],
    spans: list[tuple[int, int, int]] | None = None,
) -> int:
    """Walk elements from ``pos``: at the top level (``found`` given) to the pixel data or the
    end of the file; inside a sequence item of undefined length, to its delimiter."""
    end = len(data)
    while True:
        if pos >= size:
            if found is None:
                raise _Decline  # an item that never ends
            return pos
        if pos + 8 > end:
            raise NeedMore
        group, element = _UNPACK_TAG(data, pos)
        tag = group << 16 | element
        if found is not None:
            if tag in PIXEL_TAGS:
                return pos
            if group == 0x0002 or tag == _DIRECTORY_RECORDS:
                raise _Decline  # file meta inside the data set; a DICOMDIR
        elif tag == _ITEM_END:
            return pos + 8
        element_start = pos
        if implicit:
            (length,) = _UNPACK_U32(data, pos + 4)
            vr = b""
            pos += 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise NeedMore
                (length,) = _UNPACK_U32(data, pos + 8)
                pos += 12
            elif vr in _SHORT_VRS:
                (length,) = _UNPACK_U16(data, pos + 6)
                pos += 8
            else:
                raise _Decline
        if length == _UNDEFINED:
            if not implicit and vr not in (b"SQ", b"UN"):
                raise _Decline
            pos = _skip_sequence(data, pos, size, implicit, depth + 1, wanted)
            if spans is not None and found is not None:
                spans.append((tag, element_start, pos))
            continue
        if pos + length > size:
            raise _Decline  # runs past the end of the file: pydicom's read says so
        if found is not None and tag in wanted:
            if pos + length > end:
                raise NeedMore
            found[tag] = data[pos : pos + length]
        pos += length
        if spans is not None and found is not None:
            spans.append((tag, element_start, pos))


def _skip_sequence(
    data: bytes, pos: int, size: int, implicit: bool, depth: int, wanted: Collection[int]
) -> int:
    """Past a sequence of undefined length: its items, then its delimiter."""
    if depth > _MAX_DEPTH:
        raise _Decline
    while True:
        if pos + 8 > size:
            raise _Decline
        if pos + 8 > len(data):
            raise NeedMore
        group, element = _UNPACK_TAG(data, pos)
        (length,) = _UNPACK_U32(data, pos + 4)
        tag = group << 16 | element
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise _Decline
        if length == _UNDEFINED:
            pos = _walk(data, pos, size, implicit, depth, None, wanted)
        else:
            pos += length
