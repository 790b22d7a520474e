"""The registry of source layouts ``fusynth data prepare --format`` reads.

Readers of the public layouts live in :mod:`fusynth.data.readers`, the DICOM reader in
:mod:`fusynth.data.dicom` (pydicom is imported only when a DICOM folder is read).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fusynth.data.readers import (
    ReaderOptions,
    SourceSample,
    read_african,
    read_fetal_planes_db,
    read_hc18,
    read_imagefolder,
    read_metadata,
    read_pairs,
)


def read_dicom(src: Path, options: ReaderOptions) -> list[SourceSample]:
    """DICOM files from the scanner (see :mod:`fusynth.data.dicom`)."""
    from fusynth.data.dicom import read_dicom_folder

    return read_dicom_folder(src, options)


#: Format name -> reader. Plain dict, as segment-anything's model registry.
FORMATS: dict[str, Callable[[Path, ReaderOptions], list[SourceSample]]] = {
    "hc18": read_hc18,
    "fetal_planes_db": read_fetal_planes_db,
    "african": read_african,
    "pairs": read_pairs,
    "imagefolder": read_imagefolder,
    "metadata": read_metadata,
    "dicom": read_dicom,
}
