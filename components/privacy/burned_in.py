"""Inputs at risk of text burned into their pixels, which header de-identification cannot remove.

At risk: any PNG or JPEG and any clip from a video container (nothing says what was drawn into
them), and DICOM of the modalities that often carry burned-in text (ultrasound, secondary capture,
angiography, other), images and cine loops alike, unless the header says BurnedInAnnotation NO. No
OCR looks for the text. Such a file is refused before it is decoded unless the dataset's settings
handle its risk: ``ingest.accept_burned_in_risk`` accepts it by format or modality, or, for a clip
(video or DICOM cine), ``ingest.video.mask`` blacks out regions of every frame (the banner where
scanners write the patient's name). The manifest's ``burned_in_risk`` column says how each stored
file was taken, the problems file why each refused one was not. DICOM whose BurnedInAnnotation or
RecognizableVisualFeatures is YES is always refused (components.readers.dicom).

The risk is judged from the file's content, as `components.readers.decode` picks its reader, so a
file's name cannot hide it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from components.config import BURNED_IN_MODALITIES
from components.readers import READERS, ImageDecodeError
from components.readers.dicom import header_text, is_cine, parse
from components.readers.raster import PNG_MAGIC

VIDEO = "VIDEO"  # a clip from a video container (MP4, MOV, AVI)


class BurnedInRisk(ImageDecodeError):
    """A file at risk of burned-in text that the dataset's settings do not handle."""


@dataclass(frozen=True)
class Risk:
    """What puts a file at risk: ``PNG``, ``JPEG``, ``VIDEO`` or a DICOM modality; `clip` when it is
    read as a clip (a video, a DICOM cine loop), whose frames `ingest.video.mask` covers."""

    kind: str
    clip: bool


def burned_in_risk(data: bytes) -> Risk | None:
    """The risk of a whole file's content, None when it is at no such risk (or not readable: the decoder reports that)."""
    reader = next((r for r in READERS if r.accepts(data)), None)
    if reader is None:
        return None
    if reader.name == "raster":
        return Risk("PNG" if data.startswith(PNG_MAGIC) else "JPEG", clip=False)
    if reader.name == "video":
        return Risk(VIDEO, clip=True)
    if reader.name != "dicom":
        return None
    try:
        with warnings.catch_warnings():  # pydicom's warnings can quote header values
            warnings.simplefilter("ignore")
            head = parse(data, keep=True)  # for the reader: the file is parsed once
        modality = header_text(head, "Modality").upper()
        burned = header_text(head, "BurnedInAnnotation").upper()
        clip = is_cine(head)
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to report
        return None
    # YES is refused by the reader whatever the settings; NO is the header's word that there is no text.
    if modality not in BURNED_IN_MODALITIES or burned in ("YES", "NO"):
        return None
    return Risk(modality, clip)


@dataclass(frozen=True)
class BurnedInPolicy:
    """What a dataset's settings take despite the risk: `accepted` kinds (ingest.accept_burned_in_risk),
    and clips when `masked` (ingest.video.mask has regions)."""

    accepted: frozenset[str] = frozenset()
    masked: bool = False

    @classmethod
    def of(cls, accepted: Iterable[str], mask: Iterable[object]) -> BurnedInPolicy:
        return cls(frozenset(a.upper() for a in accepted), bool(tuple(mask)))

    def judge(self, data: bytes) -> str | None:
        """How a file at risk is taken (the manifest's ``burned_in_risk``: ``US``, or ``VIDEO masked``
        when the mask covers it), None when it is at no risk.

        Raises:
            BurnedInRisk: the file is at risk and neither accepted nor masked (says which setting would take it).
        """
        risk = burned_in_risk(data)
        if risk is None:
            return None
        if risk.clip and self.masked:
            return f"{risk.kind} masked"
        if risk.kind in self.accepted:
            return risk.kind
        masking = ", or an ingest.video.mask region over the text" if risk.clip else ""
        raise BurnedInRisk(f"{risk.kind}: text burned into the pixels may identify the patient and no OCR checks it; "
                           f"refused unless the dataset accepts the risk (ingest.accept_burned_in_risk: [{risk.kind}]"
                           f"{masking})")
