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

    ids: dict[str, list[str]] = {k: [] for k in (
        "patient_names", "patient_ids", "birth_dates", "accession_numbers", "institution_names",
        "institution_addresses", "referring_physicians", "device_serials", "station_names",
        "study_dates", "uids")}
    rows: list[tuple[str, str]] = []
    case_per_site = [0] * len(SITES)
    for p in range(cfg.patients):
        site = SITES[int(site_idx[p])]
        rng = np.random.default_rng([cfg.seed, p])
        first, last = _FIRST[int(names[p]) % len(_FIRST)], _LAST[int(names[p]) // len(_FIRST)]
        person = _Person(
            name=f"{last.upper()}^{first.upper()}",
            display=f"{first} {last}",
            mrn=f"MRN{int(mrns[p]):07d}",
            accession=f"ACC{int(accessions[p]):08d}",
            sex=str(rng.choice(["M", "F"])),
            age=int(rng.integers(22, 88)),
            study_date=_date(2019 + int(rng.integers(0, 5)), rng),
            physician=_DOCTORS[int(rng.integers(len(_DOCTORS)))],
            serial=f"SN{site.folder[-1].upper()}{4000 + int(site_idx[p]) * 1111:05d}",
        )
        person_birth = _date(int(person.study_date[:4]) - person.age, rng)
        folder = Path(site.folder) / f"case-{case_per_site[int(site_idx[p])]:03d}"
        case_per_site[int(site_idx[p])] += 1
        (out_dir / folder).mkdir(parents=True, exist_ok=True)

        study_uid = generate_uid(entropy_srcs=[str(cfg.seed), "study", str(p)])
        series_uid = generate_uid(entropy_srcs=[str(cfg.seed), "series", str(p)])
        frame_uid = generate_uid(entropy_srcs=[str(cfg.seed), "frame", str(p)])
        ids["uids"] += [study_uid, series_uid, frame_uid]
        images = _patient_images(rng, cfg, site, lesion=bool(labels[p]))
        spacing = site.fov_mm / cfg.image_size
        thickness = float(rng.choice([2.5, 3.0, 5.0]))
        for k, hu in enumerate(images):
            sop_uid = generate_uid(entropy_srcs=[str(cfg.seed), "sop", str(p), str(k)])
            ids["uids"].append(sop_uid)
            ds = _ct_dataset(hu, site, person, person_birth, spacing, thickness, k,
                             study_uid, series_uid, frame_uid, sop_uid)
            rel = (folder / f"{k}.dcm").as_posix()
            ds.save_as(out_dir / rel, enforce_file_format=True)
            rows.append((rel, CLASS_NAMES[int(labels[p])]))

        ids["patient_names"] += [person.name, person.display]
        ids["patient_ids"].append(person.mrn)
        ids["birth_dates"].append(person_birth)
        ids["accession_numbers"].append(person.accession)
        ids["referring_physicians"].append(person.physician)
        ids["device_serials"].append(person.serial)
        ids["study_dates"].append(person.study_date)
        ids["institution_names"].append(site.institution)
        ids["institution_addresses"].append(site.address)
        ids["station_names"].append(site.station)

    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    unique = {k: sorted(set(v)) for k, v in ids.items()}
    (out_dir / "identifiers.json").write_text(json.dumps(unique, indent=1, sort_keys=True) + "\n")
    return out_dir


@dataclass(frozen=True)
class _Person:
    name: str
    display: str
    mrn: str
    accession: str
    sex: str
    age: int
    study_date: str
    physician: str
    serial: str


def _date(year: int, rng: np.random.Generator) -> str:
    return f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"


def _ct_dataset(hu: np.ndarray, site: _Site, person: _Person, birth: str, spacing: float,
                thickness: float, k: int, study_uid: str, series_uid: str, frame_uid: str,
                sop_uid: str) -> Dataset:
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
    ds.AccessionNumber = person.accession
    ds.Modality = "CT"
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution
    ds.InstitutionAddress = site.address
    ds.ReferringPhysicianName = person.physician
    ds.StationName = site.station
    ds.StudyDescription = "CT ABDOMEN WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 5MM"
    ds.OperatorsName = "Tech^Sam"
    ds.ManufacturerModelName = site.model
    ds.PatientName = person.name
    ds.PatientID = person.mrn
    ds.PatientBirthDate = birth
    ds.PatientSex = person.sex
    ds.PatientAge = f"{person.age:03d}Y"
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


def _patient_images(rng: np.random.Generator, cfg: CohortConfig, site: _Site,
                    lesion: bool) -> list[np.ndarray]:
    """Slices of one patient in HU (float64), sharing anatomy and, when present, lesion type."""
    n = cfg.image_size
    s = n / 64.0  # geometry below is written for 64 px and scaled
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    cx = n / 2 + rng.uniform(-2, 2) * s
    cy = n / 2 + rng.uniform(-1.5, 1.5) * s
    a0 = n * rng.uniform(0.38, 0.45)  # half-width of the body
    b0 = n * rng.uniform(0.27, 0.33)  # half-height
    fat = rng.uniform(0.08, 0.22)
    fat_hu = rng.uniform(-120, -80)
    visceral_fat = rng.uniform(0.0, 0.25)  # share of the anterior abdomen that is mesenteric fat
    fat_field = _blur(rng.standard_normal((n, n)), 3.0 * s)
    contrast = rng.random() < 0.85  # contrast-enhanced (portal venous) phase
    liver_hu = rng.uniform(52, 66) + (35 if contrast else 0)
    kidney_hu = rng.uniform(140, 190) if contrast else rng.uniform(28, 36)
    aorta_hu = rng.uniform(150, 220) if contrast else rng.uniform(38, 48)
    tissue_hu = rng.uniform(30, 45)
    liver_size = rng.uniform(0.85, 1.15)
    spine_size = rng.uniform(0.85, 1.2)
    kidney_size = rng.uniform(0.6, 1.2)
    stomach = (rng.uniform(0.12, 0.25), rng.uniform(0.12, 0.22), rng.uniform(30, 60), rng.uniform(0.3, 0.6)) \
        if rng.random() < 0.7 else None

    # Lesions: per-patient type, size and density; each slice cuts through one to three of them.
    if lesion:
        subtle = rng.random() < 0.12
        radius = s * (rng.uniform(3.0, 4.0) if subtle else rng.uniform(4.0, 7.0))
        kind = str(rng.choice(["rim", "hypo", "hyper"], p=[0.2, 0.55, 0.25]))
        if kind == "hyper":  # calcified or haemorrhagic: bone-like density
            lesion_hu = rng.uniform(160, 190) if subtle else rng.uniform(200, 320)
        else:  # fat-containing or necrotic: between fat and water
            lesion_hu = rng.uniform(-20, 0) if subtle else rng.uniform(-90, -40)
        rim_hu = rng.uniform(60, 110) if kind == "rim" and not subtle else 0.0

    # Benign look-alikes, independent of the label.
    calcs = [(rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.5), rng.uniform(250, 600))
             for _ in range(int(rng.integers(0, 2)))]
    tubes = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.3), rng.uniform(0, np.pi), rng.uniform(60, 130))
             for _ in range(int(rng.integers(0, 3)))]
    loops = [(rng.uniform(-0.1, 0.5), rng.uniform(-0.6, -0.1)) for _ in range(int(rng.integers(0, 2)))]

    images = []
    for k in range(cfg.images_per_patient):
        zf = 1.0 + 0.03 * (k - (cfg.images_per_patient - 1) / 2) / max(cfg.images_per_patient, 1)
        a, b = a0 * zf, b0 * zf
        r = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
        img = np.full((n, n), -1000.0)
        body = _soft(1.0 - r, 0.6 / a)
        inner = _soft((1.0 - fat) - r, 0.6 / a)
        img += body * (fat_hu + 1000.0)  # air -> subcutaneous fat
        texture = _blur(rng.standard_normal((n, n)), 3.0 * s) * 40.0
        img += inner * (tissue_hu - fat_hu + texture)  # fat -> soft tissue with texture
        if visceral_fat > 0:  # irregular mesenteric fat, anterior, drifting a little between slices
            field = fat_field + 0.3 * _blur(rng.standard_normal((n, n)), 3.0 * s)
            anterior = (yy < cy + 0.2 * b).astype(np.float64)
            cut = np.quantile(field[inner * anterior > 0.5], 1.0 - visceral_fat) if visceral_fat else 0
            img[:] = img + _soft(field - cut, 0.02) * inner * anterior * (fat_hu - tissue_hu)

        def ell(u: float, v: float, ra: float, rb: float, edge: float = 0.7,
                a: float = a, b: float = b) -> np.ndarray:
            d = np.sqrt(((xx - (cx + u * a)) / (ra * a)) ** 2 + ((yy - (cy + v * b)) / (rb * b)) ** 2)
            return _soft(1.0 - d, edge / (min(ra * a, rb * b)))

        def put(mask: np.ndarray, value: float, img: np.ndarray = img) -> None:
            img[:] = img * (1 - mask) + value * mask

        grow = k / max(cfg.images_per_patient - 1, 1)  # 0 at the top slice, 1 at the bottom
        put(ell(-0.38, -0.12, liver_size * (0.44 - 0.06 * grow), liver_size * 0.55) * inner, liver_hu)
        put(ell(0.55, 0.05, 0.16, 0.28) * inner, liver_hu - 10)  # spleen
        if stomach is not None:  # enhancing wall, fluid, and a gas cap with a flat air-fluid level
            sa, sb, shu, gas = stomach
            put(ell(0.32, -0.3, sa, sb) * inner, liver_hu + 20)
            put(ell(0.32, -0.3, sa * 0.8, sb * 0.8) * inner, shu)
            cap = (yy < cy + (-0.3 - gas * 0.8 * sb) * b).astype(np.float64)
            put(ell(0.32, -0.3, sa * 0.8, sb * 0.8) * inner * cap, -900.0)
        for side in (-1, 1):  # kidneys grow towards the lower slices
            ks = kidney_size * (0.6 + 0.4 * grow)
            put(ell(side * 0.3, 0.45, 0.11 * ks, 0.2 * ks), kidney_hu)
        put(ell(0.0, 0.62, 0.13 * spine_size, 0.17 * spine_size), 650.0)  # vertebral body cortex
        put(ell(0.0, 0.62, 0.095 * spine_size, 0.125 * spine_size), 230.0)  # cancellous bone
        put(ell(0.0, 0.9, 0.03, 0.09), 500.0)  # spinous process
        put(ell(-0.06, 0.33, 0.055, 0.075), aorta_hu)
        put(ell(0.1, 0.3, 0.05, 0.06), aorta_hu * 0.8)  # inferior vena cava
        for _ in range(int(rng.integers(0, 2))):  # bowel gas moves between slices
            u, v = rng.uniform(-0.1, 0.5), rng.uniform(-0.75, -0.4)
            put(ell(u, v, rng.uniform(0.03, 0.07), rng.uniform(0.03, 0.06), 0.5) * inner, -900.0)
        for u, v, wall in [(u, v, 90.0) for u, v in loops]:  # fluid-filled bowel with enhancing wall
            put(ell(u, v, 0.1, 0.08) * inner, wall if contrast else 45.0)
            put(ell(u, v, 0.075, 0.055) * inner, 40.0)
        for u, v, theta, dhu in tubes:  # vessel running in-plane: elongated, sharp
            du, dv = (xx - (cx + u * a)), (yy - (cy + v * b))
            along = du * np.cos(theta) + dv * np.sin(theta)
            across = -du * np.sin(theta) + dv * np.cos(theta)
            d = np.sqrt((along / (3.5 * s)) ** 2 + (across / (0.9 * s)) ** 2)
            img += _soft(1.0 - d, 0.3) * inner * (dhu if contrast else dhu * 0.3)
        for u, v, chu in calcs:  # punctate calcification: tiny and very dense
            put(ell(u, v, 0.6 * s / a, 0.6 * s / b, 0.4) * inner, chu)
        if lesion:
            for _ in range(1 if subtle else int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))):
                rk = radius * rng.uniform(0.75, 1.2)
                lu, lv = _lesion_site(rng, rk / (0.8 * (a + b)), in_liver=rng.random() < 0.9)
                d = np.sqrt((xx - (cx + lu * a)) ** 2 + (yy - (cy + lv * b)) ** 2)
                put(_soft(rk - d, 0.8) * inner, lesion_hu + rng.normal(0, 5))
                if rim_hu:  # enhancing wall of a necrotic metastasis or abscess
                    img += np.exp(-0.5 * ((d - rk) / (0.6 * s)) ** 2) * inner * rim_hu

        img = _blur(img, site.blur_px * s) + site.offset_hu * body
        noise = _blur(rng.standard_normal((n, n)), site.blur_px * s)
        noise *= site.noise_hu / max(float(noise.std()), 1e-6)
        img += noise * (0.4 + 0.6 * body)  # little noise in air, as after air masking in recon
        images.append(np.clip(img, -1024.0, 3071.0))
    return images


# Centres (u, v) in body half-axes and radii of structures a lesion should not sit on.
_AVOID = ((0.0, 0.62, 0.22), (0.3, 0.45, 0.22), (-0.3, 0.45, 0.22), (-0.06, 0.33, 0.12), (0.1, 0.3, 0.1),
          (0.32, -0.3, 0.27))


def _lesion_site(rng: np.random.Generator, rel_radius: float, in_liver: bool) -> tuple[float, float]:
    """A lesion centre inside the liver or the other soft tissue, off spine, kidneys and vessels."""
    for _ in range(100):
        if in_liver:
            u, v = rng.uniform(-0.6, -0.2), rng.uniform(-0.45, 0.15)
        else:
            u, v = rng.uniform(-0.2, 0.6), rng.uniform(-0.55, 0.2)
        if u * u + v * v > (0.72 - rel_radius) ** 2:
            continue
        if all((u - au) ** 2 + (v - av) ** 2 > (ar + rel_radius) ** 2 for au, av, ar in _AVOID):
            return float(u), float(v)
    return -0.4, -0.1  # centre of the liver


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (x < 0) to 1 (x > 0); `width` in the units of x."""
    return 1.0 / (1.0 + np.exp(-np.clip(x / max(width, 1e-6), -40, 40)))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (numpy only, exact and deterministic)."""
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        for i, wi in enumerate(w):
            acc += wi * (p[i:i + out.shape[0], :] if axis == 0 else p[:, i:i + out.shape[1]])
        out = acc
    return out
