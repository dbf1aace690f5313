"""archives.py: hostile zip and tar archives are refused or reported, and nothing is ever
written outside the working folder."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.archives import (
    ArchiveLimits,
    ArchiveRefused,
    _Extractor,
    archive_source,
    extract_archive,
    extraction_folder,
    is_archive_name,
    member_parts,
    sniff_archive,
)

from .conftest import tree

NO_LIMITS = ArchiveLimits()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(sandbox, dest)``: dest is the working folder; the sandbox around it must stay as it
    was, so any escape shows up as a new file next to dest."""
    box = tmp_path / "box"
    dest = box / "work" / "dest"
    dest.mkdir(parents=True)
    (box / "work" / "sibling.txt").write_bytes(b"untouched")
    before = tree(box)
    yield box, dest
    after = {
        k: v for k, v in tree(box).items() if not k.startswith("work/dest/") or k == "work/dest/"
    }
    assert after == before, "something was written outside the working folder"


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]], **kw: Any) -> Path:
    with zipfile.ZipFile(path, "w", **kw) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _reasons(report: Any) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report.skipped}


def test_archive_names_are_recognised_in_any_case() -> None:
    for name in ("a.zip", "A.ZIP", "b.tar", "c.tgz", "d.tar.gz", "E.TAR.GZ", "x.Tgz"):
        assert is_archive_name(name), name
    for name in ("a.gz", "a.zip.txt", "folder", "a.dcm", "tar", "a.tar.bz2"):
        assert not is_archive_name(name), name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.dcm", ("a", "b.dcm")),
        ("./a//b.dcm", ("a", "b.dcm")),
        ("a\\b.dcm", ("a", "b.dcm")),
        ("../evil", "'..' in the member name"),
        ("a/../../evil", "'..' in the member name"),
        ("a\\..\\..\\evil", "'..' in the member name"),
        ("/etc/passwd", "absolute member name"),
        ("\\\\server\\share", "absolute member name"),
        ("C:/Windows/evil", "absolute member name"),
        ("c:evil", "absolute member name"),
        ("a\x00b", "NUL byte in the member name"),
        ("./", "empty member name"),
    ],
)
def test_member_names(name: str, expected: object) -> None:
    assert member_parts(name) == expected


def test_zip_tar_and_tgz_extract_and_are_sniffed_by_content(tmp_path: Path) -> None:
    files = [("s/a.dcm", b"A" * 100), ("s/b.dcm", b"B" * 200), ("top.txt", b"t")]
    archives = {
        "zip": _zip(tmp_path / "x.zip", files, compression=zipfile.ZIP_DEFLATED),
        "tar": _tar(tmp_path / "x.tar", list(files)),
        "tgz": _tar(tmp_path / "x.tgz", list(files), "w:gz"),
        "tar.gz": _tar(tmp_path / "x.tar.gz", list(files), "w:gz"),
        # the content decides, not the name
        "renamed": _tar(tmp_path / "really-a-tgz.zip", list(files), "w:gz"),
    }
    for label, archive in archives.items():
        assert sniff_archive(archive) in ("zip", "tar"), label
        dest = tmp_path / f"out-{label}"
        dest.mkdir()
        report = extract_archive(archive, dest, NO_LIMITS)
        assert report.skipped == [], label
        assert (report.files, report.bytes) == (3, 301), label
        assert tree(dest) == {
            "s/": b"",
            "s/a.dcm": b"A" * 100,
            "s/b.dcm": b"B" * 200,
            "top.txt": b"t",
        }, label
        assert stat.S_IMODE(os.stat(dest / "s" / "a.dcm").st_mode) == 0o600


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip" * 40)
    assert sniff_archive(fake) is None
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="neither a zip nor a tar"):
        extract_archive(fake, dest, NO_LIMITS)
    assert tree(dest) == {}


def test_symlinked_archive_is_not_followed(tmp_path: Path) -> None:
    real = _zip(tmp_path / "real.zip", [("a", b"a")])
    link = tmp_path / "link.zip"
    link.symlink_to(real)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(OSError):
        extract_archive(link, dest, NO_LIMITS)
    with pytest.raises(OSError):
        sniff_archive(link)


def test_zip_slip_names_are_skipped_and_nothing_escapes(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    _box, dest = sandbox
    outside = tmp_path / "absolute-target.txt"
    archive = _zip(
        tmp_path / "slip.zip",
        [
            ("../evil.txt", b"x"),
            ("../../evil2.txt", b"x"),
            ("ok/../../evil3.txt", b"x"),
            (str(outside), b"x"),
            ("C:\\evil4.txt", b"x"),
            ("ok\\..\\..\\evil5.txt", b"x"),
            ("ok/good.dcm", b"good"),
        ],
    )
    report = extract_archive(archive, dest, NO_LIMITS)
    assert _reasons(report) == {
        "../evil.txt": "'..' in the member name",
        "../../evil2.txt": "'..' in the member name",
        "ok/../../evil3.txt": "'..' in the member name",
        str(outside): "absolute member name",
        "C:\\evil4.txt": "absolute member name",
        "ok\\..\\..\\evil5.txt": "'..' in the member name",
    }
    assert tree(dest) == {"ok/": b"", "ok/good.dcm": b"good"}
    assert not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "slip.zip"]


def test_tar_path_tricks_links_and_devices_are_skipped(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    box, dest = sandbox
    archive = _tar(
        tmp_path / "tricks.tar",
        [
            ("/abs/evil.txt", b"x"),
            ("../evil.txt", b"x"),
            _special("escape", tarfile.SYMTYPE, str(box / "work")),
            ("escape/through-link.txt", b"via the link"),
            _special("hard", tarfile.LNKTYPE, "/etc/passwd"),
            _special("dev", tarfile.CHRTYPE),
            _special("blk", tarfile.BLKTYPE),
            _special("pipe", tarfile.FIFOTYPE),
            ("kept/image.dcm", b"pixels"),
        ],
    )
    report = extract_archive(archive, dest, NO_LIMITS)
    assert _reasons(report) == {
        "/abs/evil.txt": "absolute member name",
        "../evil.txt": "'..' in the member name",
        "escape": "symlink member",
        "hard": "hardlink member",
        "dev": "device member",
        "blk": "device member",
        "pipe": "FIFO member",
    }
    # The file behind the refused symlink lands in a real folder inside dest, not through it.
    assert tree(dest) == {
        "escape/": b"",
        "escape/through-link.txt": b"via the link",
        "kept/": b"",
        "kept/image.dcm": b"pixels",
    }
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert not (box / "work" / "through-link.txt").exists()


def test_zip_symlink_and_device_members_are_skipped(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    _box, dest = sandbox
    link = zipfile.ZipInfo("link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    fifo = zipfile.ZipInfo("fifo")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o600) << 16
    dev = zipfile.ZipInfo("dev")
    dev.create_system = 3
    dev.external_attr = (stat.S_IFCHR | 0o600) << 16
    archive = _zip(
        tmp_path / "links.zip",
        [(link, b"/etc/passwd"), (fifo, b""), (dev, b""), ("plain.dcm", b"p")],
    )
    report = extract_archive(archive, dest, NO_LIMITS)
    assert _reasons(report) == {
        "link": "symlink member",
        "fifo": "FIFO or socket member",
        "dev": "device member",
    }
    assert tree(dest) == {"plain.dcm": b"p"}


def test_duplicate_names_and_file_folder_clashes_are_skipped(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = _zip(
            tmp_path / "dups.zip",
            [("a.dcm", b"first"), ("a.dcm", b"second"), ("f", b"file"), ("f/inside.dcm", b"x")],
        )
    dest = tmp_path / "out"
    dest.mkdir()
    report = extract_archive(archive, dest, NO_LIMITS)
    assert _reasons(report) == {
        "a.dcm": "a member of the same name was already extracted",
        "f/inside.dcm": "'f' is also the name of a file member",
    }
    assert tree(dest) == {"a.dcm": b"first", "f": b"file"}


def test_nested_archives_are_reported_not_expanded(tmp_path: Path) -> None:
    inner = _zip(tmp_path / "inner.zip", [("deep.dcm", b"deep")])
    inner_tgz = _tar(tmp_path / "inner.tgz", [("deep.dcm", b"deep")], "w:gz")
    dicom_dir = tmp_path / "dicom"
    generated = write_session(dicom_dir, series=1, files_per_series=1, rows=8, columns=8)
    dicom_bytes = generated.files[0].read_bytes()
    archive = _zip(
        tmp_path / "outer.zip",
        [
            ("inner.zip", inner.read_bytes()),
            ("INNER.TAR.GZ", inner_tgz.read_bytes()),
            ("no-suffix", inner.read_bytes()),  # found by content
            ("image.dcm", dicom_bytes),  # a DICOM file is never taken for an archive
        ],
    )
    dest = tmp_path / "out"
    dest.mkdir()
    report = extract_archive(archive, dest, NO_LIMITS)
    assert _reasons(report) == {
        "inner.zip": "nested archive, not expanded",
        "INNER.TAR.GZ": "nested archive, not expanded",
        "no-suffix": "nested archive, not expanded",
    }
    assert tree(dest) == {"image.dcm": dicom_bytes}


def test_zip_bomb_by_ratio_is_refused_from_the_headers(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "bomb.zip", [("zeros.bin", bytes(4 << 20))], compression=zipfile.ZIP_DEFLATED
    )
    assert archive.stat().st_size < 64 * 1024
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="expands more than 100 times"):
        extract_archive(archive, dest, ArchiveLimits(max_ratio=100))
    assert tree(dest) == {}, "a bomb the headers show writes nothing"
    # The same archive passes with the ratio limit off.
    report = extract_archive(archive, dest, ArchiveLimits(max_ratio=0))
    assert report.bytes == 4 << 20


def test_zip_bomb_by_total_size_and_member_count_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "big.zip", [(f"f{i}", b"x" * 800) for i in range(5)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="declares more than the limit of 3000 bytes"):
        extract_archive(archive, dest, ArchiveLimits(max_bytes=3000))
    with pytest.raises(ArchiveRefused, match="more than the limit of 4"):
        extract_archive(archive, dest, ArchiveLimits(max_members=4))
    assert tree(dest) == {}
    assert extract_archive(archive, dest, ArchiveLimits(max_bytes=4000, max_members=5)).files == 5


def test_overlapping_zip_entries_are_caught_by_the_declared_total(tmp_path: Path) -> None:
    """Fifield's bomb: many central-directory entries sharing one compressed blob."""
    blob = bytes(2 << 20)
    archive = _zip(tmp_path / "one.zip", [("a", blob)], compression=zipfile.ZIP_DEFLATED)
    data = bytearray(archive.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    cd_offset = int.from_bytes(data[eocd + 16 : eocd + 20], "little")
    copies = 50
    central = bytes(data[cd_offset:eocd]) * copies  # every entry points at the same data
    end = bytearray(data[eocd:])
    end[8:10] = copies.to_bytes(2, "little")
    end[10:12] = copies.to_bytes(2, "little")
    end[12:16] = len(central).to_bytes(4, "little")
    bomb = tmp_path / "overlap.zip"
    bomb.write_bytes(bytes(data[:cd_offset]) + central + bytes(end))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="declares more than"):
        extract_archive(bomb, dest, ArchiveLimits(max_bytes=20 << 20))
    assert tree(dest) == {}


def test_gzip_bomb_is_stopped_while_streaming(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    """A tar.gz shows its sizes only as it is read: the ratio is watched on the stream."""
    _box, dest = sandbox
    archive = _tar(tmp_path / "bomb.tar.gz", [("zeros.bin", bytes(16 << 20))], "w:gz")
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(ArchiveRefused, match="expands more than 50 times"):
        extract_archive(archive, dest, ArchiveLimits(max_ratio=50))
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written < 4 << 20, f"stopped early, not after writing {written} bytes"


def test_tar_total_size_is_checked_from_each_header_before_writing(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar", [("a", b"a" * 600), ("b", b"b" * 600)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="declares more than the limit of 1000 bytes"):
        extract_archive(archive, dest, ArchiveLimits(max_bytes=1000))
    assert tree(dest) == {"a": b"a" * 600}, "the member over the limit was never opened"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(ArchiveRefused, match="more than the limit of 1 members"):
        extract_archive(archive, fresh, ArchiveLimits(max_members=1))


def test_a_header_that_lies_about_its_size_is_caught_while_streaming(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    extractor = _Extractor(dest, ArchiveLimits(max_bytes=10 << 20), archive_size=1000)
    with pytest.raises(ArchiveRefused, match="more bytes than its header declares"):
        extractor.write("liar.dcm", io.BytesIO(os.urandom(3 << 20)), size=1 << 20)
    assert extractor.report.files == 0
    assert (dest / "liar.dcm").stat().st_size <= 1 << 20, "never more than declared"


@pytest.mark.parametrize("kind", ["zip", "tgz", "tar"])
def test_truncated_archives_fail_with_a_clear_reason(tmp_path: Path, kind: str) -> None:
    files = [(f"f{i}.dcm", os.urandom(40_000)) for i in range(3)]
    if kind == "zip":
        whole = _zip(tmp_path / "t.zip", files)
    else:
        whole = _tar(tmp_path / f"t.{kind}", list(files), "w:gz" if kind == "tgz" else "w")
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="truncated"):
        extract_archive(cut, dest, NO_LIMITS)


def test_corrupt_member_data_fails_the_archive(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "c.zip", [("a.dcm", os.urandom(20_000))], compression=zipfile.ZIP_DEFLATED
    )
    data = bytearray(archive.read_bytes())
    for i in range(100, 400):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveRefused, match="truncated or corrupt"):
        extract_archive(archive, dest, NO_LIMITS)


def _request(rid: int) -> Any:
    return SimpleNamespace(id=rid)


def test_archive_source_uses_a_fresh_private_folder_and_removes_it(
    app: Flask, state: InboxState, tmp_path: Path
) -> None:
    archive = _zip(tmp_path / "s.zip", [("a.dcm", b"a"), ("../bad", b"b")])
    request = state.store.create(
        username="admin",
        handler="inbox",
        project_id="test_proj",
        session_path=str(archive),
        cleanup_after_import=False,
        parameters={},
        options={},
    )
    folder = extraction_folder(state.config, request.id)
    assert folder.parent.parent == state.config.work_path
    folder.mkdir(parents=True)
    (folder / "left-by-a-dead-attempt.dcm").write_bytes(b"old")
    with app.app_context():
        with archive_source(request, state.config, archive) as (root, report):
            assert root == folder
            assert report.files == 1 and len(report.skipped) == 1
            assert tree(root) == {"a.dcm": b"a"}, "a retry starts clean"
            assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert not folder.exists()
        with pytest.raises(RuntimeError, match="engine failed"):
            with archive_source(request, state.config, archive):
                raise RuntimeError("engine failed")
        assert not folder.exists()
    recorded = state.store.get(request.id)
    assert recorded is not None
    assert recorded.errors == [{"path": "../bad", "reason": "'..' in the member name"}] * 2
    assert recorded.progress["filesSkipped"] == 2


def test_refused_archive_leaves_no_working_folder(
    app: Flask, state: InboxState, tmp_path: Path
) -> None:
    archive = _tar(tmp_path / "bomb.tgz", [("z", bytes(8 << 20))], "w:gz")
    app.config["DICOM_INBOX_ARCHIVE_MAX_RATIO"] = 10
    config = type(state.config).from_app(app)
    with app.app_context(), pytest.raises(ArchiveRefused):
        with archive_source(_request(77), config, archive):
            pytest.fail("a bomb never reaches the engine")
    assert not extraction_folder(config, 77).exists()


def test_a_tar_stream_s_memory_does_not_grow_with_its_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tarfile keeps each member's TarInfo even when streaming (about 450 B each: 200,000
    members would hold 90 MB); the extraction drops them as it goes."""
    import tracemalloc

    import flask_dicom_inbox.archives as archives

    members = 4000
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(members):
            info = tarfile.TarInfo(f"s/{i // 1000}/f{i}.dcm")
            tar.addfile(info, io.BytesIO(b""))
    held: dict[int, int] = {}
    write = archives._Extractor.write

    def measured(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.members in (100, members):
            held[self.members] = tracemalloc.get_traced_memory()[0]
        return write(self, *args, **kwargs)

    monkeypatch.setattr(archives._Extractor, "write", measured)
    dest = tmp_path / "out"
    dest.mkdir()
    tracemalloc.start()
    try:
        report = extract_archive(archive, dest, ArchiveLimits())
    finally:
        tracemalloc.stop()
    assert report.files == members
    grown = held[members] - held[100]
    assert grown < 300_000, f"{grown} bytes more held after {members - 100} more members"
