"""Seeded generator of realistic CT sessions for the benchmarks.

``python benchmarks/generate.py OUT --files 2000`` writes 512x512 16-bit CT instances spread over
several series (and optionally several studies) in nested folders, as scanners export them:
``OUT/study01/series003/part02/IM003_00042.dcm``. The same arguments give byte-identical files.

Fast: one template dataset built with ``example_app.demo.make_dataset`` is re-used, only UIDs,
numbers, positions and a slice of a seeded random pixel pool change per file, and pydicom writes it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydicom.uid import UID  # noqa: E402

from example_app.demo import _uid, make_dataset  # noqa: E402

#: Written last into a finished folder; its content says which arguments made it.
MARKER = ".bench-generated.json"


@dataclass(frozen=True)
class GeneratedSet:
    """What :func:`generate` wrote (also stored as the folder's marker)."""

    files: int
    bytes: int
    studies: int
    series: int
    rows: int
    columns: int
    seed: int
    files_per_folder: int


def generate(
    out: Path,
    files: int,
    *,
    seed: int = 5,
    studies: int = 1,
    series: int = 8,
    rows: int = 512,
    columns: int = 512,
    files_per_folder: int = 100,
) -> GeneratedSet:
    """Write ``files`` CT instances under ``out`` (re-used when a matching set is there already).

    Files are dealt round-robin to ``studies`` x ``series`` series; each series folder is split
    into ``part`` sub-folders of at most ``files_per_folder`` files.
    """
    wanted = {
        "files": files,
        "studies": studies,
        "series": series,
        "rows": rows,
        "columns": columns,
        "seed": seed,
        "files_per_folder": files_per_folder,
    }
    marker = out / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in wanted} == wanted:
            return GeneratedSet(**{k: done[k] for k in GeneratedSet.__dataclass_fields__})
        raise SystemExit(f"{out} holds a different generated set ({done}); remove it first")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty and was not made by this generator")

    rng = random.Random(seed)
    frame = rows * columns * 2
    # A pool of random pixels; each file takes a different window of it (cheap, not all equal).
    pool = rng.randbytes(frame * 2)
    template = make_dataset(
        study_uid="1.2",
        series_uid="1.2",
        sop_uid="1.2",
        series_number=1,
        instance_number=1,
        rows=rows,
        columns=columns,
        rng=rng,
    )
    n_series = max(1, studies) * max(1, series)
    counters = [0] * n_series
    written = 0
    for k in range(files):
        slot = k % n_series
        study, ser = divmod(slot, max(1, series))
        counters[slot] += 1
        inst = counters[slot]
        study_uid = _uid(seed, "study", study)
        series_uid = _uid(seed, "series", study, ser)
        sop_uid = _uid(seed, "sop", study, ser, inst)
        ds = template
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.FrameOfReferenceUID = _uid(seed, "for", study)
        ds.PatientName = f"Bench^Patient{study + 1:02d}"
        ds.PatientID = f"BENCH{seed:03d}{study + 1:02d}"
        ds.AccessionNumber = f"ACC{seed:03d}{study + 1:02d}"
        ds.SeriesNumber = ser + 1
        ds.SeriesDescription = f"Axial {ser + 1}"
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = [0, 0, float(inst)]
        start = (inst * 2 * 997 + ser * 131) % frame
        ds.PixelData = pool[start : start + frame]
        folder = (
            out
            / f"study{study + 1:02d}"
            / f"series{ser + 1:03d}"
            / f"part{(inst - 1) // files_per_folder + 1:02d}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"IM{ser + 1:03d}_{inst:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written += path.stat().st_size
    result = GeneratedSet(
        files=files,
        bytes=written,
        studies=studies,
        series=series,
        rows=rows,
        columns=columns,
        seed=seed,
        files_per_folder=files_per_folder,
    )
    marker.write_text(json.dumps(asdict(result)))
    return result


def dicom_files(folder: Path) -> list[Path]:
    """The generated files under ``folder`` (the marker excluded), sorted."""
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--studies", type=int, default=1)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--files-per-folder", type=int, default=100)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    made = generate(
        args.out,
        args.files,
        seed=args.seed,
        studies=args.studies,
        series=args.series,
        rows=args.rows,
        columns=args.columns,
        files_per_folder=args.files_per_folder,
    )
    print(
        f"{made.files} files, {made.bytes / 1e6:.1f} MB in {args.out} "
        f"({time.perf_counter() - t0:.1f} s)"
    )


if __name__ == "__main__":
    main()
