"""storage.py: safe names, temporary files and their names, copies and moves as the engine
makes them, XNAT's folder layout, temp cleanup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from flask_dicom_inbox.importer import FileStorer, ImportOptions
from flask_dicom_inbox.storage import (
    TEMP_PREFIX,
    FilesystemStorage,
    copy_to_temp,
    make_dirs,
    publish,
    remove_temp_files,
    safe_file_name,
    safe_path_component,
    sync_filesystem,
    write_temp,
)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- safe names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "...", ""])
def test_safe_file_name_never_returns_dots_only_or_empty(name: str) -> None:
    cleaned = safe_file_name(name)
    assert cleaned
    assert cleaned.strip(".") != ""
    assert set(cleaned) == {"_"}


def test_safe_file_name_replaces_slashes() -> None:
    assert safe_file_name("a/b") == "a_b"
    assert safe_file_name("../../etc/passwd") == ".._.._etc_passwd"  # one component
    assert safe_file_name("a\\b") == "a_b"


def test_safe_file_name_replaces_non_ascii() -> None:
    assert safe_file_name("é.dcm") == "_.dcm"


def test_safe_file_name_keeps_word_characters_dots_and_dashes() -> None:
    assert safe_file_name("IM001_00001.dcm") == "IM001_00001.dcm"
    assert safe_file_name("a-b.c") == "a-b.c"


def test_safe_file_name_never_starts_with_temp_prefix() -> None:
    cleaned = safe_file_name(TEMP_PREFIX + "abc")
    assert not cleaned.startswith(TEMP_PREFIX)
    assert cleaned == "_" + TEMP_PREFIX + "abc"


def test_safe_file_name_is_bounded() -> None:
    assert len(safe_file_name("x" * 1000)) <= 255


def test_safe_path_component_uses_fallback_for_empty() -> None:
    assert safe_path_component("  ", "fb") == "fb"
    assert safe_path_component("a.b/c", "fb") == "a_b_c"


# -- temporary files, then a name ------------------------------------------------------------
def _write_atomically(target: Path, write: Any) -> int:
    """What the engine does for one file: a temporary file, a sync, then the name."""
    tmp, size = write_temp(target.parent, write)
    try:
        sync_filesystem(target.parent)
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def test_a_file_is_written_through_a_temp_name_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    def _write(out: BinaryIO) -> None:
        out.write(b"hello ")
        out.write(b"world")

    size = _write_atomically(target, _write)
    assert size == 11
    assert target.read_bytes() == b"hello world"
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_write_temp_removes_its_file_when_the_writer_raises(tmp_path: Path) -> None:
    seen: list[Path] = []

    def _write(out: BinaryIO) -> None:
        out.write(b"partial")
        seen.extend(_temp_files(tmp_path))
        raise RuntimeError("boom mid-write")

    with pytest.raises(RuntimeError, match="boom mid-write"):
        write_temp(tmp_path, _write)
    assert len(seen) == 1  # the write really went through a temporary file
    assert list(tmp_path.iterdir()) == []


def test_publish_refuses_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"original")
    before = target.stat()

    def _write(out: BinaryIO) -> None:
        out.write(b"replacement")

    with pytest.raises(FileExistsError):
        _write_atomically(target, _write)
    assert target.read_bytes() == b"original"
    assert target.stat().st_ino == before.st_ino
    assert _temp_files(tmp_path) == []


# -- copy / move ----------------------------------------------------------------------------
def test_copy_to_temp_is_byte_identical(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(payload)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    target = dest_dir / "copy.bin"
    tmp, size = copy_to_temp(source, dest_dir)
    publish(tmp, target)
    assert size == len(payload)
    assert target.read_bytes() == payload
    assert source.read_bytes() == payload
    assert target.stat().st_ino != source.stat().st_ino  # a real copy, not a hard link
    assert _temp_files(tmp_path) == []


def test_a_copy_refuses_an_existing_target(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"new")
    target = tmp_path / "dst.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        _write_atomically(target, lambda out: out.write(source.read_bytes()))
    assert target.read_bytes() == b"old"
    assert _temp_files(tmp_path) == []


def test_copy_to_temp_refuses_a_symlinked_source(tmp_path: Path) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"secret")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    target = tmp_path / "dest"
    target.mkdir()
    with pytest.raises(OSError):
        copy_to_temp(link, target)
    assert list(target.iterdir()) == []


def _move(source: Path, dest_dir: Path, name: str) -> dict[str, Any]:
    """Store one file the way the engine moves it (cleanupAfterImport=true, no scripts)."""
    st = source.stat()
    options = ImportOptions(
        project_id="p", subject_id=None, expt_label=None, destination="prearchive",
        overwrite="none", rename=False, cleanup=True, keep_root=False,
        max_inflated_bytes=1 << 20, progress_every=10**6,
    )  # fmt: skip
    storer = FileStorer(options=options, anonymization=(), report=_NoProgress())  # type: ignore[arg-type]
    item = {
        "src": str(source), "size": st.st_size, "mtime": st.st_mtime_ns,
        "ino": st.st_ino, "dir": str(dest_dir), "name": name, "label": "l", "subject": "s",
        "study": "1.2",
    }  # fmt: skip
    [result] = storer([item], lambda: None)
    return result


class _NoProgress:
    def add(self, **deltas: int) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_move_keeps_the_same_inode(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    inode = source.stat().st_ino
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    target = dest_dir / "moved.bin"
    assert _move(source, dest_dir, "moved.bin")["how"] == "move"
    assert not source.exists()
    assert target.read_bytes() == b"payload"
    assert target.stat().st_ino == inode
    assert target.stat().st_nlink == 1


def test_a_move_refuses_an_existing_target(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"new")
    target = tmp_path / "dst.bin"
    target.write_bytes(b"old")
    result = _move(source, tmp_path, "dst.bin")
    assert "a different file already exists" in result["e"]
    assert source.read_bytes() == b"new"
    assert target.read_bytes() == b"old"
    assert source.stat().st_nlink == 1


# -- layout ---------------------------------------------------------------------------------
def test_prearchive_layout(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "pre", tmp_path / "arc")
    folder = storage.session_folder("prearchive", "test_proj", "test_exp", "20261128_101500123")
    assert folder == tmp_path / "pre" / "test_proj" / "20261128_101500123" / "test_exp"
    url = storage.session_url("prearchive", "test_proj", "subj", "test_exp", "20261128_101500123")
    assert url == "/prearchive/projects/test_proj/20261128_101500123/test_exp"


def test_archive_layout(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "pre", tmp_path / "arc")
    folder = storage.session_folder("archive", "test_proj", "test_exp", "20261128_101500123")
    assert folder == tmp_path / "arc" / "test_proj" / "arc001" / "test_exp"
    url = storage.session_url("archive", "test_proj", "subj", "test_exp", "20261128_101500123")
    assert url == "/archive/projects/test_proj/subjects/subj/experiments/test_exp"


def test_session_exists_in_prearchive_under_any_timestamp(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "pre", tmp_path / "arc")
    assert storage.session_exists("prearchive", "test_proj", "test_exp") is False
    (tmp_path / "pre" / "test_proj" / "20260101_000000000" / "other").mkdir(parents=True)
    assert storage.session_exists("prearchive", "test_proj", "test_exp") is False
    (tmp_path / "pre" / "test_proj" / "20261128_101500123" / "test_exp").mkdir(parents=True)
    assert storage.session_exists("prearchive", "test_proj", "test_exp") is True
    assert storage.session_exists("archive", "test_proj", "test_exp") is False
    assert storage.session_exists("prearchive", "other_proj", "test_exp") is False


def test_session_exists_in_archive(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "pre", tmp_path / "arc")
    assert storage.session_exists("archive", "test_proj", "test_exp") is False
    (tmp_path / "arc" / "test_proj" / "arc001" / "test_exp").mkdir(parents=True)
    assert storage.session_exists("archive", "test_proj", "test_exp") is True
    assert storage.session_exists("prearchive", "test_proj", "test_exp") is False


# -- folders and leftovers ------------------------------------------------------------------
def test_make_dirs_returns_created_folders_outermost_first(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    assert make_dirs(deep) == [tmp_path / "a", tmp_path / "a" / "b", deep]
    assert deep.is_dir()
    assert make_dirs(deep) == []


def test_remove_temp_files_removes_only_temp_files(tmp_path: Path) -> None:
    nested = tmp_path / "SCANS" / "1" / "DICOM"
    nested.mkdir(parents=True)
    (tmp_path / f"{TEMP_PREFIX}aaa").write_bytes(b"x")
    (nested / f"{TEMP_PREFIX}bbb").write_bytes(b"y")
    keep = [nested / "IM1.dcm", tmp_path / "notes.txt", nested / f"x{TEMP_PREFIX}c"]
    for path in keep:
        path.write_bytes(b"keep")
    assert remove_temp_files(tmp_path) == 2
    assert _temp_files(tmp_path) == []
    assert all(p.read_bytes() == b"keep" for p in keep)
    assert remove_temp_files(tmp_path) == 0


def test_remove_temp_files_on_missing_folder_is_zero(tmp_path: Path) -> None:
    assert remove_temp_files(tmp_path / "missing") == 0


def test_only_files_past_the_threshold_start_their_writeback_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files are left to the batch's one sync (a writeback per small file costs more
    than it saves); large ones start theirs as soon as they are written."""
    from flask_dicom_inbox import storage

    started: list[int] = []  # the inode of each file whose writeback was started
    monkeypatch.setattr(storage, "start_writeback", lambda fd: started.append(os.fstat(fd).st_ino))
    small, _ = storage.write_temp(tmp_path, lambda out: out.write(b"s" * 10_000))
    large, size = storage.write_temp(
        tmp_path, lambda out: out.write(b"l" * storage.WRITEBACK_MIN_BYTES)
    )
    assert size == storage.WRITEBACK_MIN_BYTES
    assert started == [large.stat().st_ino]
    assert small.read_bytes() == b"s" * 10_000
