"""Generate realistic DICOM sessions with pydicom, for the demo, the tests and the benchmarks.

Seeded: the same arguments give byte-identical files (UIDs are derived from the seed).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.10.1457."


def _uid(*parts: object) -> str:
    """A deterministic UID under our root from ``parts``."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return (UID_ROOT + str(int(digest[:24], 16)))[:64]


@dataclass(frozen=True)
class GeneratedSession:
    study_instance_uid: str
    files: list[Path]


def make_dataset(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance_number: int,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID0001",
    rows: int = 64,
    columns: int = 64,
    rng: random.Random | None = None,
) -> Dataset:
    """A CT image instance with random 16-bit pixels and the usual identifying elements."""
    rng = rng or random.Random(0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(study_uid, "for")
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDescription = "Demo CT"
    ds.SeriesDescription = f"Series {series_number}"
    ds.InstitutionName = "Demo Hospital"
    ds.ReferringPhysicianName = "Smith^John"
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, float(instance_number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = rng.randbytes(rows * columns * 2)
    return ds


def write_session(
    folder: Path,
    *,
    series: int = 2,
    files_per_series: int = 5,
    seed: int = 0,
    rows: int = 64,
    columns: int = 64,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID0001",
    nested: bool = True,
) -> GeneratedSession:
    """Write one study of ``series`` x ``files_per_series`` files under ``folder``.

    With ``nested`` each series lands in its own sub-folder, as scanners export them.
    """
    rng = random.Random(seed)
    study_uid = _uid(seed, "study")
    written: list[Path] = []
    for s in range(1, series + 1):
        series_uid = _uid(seed, "series", s)
        target = folder / f"series{s:03d}" if nested else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(1, files_per_series + 1):
            ds = make_dataset(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=_uid(seed, "sop", s, i),
                series_number=s,
                instance_number=i,
                patient_name=patient_name,
                patient_id=patient_id,
                rows=rows,
                columns=columns,
                rng=rng,
            )
            path = target / f"IM{s:03d}_{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return GeneratedSession(study_instance_uid=study_uid, files=written)
