"""Turn a source folder into a prepared dataset (the fusynth schema, split by subject)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from fusynth.core.errors import UserInputError, suggest
from fusynth.core.io import atomic_dir, check_output_dir
from fusynth.data.formats import FORMATS
from fusynth.data.images import encode_png, read_grayscale, read_mask
from fusynth.data.readers import ReaderOptions, SourceSample
from fusynth.data.schema import FEATURES, SPLITS, provenance_json, save_prepared
from fusynth.data.splits import assign_splits

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote."""

    out: Path
    counts: dict[str, int]
    notes: list[str]


def decode_sample(sample: SourceSample, split: str) -> dict[str, Any]:
    """Read one source sample's pixels into a schema row.

    Raises:
        UserInputError: unreadable image or mask, size mismatch, unclosed outline,
            empty mask (each naming the file).
    """
    image = sample.loader() if sample.loader is not None else read_grayscale(sample.image_path)
    mask = None
    if sample.mask_path is not None:
        label = read_mask(sample.mask_path, sample.mask_kind, shape=image.shape)
        mask = {"bytes": encode_png(label), "path": None}
    return {
        "image": {"bytes": encode_png(image), "path": None},
        "mask": mask,
        "view": sample.view,
        "subject_id": sample.subject_id,
        "cohort": sample.cohort,
        "center": sample.center,
        "pixel_spacing_mm": sample.pixel_spacing_mm,
        "head_circumference_mm": sample.head_circumference_mm,
        "split": split,
        "synthetic": False,
        "provenance": provenance_json(sample.provenance),
    }


def _rows(samples: Sequence[SourceSample], split: str) -> Iterator[dict[str, Any]]:
    # tqdm stays quiet when stderr is not a terminal (disable=None).
    for sample in tqdm(samples, desc=f"reading {split}", unit="img", disable=None, leave=False):
        yield decode_sample(sample, split)


def build_dataset_dict(
    samples: Sequence[SourceSample], splits: Sequence[str], cache_dir: str | os.PathLike
) -> datasets.DatasetDict:
    """Decode samples split by split, streaming to Arrow files under ``cache_dir``.

    Streaming keeps memory flat for full-size datasets (FETAL_PLANES_DB has 12,400
    images).
    """
    by_split: dict[str, list[SourceSample]] = {}
    for sample, split in zip(samples, splits, strict=True):
        by_split.setdefault(split, []).append(sample)
    out = {}
    for split in SPLITS:
        if split not in by_split:
            continue
        try:
            out[split] = datasets.Dataset.from_generator(
                _rows,
                features=FEATURES,
                gen_kwargs={"samples": by_split[split], "split": split},
                cache_dir=str(cache_dir),
                split=datasets.Split(split) if split != "unlabeled" else "unlabeled",
            )
        except datasets.exceptions.DatasetGenerationError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, UserInputError):
                raise cause from None
            raise
    return datasets.DatasetDict(out)


def prepare(
    fmt: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    options: ReaderOptions | None = None,
) -> PrepareResult:
    """Read ``src`` in layout ``fmt`` and write a prepared dataset to ``out``.

    Splits are by subject, deterministic for ``seed``; a publisher's own test split is
    kept (see :func:`fusynth.data.splits.assign_splits`). ``out`` appears only when
    complete.

    Args:
        fmt: one of :data:`fusynth.data.readers.FORMATS`.
        src: the source folder in the publisher's layout.
        out: the output folder.
        seed: split seed.
        val_fraction: share of training subjects held out for validation.
        test_fraction: share of subjects held out for test when the publisher has no
            test split.
        overwrite: replace an existing ``out``.
        options: options of the generic layouts.

    Returns:
        Where it wrote, the count per split, and notes on what was done.

    Raises:
        UserInputError: any problem with the input, naming the file, row or column.
    """
    if fmt not in FORMATS:
        raise UserInputError(
            f"--format: unknown format {fmt!r}{suggest(fmt, FORMATS)}; "
            f"choose from {', '.join(FORMATS)}"
        )
    src = Path(src)
    if not src.is_dir():
        raise UserInputError(f"{src}: source folder not found")
    check_output_dir(out, overwrite)
    options = options or ReaderOptions()
    samples = FORMATS[fmt](src, options)
    if not samples:
        raise UserInputError(f"{src}: no samples found for format {fmt!r} (empty dataset)")
    per_file = per_file_subjects_warning(fmt, options, len(samples))
    splits, notes = assign_splits(
        [s.subject_id for s in samples],
        [s.publisher_split for s in samples],
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        views=[s.view for s in samples],
    )
    out = Path(out)
    with (
        atomic_dir(out, overwrite=overwrite, kind="prepared-dataset") as tmp,
        tempfile.TemporaryDirectory(prefix=".fusynth-cache-", dir=out.parent) as cache,
    ):
        dsd = build_dataset_dict(samples, splits, cache)
        save_prepared(dsd, tmp)
        counts = {k: len(v) for k, v in dsd.items()}
        # Release the Arrow memory maps before the cache folder is removed.
        del dsd
    for note in notes:
        log.info(note)
    if per_file:
        log.warning(per_file)
        notes.insert(0, f"WARNING: {per_file}")
    return PrepareResult(out=out, counts=counts, notes=notes)


#: Layouts whose subject is the file name unless ``--subject_regex`` says otherwise.
STEM_SUBJECT_FORMATS = ("imagefolder", "pairs")


def per_file_subjects_warning(fmt: str, options: ReaderOptions, n: int) -> str | None:
    """The small-data trap of a layout without subjects: each file becomes its own
    subject, so two frames of one patient can fall on both sides of a split.

    Returns:
        The warning, or None when subjects were given (or there is one file).
    """
    if fmt not in STEM_SUBJECT_FORMATS or options.subject_regex is not None or n < 2:
        return None
    return (
        f"--format {fmt} without --subject_regex: each of the {n} files is its own subject, "
        "so frames of one patient can land in both train and test and scores will be "
        "optimistic; give --subject_regex (a regular expression whose first group is the "
        "patient id in the file name, e.g. '^(P\\d+)_') when a patient has several images"
    )


def prepare_dicom(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: ReaderOptions | None = None,
    **kwargs: Any,
) -> Any:
    """``prepare`` for the ``dicom`` format, with the subject salt handled.

    The salt is ``options.dicom.subject_salt`` when given (``--subject_salt``); else the
    one in ``OUT.salt`` from an earlier run (so re-preparing keeps the subject ids);
    else a new random one, written to ``OUT.salt`` (mode 0600) only once the dataset is
    complete. Anyone holding the salt can test guesses of PatientIDs against the ids:
    keep the file private.

    Args:
        src: folder tree of DICOM files.
        out: the prepared dataset folder.
        options: reader options, ``options.dicom`` a :class:`DicomOptions`.
        **kwargs: passed to :func:`fusynth.data.prepare.prepare` (seed, fractions,
            overwrite).

    Returns:
        :class:`fusynth.data.prepare.PrepareResult`; its notes say where the salt is.
    """
    import secrets
    from dataclasses import replace

    from fusynth.core.io import atomic_write_bytes
    from fusynth.data.dicom import DicomOptions, salt_file_for

    options = options or ReaderOptions()
    dopts = options.dicom if options.dicom is not None else DicomOptions()
    salt_file = salt_file_for(out)
    new_salt = None
    if dopts.subject_salt:
        salt = dopts.subject_salt
    elif salt_file.is_file():
        salt = salt_file.read_text().strip()
        if not salt:
            raise UserInputError(
                f"{salt_file}: salt file is empty; delete it or pass --subject_salt"
            )
    else:
        salt = new_salt = secrets.token_hex(16)
    options = replace(options, dicom=replace(dopts, subject_salt=salt))
    result = prepare("dicom", src, out, options=options, **kwargs)
    if new_salt is not None:
        # 0600 from the start, whatever the umask: the salt is a secret.
        atomic_write_bytes(salt_file, (new_salt + "\n").encode(), mode=0o600)
        result.notes.append(
            f"subject salt written to {salt_file}: keep it private and out of anything you "
            "publish; re-preparing into the same OUT reuses it"
        )
    elif not dopts.subject_salt:
        result.notes.append(f"subject salt read from {salt_file}")
    return result
