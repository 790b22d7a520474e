"""Readers for public fetal ultrasound datasets in their publishers' own layouts.

Each reader lists a source folder into :class:`SourceSample` records (paths and labels,
no pixels); :mod:`fusynth.data.prepare` decodes them into the schema. Readers are plain
functions in the :data:`fusynth.data.formats.FORMATS` registry.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fusynth.core.errors import UserInputError, suggest
from fusynth.data.images import MASK_KINDS
from fusynth.data.schema import SPLITS, canonical_view

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class SourceSample:
    """One sample as found in a source folder, before decoding."""

    image_path: Path
    view: str
    subject_id: str
    cohort: str
    center: str = ""
    mask_path: Path | None = None
    mask_kind: str = "filled"
    pixel_spacing_mm: float | None = None
    head_circumference_mm: float | None = None
    publisher_split: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Decodes the ``[H, W]`` uint8 pixels when a file holds more than one image (DICOM).
    loader: Callable[[], Any] | None = None


@dataclass
class ReaderOptions:
    """Options of the generic layouts (``pairs``, ``imagefolder``, ``metadata``)."""

    csv: str | None = None
    images_subdir: str = "images"
    masks_subdir: str = "masks"
    mask_suffix: str = ""
    mask_kind: str = "filled"
    view: str = "head"
    subject_regex: str | None = None
    center: str = ""
    cohort: str | None = None
    #: Options of the ``dicom`` format (:class:`fusynth.data.dicom.DicomOptions`).
    dicom: Any = None

    def __post_init__(self) -> None:
        if self.mask_kind not in MASK_KINDS:
            raise UserInputError(
                f"--mask_kind: {self.mask_kind!r} is not one of {', '.join(MASK_KINDS)}"
                + suggest(self.mask_kind, MASK_KINDS)
            )
        if self.subject_regex is not None:
            try:
                re.compile(self.subject_regex)
            except re.error as exc:
                raise UserInputError(f"--subject_regex: invalid regular expression: {exc}") from exc


# ----------------------------------------------------------------------------- helpers


def safe_join(root: Path, name: str, where: str) -> Path:
    """Join a file name from a CSV to ``root``, refusing anything that leaves it.

    Raises:
        UserInputError: absolute paths, ``..`` components, or a path resolving outside
            ``root``.
    """
    name = str(name).strip()
    if not name:
        raise UserInputError(f"{where}: empty file name")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            raise UserInputError(f"{where}: file name {name!r} points outside {root}")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserInputError(f"{where}: file name {name!r} points outside {root}")
    return path


def read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Read a publisher CSV (``,`` or ``;`` separated; header names are stripped).

    Args:
        path: the CSV file.
        required: columns that must be present.

    Returns:
        ``(line number, row)`` pairs; the header is line 1.

    Raises:
        UserInputError: missing file, or a missing required column (the message lists
            the columns found).
    """
    if not path.is_file():
        raise UserInputError(f"{path}: CSV file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: cannot read CSV ({exc})") from exc
    lines = text.splitlines()
    if not lines:
        raise UserInputError(f"{path}: CSV is empty")
    header = lines[0]
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    columns = [c.strip() for c in next(reader)]
    for col in required:
        if col not in columns:
            raise UserInputError(
                f"{path}: missing required column {col!r}{suggest(col, columns)} "
                f"(found: {', '.join(columns)})"
            )
    rows = []
    for lineno, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) < len(columns):
            values = values + [""] * (len(columns) - len(values))
        rows.append((lineno, {c: v.strip() for c, v in zip(columns, values, strict=False)}))
    return rows


def parse_float(value: str, where: str) -> float | None:
    """Parse an optional positive float cell ('' -> None)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        out = float(value)
    except ValueError:
        raise UserInputError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(out) or out <= 0:
        raise UserInputError(f"{where}: {value!r} must be a positive number")
    return out


def _publisher_train_flag(value: str, where: str) -> str:
    if value.strip() in ("1", "1.0", "True", "true"):
        return "train"
    if value.strip() in ("0", "0.0", "False", "false"):
        return "test"
    raise UserInputError(f"{where}: Train must be 1 or 0, got {value!r}")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserInputError(f"{path}: {what} folder not found")
    return path


def _image_file(images: Path, name: str, where: str) -> Path:
    path = safe_join(images, name if Path(name).suffix else name + ".png", where)
    if not path.is_file():
        raise UserInputError(f"{where}: image {path} not found")
    return path


def _find_csv(src: Path, options: ReaderOptions, default: str | None) -> Path:
    if options.csv:
        path = Path(options.csv)
        return path if path.is_absolute() or path.exists() else src / options.csv
    if default and (src / default).is_file():
        return src / default
    found = sorted(src.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserInputError(
            f"{src}: no CSV file found" + (f" (expected {default})" if default else "")
        )
    raise UserInputError(
        f"{src}: several CSV files ({', '.join(p.name for p in found)}); choose one with --csv"
    )


def _subject_from_stem(stem: str, regex: str | None, where: str) -> str:
    if regex is None:
        return stem
    m = re.search(regex, stem)
    if not m:
        raise UserInputError(f"{where}: --subject_regex {regex!r} does not match {stem!r}")
    return m.group(1) if m.groups() else m.group(0)


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


# ----------------------------------------------------------------------------- readers

_HC18_NAME = re.compile(r"^(\d+)_(\d*)HC$")


def read_hc18(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """HC18: ``training_set/NNN_HC.png`` + ``NNN_HC_Annotation.png`` (ellipse outline).

    ``NNN_HC`` and ``NNN_2HC`` are one exam, so one subject. Pixel size and head
    circumference come from ``training_set_pixel_size_and_HC.csv`` when present;
    ``test_set/`` images (no annotations) go to the ``unlabeled`` split.
    """
    train_dir, test_dir = src / "training_set", src / "test_set"
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise UserInputError(f"{src}: no training_set/ or test_set/ folder (HC18 layout)")
    samples: list[SourceSample] = []
    for folder, kind in ((train_dir, "train"), (test_dir, "unlabeled")):
        if not folder.is_dir():
            continue
        spacing, hc = _hc18_csv(src, kind)
        trimester = _hc18_trimester(src)
        for path in _list_images(folder):
            m = _HC18_NAME.match(path.stem)
            if not m:
                continue  # annotations and stray files
            mask = None
            if kind == "train":
                mask = path.with_name(f"{path.stem}_Annotation{path.suffix}")
                if not mask.is_file():
                    raise UserInputError(f"{path}: no annotation {mask.name} beside it")
            prov = {"source": f"{folder.name}/{path.name}"}
            if path.name in trimester:
                prov["trimester"] = trimester[path.name]
            samples.append(
                SourceSample(
                    image_path=path,
                    view="head",
                    subject_id=f"hc18:{'test-' if kind != 'train' else ''}{int(m.group(1)):03d}",
                    cohort="hc18",
                    center="Netherlands",
                    mask_path=mask,
                    mask_kind="outline",
                    pixel_spacing_mm=spacing.get(path.name),
                    head_circumference_mm=hc.get(path.name),
                    publisher_split=kind,
                    provenance=prov,
                )
            )
    return samples


def _hc18_csv(src: Path, kind: str) -> tuple[dict[str, float], dict[str, float]]:
    name = "training_set_pixel_size_and_HC.csv" if kind == "train" else "test_set_pixel_size.csv"
    path = src / name
    if not path.is_file():
        return {}, {}
    rows = read_csv(path, ("filename",))
    columns = list(rows[0][1]) if rows else []
    px_col = next((c for c in columns if "pixel size" in c.lower()), None)
    hc_col = next((c for c in columns if "head circumference" in c.lower()), None)
    if px_col is None:
        raise UserInputError(
            f"{path}: missing required column 'pixel size(mm)' (found: {', '.join(columns)})"
        )
    spacing, hc = {}, {}
    for lineno, row in rows:
        where = f"{path} line {lineno}"
        spacing[row["filename"]] = parse_float(row[px_col], f"{where} column {px_col!r}")
        if hc_col:
            hc[row["filename"]] = parse_float(row[hc_col], f"{where} column {hc_col!r}")
    return spacing, hc


def _hc18_trimester(src: Path) -> dict[str, int]:
    path = src / "trimester.csv"
    if not path.is_file():
        return {}
    out = {}
    for lineno, row in read_csv(path, ("filename", "trimester")):
        try:
            out[row["filename"]] = int(row["trimester"])
        except ValueError:
            raise UserInputError(
                f"{path} line {lineno}: trimester {row['trimester']!r} is not a whole number"
            ) from None
    return out


def read_fetal_planes_db(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """FETAL_PLANES_DB: ``Images/*.png`` and ``FETAL_PLANES_DB_data.csv`` (``;``).

    The ``Train`` column (1 train, 0 test) is the publisher's split and is kept.
    """
    images = _require_dir(src / "Images", "Images/")
    path = _find_csv(src, options, "FETAL_PLANES_DB_data.csv")
    samples = []
    for lineno, row in read_csv(path, ("Image_name", "Patient_num", "Plane", "Train")):
        where = f"{path} line {lineno}"
        image = _image_file(images, row["Image_name"], f"{where} column 'Image_name'")
        samples.append(
            SourceSample(
                image_path=image,
                view=canonical_view(row["Plane"], f"{where} column 'Plane'"),
                subject_id=f"fetal_planes_db:{_patient(row['Patient_num'], where)}",
                cohort="fetal_planes_db",
                center="Spain",
                publisher_split=_publisher_train_flag(row["Train"], f"{where} column 'Train'"),
                provenance={"source": f"Images/{image.name}", "plane": row["Plane"]},
            )
        )
    return samples


def read_african(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """African fetal planes: ``Images/*.png`` and a CSV with
    ``Patient_num,Plane,Train,Center,Image_name``. Patients are numbered per country, so
    the subject is the country and the number.
    """
    images = _require_dir(src / "Images", "Images/")
    path = _find_csv(src, options, None)
    samples = []
    for lineno, row in read_csv(path, ("Patient_num", "Plane", "Train", "Center", "Image_name")):
        where = f"{path} line {lineno}"
        image = _image_file(images, row["Image_name"], f"{where} column 'Image_name'")
        center = row["Center"]
        if not center:
            raise UserInputError(f"{where} column 'Center': empty")
        samples.append(
            SourceSample(
                image_path=image,
                view=canonical_view(row["Plane"], f"{where} column 'Plane'"),
                subject_id=f"african:{center}-{_patient(row['Patient_num'], where)}",
                cohort="african",
                center=center,
                publisher_split=_publisher_train_flag(row["Train"], f"{where} column 'Train'"),
                provenance={"source": f"Images/{image.name}", "plane": row["Plane"]},
            )
        )
    return samples


def _patient(value: str, where: str) -> str:
    value = value.strip()
    if not value:
        raise UserInputError(f"{where} column 'Patient_num': empty")
    return f"{int(value):05d}" if value.isdigit() else value


def read_pairs(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """Any image/mask folder pair: ``images/X.png`` with ``masks/X<suffix>.png``."""
    images = _require_dir(src / options.images_subdir, f"--images_subdir {options.images_subdir!r}")
    masks = _require_dir(src / options.masks_subdir, f"--masks_subdir {options.masks_subdir!r}")
    view = canonical_view(options.view, "--view")
    same_dir = images.resolve() == masks.resolve()
    samples = []
    for path in _list_images(images):
        if same_dir and options.mask_suffix and path.stem.endswith(options.mask_suffix):
            continue
        candidates = [masks / f"{path.stem}{options.mask_suffix}{s}" for s in (path.suffix, ".png")]
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            raise UserInputError(f"{path}: no mask {candidates[0].name} in {masks}")
        subject = _subject_from_stem(path.stem, options.subject_regex, str(path))
        samples.append(
            SourceSample(
                image_path=path,
                view=view,
                subject_id=subject,
                cohort=options.cohort or src.resolve().name,
                center=options.center,
                mask_path=mask,
                mask_kind=options.mask_kind,
                provenance={"source": f"{options.images_subdir}/{path.name}"},
            )
        )
    return samples


def read_imagefolder(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """One subfolder per view (``SRC/brain/*.png``), optionally under split folders
    (``SRC/train/brain/*.png``, ``SRC/test/...``), as in Hugging Face's imagefolder.
    """
    top = [p for p in sorted(src.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    split_names = {"train": "train", "test": "test", "val": None, "validation": None}
    if top and all(p.name.lower() in split_names for p in top):
        groups = [(p, split_names[p.name.lower()]) for p in top]
    else:
        groups = [(src, None)]
    samples = []
    for root, split in groups:
        for folder in sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            view = canonical_view(folder.name, f"{folder} (folder name)")
            for path in _list_images(folder):
                subject = _subject_from_stem(path.stem, options.subject_regex, str(path))
                samples.append(
                    SourceSample(
                        image_path=path,
                        view=view,
                        subject_id=subject,
                        cohort=options.cohort or src.resolve().name,
                        center=options.center,
                        publisher_split=split,
                        provenance={"source": str(path.relative_to(src).as_posix())},
                    )
                )
    return samples


METADATA_COLUMNS = (
    "file_name",
    "view",
    "mask_file_name",
    "subject_id",
    "cohort",
    "center",
    "pixel_spacing_mm",
    "head_circumference_mm",
    "split",
)


def read_metadata(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """Images listed in ``metadata.csv`` (Hugging Face imagefolder's convention).

    Required columns: ``file_name``, ``view``. Optional: ``mask_file_name``,
    ``subject_id`` (default: the file stem), ``cohort``, ``center``,
    ``pixel_spacing_mm``, ``head_circumference_mm``, ``split`` (train/test/unlabeled).
    The phantom generator writes this layout.
    """
    path = _find_csv(src, options, "metadata.csv")
    samples = []
    for lineno, row in read_csv(path, ("file_name", "view")):
        where = f"{path} line {lineno}"
        image = safe_join(src, row["file_name"], f"{where} column 'file_name'")
        if not image.is_file():
            raise UserInputError(f"{where} column 'file_name': image {image} not found")
        mask = None
        if row.get("mask_file_name"):
            mask = safe_join(src, row["mask_file_name"], f"{where} column 'mask_file_name'")
            if not mask.is_file():
                raise UserInputError(f"{where} column 'mask_file_name': mask {mask} not found")
        split = row.get("split") or None
        if split not in (None, "train", "test", "unlabeled"):
            raise UserInputError(
                f"{where} column 'split': {split!r} is not train, test or unlabeled"
                + suggest(split, SPLITS)
            )
        samples.append(
            SourceSample(
                image_path=image,
                view=canonical_view(row["view"], f"{where} column 'view'"),
                subject_id=row.get("subject_id") or image.stem,
                cohort=row.get("cohort") or options.cohort or src.resolve().name,
                center=row.get("center") or options.center,
                mask_path=mask,
                mask_kind=options.mask_kind,
                pixel_spacing_mm=parse_float(
                    row.get("pixel_spacing_mm", ""), f"{where} column 'pixel_spacing_mm'"
                ),
                head_circumference_mm=parse_float(
                    row.get("head_circumference_mm", ""), f"{where} column 'head_circumference_mm'"
                ),
                publisher_split=split,
                provenance={"source": row["file_name"]},
            )
        )
    return samples
