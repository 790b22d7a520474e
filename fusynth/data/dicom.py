"""DICOM from the scanner: read, calibrate, crop and de-identify into the fusynth schema.

``fusynth data prepare --format dicom SRC OUT`` lists every DICOM file under ``SRC``
(or the files a ``file,view[,subject]`` CSV names), checks every header before anything
is written, and decodes the frames it keeps into the one sample schema:

* **pixels**: single frames and multi-frame cine loops (``--frames all|middle|every:K``);
  MONOCHROME1/2, RGB and YBR photometric interpretations become 8-bit grayscale (ITU-R
  601 luma); compressed transfer syntaxes decode where a pydicom pixel handler is
  installed (:func:`available_transfer_syntaxes` lists them), the rest are refused in
  one line naming the file.
* **calibration**: ``SequenceOfUltrasoundRegions`` (``PhysicalDeltaX/Y`` in cm, unit code
  3) gives the spacing in mm and the region bounds crop the frame to the scan sector;
  else ``PixelSpacing`` (also per frame in functional groups); else None.
* **de-identification**: nothing from the header reaches the dataset but the spacing,
  the frame size and, with ``--keep_device``, manufacturer and model. Subjects are a
  salted hash of ``PatientID``; the source path is kept only as a salted hash too, since
  scanner exports often name folders after the patient. The salt is never written into
  the prepared folder (see :func:`prepare_dicom`).
* **burned-in annotation**: files flagged ``BurnedInAnnotation == YES`` are refused
  unless overlay removal (:mod:`fusynth.data.clean`) is on.

pydicom is imported lazily so the other readers do not need it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fusynth.core.errors import UserInputError
from fusynth.data.readers import ReaderOptions, SourceSample, read_csv, safe_join
from fusynth.data.schema import canonical_view

#: Files under SRC that are never DICOM images and are skipped when walking the tree.
SKIPPED_NAMES = ("DICOMDIR",)
SKIPPED_SUFFIXES = (".csv", ".txt", ".md", ".json", ".xml", ".html", ".pdf")

#: Photometric interpretations read (after pydicom's YBR -> RGB conversion).
PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
)

#: DICOM ultrasound region unit code for centimetres (PS3.3 C.8.5.5.1.15).
UNIT_CM = 3
#: RegionSpatialFormat code of a 2D (B-mode) tissue region.
SPATIAL_2D = 1
#: Relative tolerance between spacings that should agree (x vs y, frame vs frame).
SPACING_RTOL = 0.01
#: Default cohort name: never the source folder's name, which may name a patient.
DEFAULT_COHORT = "dicom"
#: Hex digits kept of a salted hash (64 bits: collisions are negligible per dataset).
HASH_CHARS = 16


@dataclass
class DicomOptions:
    """Options of the ``dicom`` format.

    Attributes:
        frames: ``all``, ``middle`` or ``every:K`` (every K-th frame from the first).
        subject_salt: salt of the ``PatientID`` and path hashes; :func:`prepare_dicom`
            fills it from ``--subject_salt`` or the dataset's salt file.
        keep_device: keep ``Manufacturer`` and ``ManufacturerModelName`` in provenance.
        clean: remove burned-in overlays (and accept ``BurnedInAnnotation == YES``).
        clean_options: settings of the overlay removal (``None``: the defaults).
    """

    frames: str = "middle"
    subject_salt: str | None = None
    keep_device: bool = False
    clean: bool = False
    clean_options: Any = None

    def __post_init__(self) -> None:
        parse_frames(self.frames)
        if self.subject_salt is not None and not str(self.subject_salt).strip():
            raise UserInputError("--subject_salt: empty salt")


def parse_frames(spec: str) -> tuple[str, int]:
    """Parse ``--frames``: ``all``, ``middle`` or ``every:K``.

    Returns:
        ``(mode, step)``; step is 1 for ``all`` and 0 for ``middle``.

    Raises:
        UserInputError: any other text.
    """
    text = str(spec).strip().lower()
    if text == "all":
        return "all", 1
    if text == "middle":
        return "middle", 0
    m = re.fullmatch(r"every:(\d+)", text)
    if m and int(m.group(1)) > 0:
        return "every", int(m.group(1))
    raise UserInputError(
        f"--frames: {spec!r} is not all, middle or every:K (K a positive whole number)"
    )


def frame_indices(n_frames: int, spec: str) -> list[int]:
    """The frame indices ``--frames`` keeps of an ``n_frames`` loop."""
    mode, step = parse_frames(spec)
    if mode == "middle":
        return [n_frames // 2]
    return list(range(0, n_frames, step))


def salted_hash(salt: str, value: str) -> str:
    """A short salted sha256 of ``value``: stable within a dataset, unguessable without
    the salt (a bare hash of a PatientID is reversed by hashing every plausible id)."""
    digest = hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()
    return digest[:HASH_CHARS]


def available_transfer_syntaxes() -> dict[str, bool]:
    """Whether each transfer syntax pydicom knows can be decoded with what is installed.

    Returns:
        Transfer syntax name -> True when a pixel data handler for it is available.
    """
    from pydicom.uid import UID, AllTransferSyntaxes

    out = {}
    for uid in AllTransferSyntaxes:
        out[UID(uid).name] = _decoder_missing(UID(uid)) is None
    return out


def _decoder_missing(uid: Any) -> str | None:
    """None when pixel data in transfer syntax ``uid`` can be decoded, else why not."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} ({uid}) is not supported by pydicom"
    if decoder.is_available:
        return None
    missing = (
        "; ".join(
            f"{plugin}: {', '.join(deps)}" for plugin, deps in decoder.missing_dependencies.items()
        )
        if isinstance(decoder.missing_dependencies, dict)
        else ", ".join(decoder.missing_dependencies)
    )
    return (
        f"transfer syntax {uid.name} needs a pixel data handler that is not installed"
        f" (install one of: {missing or 'pylibjpeg, python-gdcm'})"
    )


# ----------------------------------------------------------------------------- header


@dataclass
class DicomHeader:
    """What fusynth keeps of one file's header (no identifiers but the hashed ones)."""

    path: Path
    rows: int
    columns: int
    n_frames: int
    photometric: str
    bits_stored: int
    signed: bool
    spacing_mm: float | None
    spacing_from: str
    crop: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (inclusive, DICOM's convention)
    burned_in: bool
    patient_key: str | None  # salted hash of PatientID, or None
    device: dict[str, str] = field(default_factory=dict)


def read_header(path: Path, salt: str, keep_device: bool = False) -> DicomHeader:
    """Read and check one file's header, without decoding its pixels.

    Args:
        path: a DICOM file.
        salt: salt of the ``PatientID`` hash.
        keep_device: keep manufacturer and model.

    Returns:
        The header fields fusynth needs.

    Raises:
        UserInputError: not DICOM, no pixel data, a transfer syntax without an installed
            handler, an unsupported photometric interpretation, anisotropic pixels,
            spacing that differs between frames, or region bounds outside the image.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        # Large values (pixel data) stay on disk until decoded.
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        raise UserInputError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # truncated or corrupt: name the file, not pydicom's stack
        raise UserInputError(f"{path}: cannot read DICOM header ({exc})") from exc
    if "PixelData" not in ds:
        raise UserInputError(
            f"{path}: DICOM without pixel data (a report, structured report or DICOMDIR?)"
        )
    meta = getattr(ds, "file_meta", None)
    uid = (
        UID(str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
        if meta
        else UID("1.2.840.10008.1.2")
    )
    why = _decoder_missing(uid)
    if why:
        raise UserInputError(f"{path}: {why}")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in PHOTOMETRIC:
        raise UserInputError(
            f"{path}: photometric interpretation {photometric or '(missing)'!r} is not "
            f"supported (supported: {', '.join(PHOTOMETRIC)})"
        )
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise UserInputError(f"{path}: Rows/Columns missing or zero")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    spacing, spacing_from, crop = _geometry(ds, path, rows, columns, n_frames)
    patient = str(ds.get("PatientID", "") or "").strip()
    device = {}
    if keep_device:
        for key, tag in (("manufacturer", "Manufacturer"), ("model", "ManufacturerModelName")):
            value = str(ds.get(tag, "") or "").strip()
            if value:
                device[key] = value
    return DicomHeader(
        path=path,
        rows=rows,
        columns=columns,
        n_frames=n_frames,
        photometric=photometric,
        bits_stored=int(ds.get("BitsStored", 8) or 8),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        spacing_mm=spacing,
        spacing_from=spacing_from,
        crop=crop,
        burned_in=str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES",
        patient_key=salted_hash(salt, patient) if patient else None,
        device=device,
    )


def _isotropic(dy: float, dx: float, path: Path, what: str) -> float:
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise UserInputError(f"{path}: {what} must be positive, got {dx!r} x {dy!r}")
    if not math.isclose(dx, dy, rel_tol=SPACING_RTOL):
        raise UserInputError(
            f"{path}: {what} is {dx:g} x {dy:g} mm (anisotropic pixels); the schema holds "
            "one spacing per image: resample the export to square pixels"
        )
    return (dx + dy) / 2


def _geometry(
    ds: Any, path: Path, rows: int, columns: int, n_frames: int
) -> tuple[float | None, str, tuple[int, int, int, int] | None]:
    """Spacing in mm, where it came from, and the sector crop box."""
    regions = list(ds.get("SequenceOfUltrasoundRegions", []) or [])
    crop = None
    if regions:
        region = _pick_region(regions)
        x0, y0 = (
            int(region.get("RegionLocationMinX0", 0)),
            int(region.get("RegionLocationMinY0", 0)),
        )
        x1 = int(region.get("RegionLocationMaxX1", columns - 1))
        y1 = int(region.get("RegionLocationMaxY1", rows - 1))
        if not (0 <= x0 < x1 < columns and 0 <= y0 < y1 < rows):
            raise UserInputError(
                f"{path}: ultrasound region bounds ({x0},{y0})-({x1},{y1}) fall outside the "
                f"{columns}x{rows} image"
            )
        crop = (x0, y0, x1, y1)
        if _is_cm(region):
            dx = abs(float(region.PhysicalDeltaX)) * 10.0
            dy = abs(float(region.PhysicalDeltaY)) * 10.0
            return _isotropic(dy, dx, path, "ultrasound region PhysicalDeltaX/Y"), "region", crop
    spacings = _pixel_spacings(ds, n_frames)
    if spacings:
        values = [_isotropic(float(r), float(c), path, "PixelSpacing") for r, c in spacings]
        if any(not math.isclose(v, values[0], rel_tol=SPACING_RTOL) for v in values):
            raise UserInputError(
                f"{path}: inconsistent spacing between frames "
                f"({min(values):g} to {max(values):g} mm); split the loop or fix its header"
            )
        return values[0], "pixel_spacing", crop
    return None, "none", crop


def _is_cm(region: Any) -> bool:
    try:
        return (
            int(region.get("PhysicalUnitsXDirection", 0)) == UNIT_CM
            and int(region.get("PhysicalUnitsYDirection", 0)) == UNIT_CM
            and "PhysicalDeltaX" in region
            and "PhysicalDeltaY" in region
        )
    except (TypeError, ValueError):
        return False


def _pick_region(regions: list[Any]) -> Any:
    """The scan sector: the largest 2D region calibrated in cm, else the largest 2D
    region, else the largest region (dual views and Doppler strips have several)."""

    def area(r: Any) -> int:
        return (int(r.get("RegionLocationMaxX1", 0)) - int(r.get("RegionLocationMinX0", 0))) * (
            int(r.get("RegionLocationMaxY1", 0)) - int(r.get("RegionLocationMinY0", 0))
        )

    two_d = [r for r in regions if int(r.get("RegionSpatialFormat", 0) or 0) == SPATIAL_2D]
    for pool in ([r for r in two_d if _is_cm(r)], two_d, regions):
        if pool:
            return max(pool, key=area)
    raise AssertionError("unreachable: regions is not empty")


def _pixel_spacings(ds: Any, n_frames: int) -> list[tuple[float, float]]:
    """PixelSpacing of the file, or of each frame (enhanced multi-frame functional groups)."""
    out = []
    if "PixelSpacing" in ds and ds.PixelSpacing:
        out.append(tuple(ds.PixelSpacing[:2]))
    for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(key, []) or []:
            for measures in group.get("PixelMeasuresSequence", []) or []:
                if "PixelSpacing" in measures and measures.PixelSpacing:
                    out.append(tuple(measures.PixelSpacing[:2]))
    return out


# ----------------------------------------------------------------------------- pixels


def to_gray8(frame: np.ndarray, photometric: str, bits_stored: int, signed: bool) -> np.ndarray:
    """One decoded frame to ``[H, W]`` uint8 grayscale.

    Args:
        frame: ``[H, W]`` or ``[H, W, 3]`` as pydicom decodes it (YBR already as RGB).
        photometric: the file's photometric interpretation.
        bits_stored: bits per sample; wider than 8 is rescaled by the full range, so
            frames of one loop keep one scale.
        signed: pixel representation 1 (two's complement).

    Returns:
        The grayscale frame; MONOCHROME1 is inverted so that bright is echo.
    """
    arr = np.asarray(frame)
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.float64)
        gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        if arr.dtype != np.uint8:
            gray = gray / (2**bits_stored - 1) * 255.0
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    values = arr.astype(np.float64)
    if signed:
        values = values + 2 ** (bits_stored - 1)
    top = 2**bits_stored - 1
    if photometric == "MONOCHROME1":
        values = top - values
    if bits_stored != 8 or arr.dtype != np.uint8:
        values = values / top * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


_LAST_DECODED: dict[str, Any] = {}


def decode_frames(header: DicomHeader) -> np.ndarray:
    """All frames of a file, cropped to the sector: ``[F, H, W]`` uint8 grayscale, or
    ``[F, H, W, 3]`` uint8 RGB for colour files (overlay removal finds colour marks by
    their chroma; :func:`load_frame` turns them to gray).

    The last file decoded is cached: frames of one loop are read one after another.

    Raises:
        UserInputError: pixel data that the handler cannot decode (corrupt or truncated).
    """
    key = f"{header.path}:{header.path.stat().st_mtime_ns}"
    if _LAST_DECODED.get("key") == key:
        return _LAST_DECODED["frames"]
    import pydicom

    try:
        ds = pydicom.dcmread(header.path)
        arr = ds.pixel_array
    except Exception as exc:  # a handler's own error: name the file
        raise UserInputError(f"{header.path}: cannot decode pixel data ({exc})") from exc
    color = header.photometric not in ("MONOCHROME1", "MONOCHROME2")
    if header.n_frames == 1:
        arr = arr[None]
    if arr.ndim != (4 if color else 3):
        raise UserInputError(
            f"{header.path}: decoded pixel data has shape {arr.shape}, expected "
            f"{header.n_frames} frame(s) of {header.rows}x{header.columns}"
        )
    if color:
        frames = arr[..., :3]
        if frames.dtype != np.uint8:
            frames = np.rint(frames / (2**header.bits_stored - 1) * 255.0).clip(0, 255)
        frames = frames.astype(np.uint8)
    else:
        frames = np.stack(
            [to_gray8(f, header.photometric, header.bits_stored, header.signed) for f in arr]
        )
    if header.crop is not None:
        x0, y0, x1, y1 = header.crop
        frames = frames[:, y0 : y1 + 1, x0 : x1 + 1]
    frames = np.ascontiguousarray(frames)
    _LAST_DECODED.clear()
    _LAST_DECODED.update(key=key, frames=frames)
    return frames


def load_frame(header: DicomHeader, index: int, clean: Any = None) -> np.ndarray:
    """One frame, cropped and (when ``clean`` is given) with overlays inpainted."""
    frame = decode_frames(header)[index]
    if clean is not None:
        from fusynth.data.clean import clean_image

        return clean_image(frame, clean).image
    if frame.ndim == 3:
        frame = to_gray8(frame, "RGB", 8, False)
    return frame


# ----------------------------------------------------------------------------- reader


def list_dicom_files(src: Path) -> list[Path]:
    """Every file under ``src`` that should be DICOM: hidden files, DICOMDIR and text
    files (CSV, notes) are skipped; anything else that is not DICOM is an error later."""
    out = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if path.name.upper() in SKIPPED_NAMES or path.suffix.lower() in SKIPPED_SUFFIXES:
            continue
        out.append(path)
    return out


def _csv_path(src: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() or path.exists() else src / name


def _entries(src: Path, options: ReaderOptions) -> list[tuple[Path, str, str | None]]:
    """``(file, view, subject or None)`` from the CSV, or every file with ``--view``."""
    if options.csv:
        path = _csv_path(src, options.csv)
        entries = []
        for lineno, row in read_csv(path, ("file", "view")):
            where = f"{path} line {lineno}"
            file = safe_join(src, row["file"], f"{where} column 'file'")
            if not file.is_file():
                raise UserInputError(f"{where} column 'file': {file} not found")
            view = canonical_view(row["view"], f"{where} column 'view'")
            entries.append((file, view, row.get("subject") or None))
        return entries
    view = canonical_view(options.view, "--view")
    return [(p, view, None) for p in list_dicom_files(src)]


def read_dicom_folder(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """The ``dicom`` format: list and check every file, one sample per kept frame.

    Every header is read and checked here, before :func:`fusynth.data.prepare.prepare`
    writes anything; pixels are decoded later, frame by frame.

    Args:
        src: folder tree of DICOM files.
        options: ``csv`` (``file,view[,subject]``), ``view``, ``center``, ``cohort`` and
            ``dicom`` (a :class:`DicomOptions` with the salt set).

    Returns:
        One :class:`SourceSample` per kept frame, with a pixel loader.

    Raises:
        UserInputError: no salt, or any bad file (see :func:`read_header`), a file with
            burned-in annotation without ``--clean``, a file with no subject.
    """
    dopts = options.dicom if options.dicom is not None else DicomOptions()
    if not dopts.subject_salt:
        raise UserInputError(
            "--subject_salt: the dicom format needs a salt for subject ids "
            "(prepare_dicom finds or makes one)"
        )
    salt = dopts.subject_salt
    clean = None
    if dopts.clean:
        from fusynth.data.clean import CleanOptions

        clean = dopts.clean_options or CleanOptions()
    cohort = options.cohort or DEFAULT_COHORT
    entries = _entries(src, options)
    samples: list[SourceSample] = []
    for file, view, subject in entries:
        header = read_header(file, salt, keep_device=dopts.keep_device)
        if header.burned_in and clean is None:
            raise UserInputError(
                f"{file}: BurnedInAnnotation is YES (text burned into the pixels); pass "
                "--clean to remove overlays, or leave the file out"
            )
        if subject is None:
            if header.patient_key is None:
                raise UserInputError(
                    f"{file}: no PatientID to derive the subject from; give a 'subject' "
                    "column in --csv"
                )
            subject = f"{cohort}:{header.patient_key}"
        rel = file.relative_to(src).as_posix() if file.is_relative_to(src) else file.name
        for index in frame_indices(header.n_frames, dopts.frames):
            prov: dict[str, Any] = {
                "source": "dicom",
                "file": salted_hash(salt, rel),
                "frame": index,
                "frames": header.n_frames,
                "spacing_from": header.spacing_from,
                "sector_crop": list(header.crop) if header.crop else None,
                "cleaned": clean is not None,
            }
            prov.update(header.device)
            loader: Callable[[], np.ndarray] = partial(load_frame, header, index, clean)
            samples.append(
                SourceSample(
                    image_path=file,
                    view=view,
                    subject_id=subject,
                    cohort=cohort,
                    center=options.center,
                    pixel_spacing_mm=header.spacing_mm,
                    provenance=prov,
                    loader=loader,
                )
            )
    return samples


def salt_file_for(out: str | os.PathLike) -> Path:
    """Where a dataset's own subject salt lives: beside ``OUT``, as ``OUT.salt``, so
    that publishing or sharing the prepared folder never carries it."""
    out = Path(out)
    return out.with_name(out.name + ".salt")
