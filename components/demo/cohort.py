"""The embedded default dataset: a deterministic synthetic CT cohort written as real DICOM files.

Each patient has `images_per_patient` 2D axial abdominal slices in Hounsfield units (HU): a body
ellipse (soft tissue ~40 HU inside a subcutaneous fat ring ~-100 HU, air -1000 HU outside) with
liver, spleen, stomach (gas cap over food), kidneys, aorta, vena cava, spine, bowel gas and
irregular mesenteric fat. Labels are patient-level (`normal`, `lesion`; `lesion` is the finding):
every slice of a `lesion` patient cuts through one to three focal lesions, round and soft-edged,
mostly in the liver: fat-like/necrotic hypodense ones (-90 to -40 HU), some with an enhancing
rim, or calcified/haemorrhagic hyperdense ones (200 to 320 HU); about one patient in eight has only
small, low-contrast ("subtle") lesions. Both classes carry benign look-alikes (punctate
calcifications, in-plane vessels, fluid-filled bowel loops, gas) and the lesion densities overlap
those of fat and bone, whose amounts vary between patients, so whole-image intensity histograms
separate the classes only partly (a linear model on them reached AUC ~0.5-0.9 on 60-patient
splits) while a small CNN trained for 15 epochs on the default cohort reached ~0.9-1.0.

Patients come from three sites whose scanners differ in vendor, noise level, reconstruction
sharpness and a small calibration offset, so `site`/`scanner` are meaningful subgroups. Labels
are stratified by site (same positive fraction everywhere) and independent of sex and age.

The headers carry realistic but FAKE identifiers (names, MRNs, birth dates, accession numbers,
institutions, physicians, device serials, free-text comments, a private tag, UIDs) so that
de-identification can be tested end to end; `identifiers.json` lists them. Nothing here belongs to a
real person.

Layout of `out_dir`::

    site-a/case-000/0.dcm ...   (folder names carry neither patient name nor id)
    labels.csv                  (path relative to out_dir, label: normal | lesion)
    identifiers.json            (the fake identifier strings, for leak tests)

Same config, same bytes: every random draw comes from `numpy.random.default_rng` seeded by
`cfg.seed` (one stream for the cohort plan, one per patient), UIDs are derived from the seed, and
no clock is read.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from components.config import CohortConfig
from components.demo.anatomy import patient_images

CLASS_NAMES: tuple[str, str] = ("normal", "lesion")  # index 1 is the finding
RESCALE_INTERCEPT = -1024.0  # stored value = HU + 1024, so stored pixels are >= 0
PRIVATE_CREATOR = "MEDGATE SYNTH"
PRIVATE_GROUP = 0x0029


@dataclass(frozen=True)
class _Site:
    folder: str
    institution: str
    address: str
    manufacturer: str
    model: str
    station: str
    kernel: str
    noise_hu: float  # standard deviation of quantum noise after reconstruction
    blur_px: float  # sigma of the reconstruction kernel's smoothing, in pixels at 64 px
    offset_hu: float  # calibration offset of the scanner
    fov_mm: float
    weight: float  # share of patients


SITES: tuple[_Site, ...] = (
    _Site("site-a", "St. Aldric General Hospital", "12 Wharf Lane, Eastmoor", "SIEMENS",
          "SOMATOM Definition AS", "CTA01ALDRIC", "B30f", 6.0, 0.5, 0.0, 360.0, 0.40),
    _Site("site-b", "Northbridge University Medical Center", "400 Campus Road, Northbridge",
          "GE MEDICAL SYSTEMS", "LightSpeed VCT", "NBCT02", "STANDARD", 8.0, 0.6, 8.0, 380.0, 0.35),
    _Site("site-c", "Harbourview Community Clinic", "3 Quay Street, Harbourview", "Philips",
          "Brilliance 64", "HVCT-1", "B", 10.0, 0.7, -6.0, 400.0, 0.25),
)

_FIRST = ("Avery", "Blake", "Casey", "Dana", "Ellis", "Finley", "Gray", "Harper", "Indigo", "Jordan",
          "Kai", "Logan", "Morgan", "Noel", "Oakley", "Parker", "Quinn", "Reese", "Sage", "Tatum")
_LAST = ("Abernathy", "Bramwell", "Castellan", "Dunmore", "Everhart", "Fairweather", "Galloway",
         "Hollingsworth", "Ingleby", "Jessop", "Kilbride", "Lockhart", "Marchbanks", "Netherby",
         "Ormsby", "Pemberton", "Quillfeather", "Rotherham", "Stanwick", "Thistlewood")
_DOCTORS = ("Okonkwo^Adaeze^^Dr", "Lindqvist^Hugo^^Dr", "Ferreira^Marta^^Dr", "Nakamura^Ren^^Dr")


def generate_cohort(out_dir: Path, cfg: CohortConfig) -> Path:
    """Write the synthetic CT cohort described in the module docstring.

    Args:
        out_dir: folder to write into (created). The cohort's own site folders, labels.csv and
            identifiers.json are replaced; nothing else there is touched.
        cfg: number of patients, slices per patient, image size, positive fraction, seed.

    Returns:
        out_dir.

    Raises:
        ValueError: on a config that cannot make a cohort (no patients, image smaller than 32 px).
    """
    if cfg.patients < 1 or cfg.images_per_patient < 1:
        raise ValueError("cohort needs at least one patient and one image per patient")
    if cfg.image_size < 32:
        raise ValueError(f"cohort image_size must be >= 32, got {cfg.image_size}")
    if not 0.0 <= cfg.positive_fraction <= 1.0:
        raise ValueError(f"cohort positive_fraction must be in [0, 1], got {cfg.positive_fraction}")
    if cfg.patients > len(_FIRST) * len(_LAST):
        raise ValueError(f"cohort supports at most {len(_FIRST) * len(_LAST)} patients")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for site in SITES:  # a previous, larger cohort must not leave unlisted files behind
        shutil.rmtree(out_dir / site.folder, ignore_errors=True)
    plan = _draw_plan(cfg)
    ids: dict[str, list[str]] = {k: [] for k in (
        "patient_names", "patient_ids", "birth_dates", "accession_numbers", "institution_names",
        "institution_addresses", "referring_physicians", "device_serials", "station_names",
        "study_dates", "uids")}
    rows: list[tuple[str, str]] = []
    case_per_site = [0] * len(SITES)
    for p in range(cfg.patients):
        site_i = int(plan.site_idx[p])
        folder = Path(SITES[site_i].folder) / f"case-{case_per_site[site_i]:03d}"
        case_per_site[site_i] += 1
        rows += _write_patient(out_dir, folder, cfg, plan, p, ids)

    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    unique = {k: sorted(set(v)) for k, v in ids.items()}
    (out_dir / "identifiers.json").write_text(json.dumps(unique, indent=1, sort_keys=True) + "\n")
    return out_dir


@dataclass(frozen=True, eq=False)
class _Plan:
    """Per-patient draws of the cohort plan: site index, label, and indices of name, MRN, accession."""
    site_idx: np.ndarray
    labels: np.ndarray
    names: np.ndarray
    mrns: np.ndarray
    accessions: np.ndarray


def _draw_plan(cfg: CohortConfig) -> _Plan:
    plan = np.random.default_rng([cfg.seed, 0xC0])
    weights = np.array([s.weight for s in SITES])
    site_idx = plan.choice(len(SITES), size=cfg.patients, p=weights / weights.sum())
    # Labels are stratified by site so that site is a subgroup, never a shortcut to the label.
    labels = np.zeros(cfg.patients, dtype=np.int64)
    order = np.argsort(site_idx, kind="stable")
    quota = np.round(cfg.positive_fraction * np.arange(cfg.patients + 1)).astype(np.int64)
    start = 0
    for site_members in np.split(order, np.cumsum(np.bincount(site_idx, minlength=len(SITES)))[:-1]):
        n_pos = int(quota[start + len(site_members)] - quota[start])
        start += len(site_members)
        labels[plan.permutation(site_members)[:n_pos]] = 1
    names = plan.choice(len(_FIRST) * len(_LAST), size=cfg.patients, replace=False)
    mrns = plan.choice(9_000_000, size=cfg.patients, replace=False) + 1_000_000
    accessions = plan.choice(90_000_000, size=cfg.patients, replace=False) + 10_000_000
    return _Plan(site_idx, labels, names, mrns, accessions)


def _write_patient(out_dir: Path, folder: Path, cfg: CohortConfig, plan: _Plan, p: int,
                   ids: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Write patient `p`'s slices under `out_dir / folder`, add their identifiers to `ids`.

    Returns the patient's labels.csv rows.
    """
    site = SITES[int(plan.site_idx[p])]
    label = CLASS_NAMES[int(plan.labels[p])]
    rng = np.random.default_rng([cfg.seed, p])
    person = _draw_person(rng, plan, p)
    (out_dir / folder).mkdir(parents=True, exist_ok=True)

    study_uid = generate_uid(entropy_srcs=[str(cfg.seed), "study", str(p)])
    series_uid = generate_uid(entropy_srcs=[str(cfg.seed), "series", str(p)])
    frame_uid = generate_uid(entropy_srcs=[str(cfg.seed), "frame", str(p)])
    ids["uids"] += [study_uid, series_uid, frame_uid]
    images = patient_images(rng, cfg, site, lesion=bool(plan.labels[p]))
    spacing = site.fov_mm / cfg.image_size
    thickness = float(rng.choice([2.5, 3.0, 5.0]))
    rows = []
    for k, hu in enumerate(images):
        sop_uid = generate_uid(entropy_srcs=[str(cfg.seed), "sop", str(p), str(k)])
        ids["uids"].append(sop_uid)
        ds = _ct_dataset(hu, site, person, spacing, thickness, k, study_uid, series_uid, frame_uid, sop_uid)
        rel = (folder / f"{k}.dcm").as_posix()
        ds.save_as(out_dir / rel, enforce_file_format=True)
        rows.append((rel, label))

    ids["patient_names"] += [person.name, person.display]
    ids["patient_ids"].append(person.mrn)
    ids["birth_dates"].append(person.birth)
    ids["accession_numbers"].append(person.accession)
    ids["referring_physicians"].append(person.physician)
    ids["device_serials"].append(person.serial)
    ids["study_dates"].append(person.study_date)
    ids["institution_names"].append(site.institution)
    ids["institution_addresses"].append(site.address)
    ids["station_names"].append(site.station)
    return rows


@dataclass(frozen=True)
class _Person:
    name: str
    display: str
    mrn: str
    accession: str
    sex: str
    age: int
    study_date: str
    birth: str
    physician: str
    serial: str

    def header(self) -> dict[str, str]:
        """The DICOM attributes naming the patient, their referrer and the accession."""
        return {
            "PatientName": self.name,
            "PatientID": self.mrn,
            "PatientBirthDate": self.birth,
            "PatientSex": self.sex,
            "PatientAge": f"{self.age:03d}Y",
            "AccessionNumber": self.accession,
            "ReferringPhysicianName": self.physician,
        }


def _draw_person(rng: np.random.Generator, plan: _Plan, p: int) -> _Person:
    """Patient `p`'s fake identity; the draws from `rng` come first in the patient's stream."""
    site_i = int(plan.site_idx[p])
    first, last = _FIRST[int(plan.names[p]) % len(_FIRST)], _LAST[int(plan.names[p]) // len(_FIRST)]
    sex = str(rng.choice(["M", "F"]))
    age = int(rng.integers(22, 88))
    study_date = _date(2019 + int(rng.integers(0, 5)), rng)
    physician = _DOCTORS[int(rng.integers(len(_DOCTORS)))]
    return _Person(
        name=f"{last.upper()}^{first.upper()}",
        display=f"{first} {last}",
        mrn=f"MRN{int(plan.mrns[p]):07d}",
        accession=f"ACC{int(plan.accessions[p]):08d}",
        sex=sex,
        age=age,
        study_date=study_date,
        birth=_date(int(study_date[:4]) - age, rng),
        physician=physician,
        serial=f"SN{SITES[site_i].folder[-1].upper()}{4000 + site_i * 1111:05d}",
    )


def _date(year: int, rng: np.random.Generator) -> str:
    return f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"


def _ct_dataset(hu: np.ndarray, site: _Site, person: _Person, spacing: float, thickness: float, k: int,
                study_uid: str, series_uid: str, frame_uid: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = person.study_date
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.ContentTime = f"1015{k:02d}"
    ds.update(person.header())
    ds.Modality = "CT"
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution
    ds.InstitutionAddress = site.address
    ds.StationName = site.station
    ds.StudyDescription = "CT ABDOMEN WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 5MM"
    ds.OperatorsName = "Tech^Sam"
    ds.ManufacturerModelName = site.model
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = f"{thickness:g}"
    ds.KVP = "120"
    ds.DeviceSerialNumber = person.serial
    ds.SoftwareVersions = "synthetic-1.0"
    ds.ConvolutionKernel = site.kernel
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = person.accession[-4:]
    ds.SeriesNumber = 2
    ds.InstanceNumber = k + 1
    z = -100.0 - k * thickness
    ds.ImagePositionPatient = [f"{-spacing * hu.shape[1] / 2:.3f}", f"{-spacing * hu.shape[0] / 2:.3f}",
                               f"{z:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.SliceLocation = f"{z:.1f}"
    ds.ImageComments = (f"Follow-up for {person.display} (MRN {person.mrn}), "
                        f"accession {person.accession}, referred by {person.physician}.")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"RIS ref {person.mrn}")
    block.add_new(0x02, "LO", person.name)
    stored = np.clip(np.rint(hu - RESCALE_INTERCEPT), 0, 4095).astype("<i2")
    ds.PixelData = stored.tobytes()
    return ds
