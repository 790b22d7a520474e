"""``fusynth data prepare --format dicom``: DICOM files built here with pydicom."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from fusynth.cli.main import main
from fusynth.core.errors import UserInputError
from fusynth.data.dicom import (
    available_transfer_syntaxes,
    frame_indices,
    parse_frames,
    salted_hash,
)
from fusynth.data.images import decode_image
from fusynth.data.schema import load_prepared

#: Identifying values put in every standard PHI tag; none may reach any output byte.
PHI = {
    "PatientName": "DOE^JANE^QUINN",
    "PatientBirthDate": "19850317",
    "PatientAddress": "12 Harbour Road, Springfield",
    "PatientTelephoneNumbers": "+44 20 7946 0958",
    "OtherPatientIDs": "NHS-943-476-5919",
    "PatientAge": "038Y",
    "PatientSex": "F",
    "StudyDate": "20240211",
    "SeriesDate": "20240212",
    "AcquisitionDate": "20240213",
    "ContentDate": "20240214",
    "StudyTime": "101512",
    "InstitutionName": "St Elsewhere Maternity",
    "InstitutionAddress": "1 Hospital Way, Shelbyville",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "QUINN^MICHAELA",
    "OperatorsName": "SONO^SALLY",
    "AccessionNumber": "ACC99887766",
    "StudyID": "STUDY4242",
    "StationName": "US-ROOM-SEVEN",
    "DeviceSerialNumber": "SN-55AA77BB",
    "StudyDescription": "Anomaly scan for Jane Doe",
    "SeriesDescription": "Cine of twin B",
    "ImageComments": "patient anxious, partner Robert Doe present",
    "Manufacturer": "AcmeSoundCorp",
    "ManufacturerModelName": "EchoMaster-9000",
}
PATIENT_IDS = [f"MRN-8347{i:04d}" for i in range(6)]


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str | None = PATIENT_IDS[0],
    photometric: str = "MONOCHROME2",
    region: dict | None = None,
    pixel_spacing: list[float] | None = None,
    per_frame_spacing: list[list[float]] | None = None,
    burned_in: str | None = None,
    phi: bool = True,
    syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
) -> Path:
    """A small ultrasound DICOM file: ``pixels`` is [H, W], [F, H, W] or [.., 3] uint8."""
    meta = FileMetaDataset()
    multi = pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3)
    meta.MediaStorageSOPClassUID = (
        UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    )
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.111222333444"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.555666777888"
    ds.Modality = "US"
    if phi:
        for key, value in PHI.items():
            setattr(ds, key, value)
    if patient_id is not None:
        ds.PatientID = patient_id
    color = pixels.shape[-1] == 3 and pixels.ndim >= 3
    frames = pixels.shape[0] if multi else 1
    h, w = pixels.shape[-3:-1] if color else pixels.shape[-2:]
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = photometric
    if color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if multi:
        ds.NumberOfFrames = frames
    if region is not None:
        r = Dataset()
        r.RegionSpatialFormat = 1
        r.RegionDataType = 1
        r.RegionFlags = 0
        r.RegionLocationMinX0, r.RegionLocationMinY0 = region["x0"], region["y0"]
        r.RegionLocationMaxX1, r.RegionLocationMaxY1 = region["x1"], region["y1"]
        r.PhysicalUnitsXDirection = region.get("units", 3)
        r.PhysicalUnitsYDirection = region.get("units", 3)
        r.PhysicalDeltaX = region["dx_cm"]
        r.PhysicalDeltaY = region.get("dy_cm", region["dx_cm"])
        ds.SequenceOfUltrasoundRegions = [r]
    if pixel_spacing is not None:
        ds.PixelSpacing = pixel_spacing
    if per_frame_spacing is not None:
        groups = []
        for spacing in per_frame_spacing:
            measures = Dataset()
            measures.PixelSpacing = spacing
            group = Dataset()
            group.PixelMeasuresSequence = [measures]
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = groups
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    if pixel_data is not None:
        ds.PixelData = pixel_data
    else:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def noise(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 200, size=shape, dtype=np.uint8)


def prepare(src: Path, out: Path, *extra: str) -> int:
    return main(["data", "prepare", "--format", "dicom", str(src), str(out), *extra])


def rows(out: Path) -> list[dict]:
    dsd = load_prepared(out)
    return [dict(r) for split in dsd for r in dsd[split]]


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


# ----------------------------------------------------------------------------- spacing, crop


def test_region_spacing_in_mm_and_crop_to_region(tmp_path):
    pixels = noise(0, 64, 80)
    region = {"x0": 10, "y0": 5, "x1": 49, "y1": 44, "dx_cm": 0.02}
    write_dicom(tmp_path / "src" / "a.dcm", pixels, region=region)
    assert prepare(tmp_path / "src", tmp_path / "out", "--view", "brain") == 0
    (row,) = rows(tmp_path / "out")
    assert row["pixel_spacing_mm"] == pytest.approx(0.2, rel=1e-6)  # 0.02 cm -> 0.2 mm
    image = decode_image(row["image"])
    assert image.shape == (40, 40)  # DICOM region bounds are inclusive
    np.testing.assert_array_equal(image, pixels[5:45, 10:50])
    prov = json.loads(row["provenance"])
    assert prov["spacing_from"] == "region" and prov["sector_crop"] == [10, 5, 49, 44]


def test_pixel_spacing_when_no_region_and_none_without_either(tmp_path):
    write_dicom(tmp_path / "src" / "a.dcm", noise(1, 32, 40), pixel_spacing=[0.15, 0.15])
    write_dicom(tmp_path / "src" / "b.dcm", noise(2, 32, 40), patient_id=PATIENT_IDS[1], phi=False)
    assert prepare(tmp_path / "src", tmp_path / "out", "--view", "head") == 0
    spacings = sorted(
        (r["pixel_spacing_mm"] for r in rows(tmp_path / "out")), key=lambda v: v is None
    )
    assert spacings[0] == pytest.approx(0.15) and spacings[1] is None
    assert all(decode_image(r["image"]).shape == (32, 40) for r in rows(tmp_path / "out"))


def test_region_in_other_units_falls_back_to_pixel_spacing_but_still_crops(tmp_path):
    region = {"x0": 0, "y0": 0, "x1": 29, "y1": 19, "dx_cm": 0.5, "units": 4}  # seconds
    write_dicom(
        tmp_path / "src" / "a.dcm", noise(3, 32, 40), region=region, pixel_spacing=[0.3, 0.3]
    )
    assert prepare(tmp_path / "src", tmp_path / "out", "--view", "femur") == 0
    (row,) = rows(tmp_path / "out")
    assert row["pixel_spacing_mm"] == pytest.approx(0.3)
    assert decode_image(row["image"]).shape == (20, 30)


# ----------------------------------------------------------------------------- frames, colour


def test_multiframe_frames_all_middle_every(tmp_path):
    loop = np.stack([np.full((16, 24), 40 * i, np.uint8) for i in range(5)])
    write_dicom(
        tmp_path / "src" / "loop.dcm",
        loop,
        region={"x0": 0, "y0": 0, "x1": 23, "y1": 15, "dx_cm": 0.01},
    )
    for spec, expected in (("all", [0, 1, 2, 3, 4]), ("middle", [2]), ("every:2", [0, 2, 4])):
        out = tmp_path / f"out-{spec.replace(':', '')}"
        assert prepare(tmp_path / "src", out, "--view", "head", "--frames", spec) == 0
        got = sorted((json.loads(r["provenance"])["frame"], r) for r in rows(out))
        assert [f for f, _ in got] == expected
        for frame, row in got:
            assert (decode_image(row["image"]) == 40 * frame).all()
            assert row["pixel_spacing_mm"] == pytest.approx(0.1)
    assert frame_indices(4, "middle") == [2]
    with pytest.raises(UserInputError, match="--frames"):
        parse_frames("every:0")


def test_rgb_ybr_and_monochrome1_become_luma_gray(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    write_dicom(tmp_path / "src" / "rgb.dcm", rgb, photometric="RGB")
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    write_dicom(
        tmp_path / "src" / "ybr.dcm", ybr, photometric="YBR_FULL", patient_id=PATIENT_IDS[1]
    )
    mono1 = np.full((8, 12), 55, np.uint8)
    write_dicom(
        tmp_path / "src" / "m1.dcm", mono1, photometric="MONOCHROME1", patient_id=PATIENT_IDS[2]
    )
    csv = tmp_path / "src" / "views.csv"
    csv.write_text("file,view,subject\nrgb.dcm,brain,s1\nybr.dcm,brain,s2\nm1.dcm,femur,s3\n")
    assert prepare(tmp_path / "src", tmp_path / "out", "--csv", str(csv)) == 0
    by_subject = {r["subject_id"]: decode_image(r["image"]) for r in rows(tmp_path / "out")}
    assert np.abs(by_subject["s1"].astype(int) - luma).max() == 0
    assert np.abs(by_subject["s2"].astype(int) - luma).max() <= 2  # YBR round trip
    assert (by_subject["s3"] == 255 - 55).all()  # MONOCHROME1: low values are bright


def test_compressed_jpeg_baseline_and_rle_decode(tmp_path):
    import io

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    smooth = np.add.outer(np.arange(32), np.arange(40)).astype(np.uint8) * 3
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=95)
    write_dicom(
        tmp_path / "src" / "jpeg.dcm",
        smooth,
        syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([buf.getvalue()]),
        patient_id=PATIENT_IDS[0],
    )
    rle = write_dicom(tmp_path / "src" / "rle.dcm", smooth, patient_id=PATIENT_IDS[1])
    ds = pydicom.dcmread(rle)
    ds.compress(RLELossless, smooth)
    ds.save_as(rle)
    csv = tmp_path / "src" / "views.csv"
    csv.write_text("file,view,subject\njpeg.dcm,head,j\nrle.dcm,head,r\n")
    assert prepare(tmp_path / "src", tmp_path / "out", "--csv", str(csv)) == 0
    got = {r["subject_id"]: decode_image(r["image"]).astype(int) for r in rows(tmp_path / "out")}
    np.testing.assert_array_equal(got["r"], smooth)  # lossless
    available = available_transfer_syntaxes()
    assert available["RLE Lossless"] and available["JPEG Baseline (Process 1)"]
    assert np.abs(got["j"] - smooth).max() <= 8  # lossy, quality 95


# ----------------------------------------------------------------------------- de-identification


def test_no_phi_in_any_output_byte(tmp_path):
    src = tmp_path / "src"
    for i, pid in enumerate(PATIENT_IDS[:3]):
        region = {"x0": 2, "y0": 2, "x1": 29, "y1": 21, "dx_cm": 0.03}
        write_dicom(
            src / f"exam{i}" / "img.dcm", noise(10 + i, 24, 32), patient_id=pid, region=region
        )
        loop = np.stack([noise(20 + i + k, 24, 32) for k in range(3)])
        write_dicom(src / f"exam{i}" / "loop.dcm", loop, patient_id=pid, pixel_spacing=[0.2, 0.2])
    out = tmp_path / "prepared" / "out"
    assert prepare(src, out, "--view", "abdomen", "--frames", "all") == 0
    written = all_bytes(tmp_path / "prepared")
    names = {p.name for p, _ in written}
    assert any(n.endswith(".arrow") for n in names) and "dataset_info.json" in names
    needles = [v for v in PHI.values() if len(v) >= 4] + PATIENT_IDS[:3]
    needles += ["1.2.826.0.1.3680043.8.498", "exam0", "img.dcm", "loop.dcm"]
    # A bare (unsalted) hash of a PatientID is reversible by guessing: not allowed either.
    needles += [hashlib.sha256(p.encode()).hexdigest()[:16] for p in PATIENT_IDS[:3]]
    for path, data in written:
        for needle in needles:
            for variant in {needle, needle.replace("^", " "), needle.upper()}:
                assert variant.encode() not in data, f"{variant!r} leaked into {path}"
    assert len(rows(out)) == 3 * (1 + 3)
    provenance = [json.loads(r["provenance"]) for r in rows(out)]
    assert all("manufacturer" not in p and "model" not in p for p in provenance)


def test_keep_device_keeps_only_manufacturer_and_model(tmp_path):
    write_dicom(tmp_path / "src" / "a.dcm", noise(4, 16, 16))
    assert prepare(tmp_path / "src", tmp_path / "out", "--view", "head", "--keep-device") == 0
    (row,) = rows(tmp_path / "out")
    prov = json.loads(row["provenance"])
    assert prov["manufacturer"] == PHI["Manufacturer"]
    assert prov["model"] == PHI["ManufacturerModelName"]
    blob = b"".join(d for _, d in all_bytes(tmp_path / "out"))
    assert PHI["DeviceSerialNumber"].encode() not in blob
    assert PHI["InstitutionName"].encode() not in blob


# ----------------------------------------------------------------------------- subjects, salt


def _subject_split(out: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for r in rows(out):
        found.setdefault(r["subject_id"], set()).add(r["split"])
    return found


def test_salted_subjects_give_patient_level_splits_and_a_private_salt(tmp_path):
    src = tmp_path / "src"
    for i, pid in enumerate(PATIENT_IDS):
        for k in range(2):
            write_dicom(src / f"p{i}_{k}.dcm", noise(30 + 2 * i + k, 16, 16), patient_id=pid)
    out = tmp_path / "out"
    old_umask = os.umask(0o022)
    try:
        assert prepare(src, out, "--view", "brain") == 0
    finally:
        os.umask(old_umask)
    # The dataset follows the umask (readable by colleagues); the salt stays private.
    assert stat.S_IMODE((out / "dataset_dict.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    found = _subject_split(out)
    assert len(found) == len(PATIENT_IDS)  # two files of one patient: one subject
    assert all(len(splits) == 1 for splits in found.values())  # never across splits
    salt_file = tmp_path / "out.salt"
    assert salt_file.is_file() and not (out / "out.salt").exists()
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip()
    assert set(found) == {f"dicom:{salted_hash(salt, p)}" for p in PATIENT_IDS}
    assert salt.encode() not in b"".join(d for _, d in all_bytes(out))
    # Re-preparing reuses the salt: same ids.
    assert prepare(src, out, "--view", "brain", "--overwrite") == 0
    assert set(_subject_split(out)) == set(found)
    # A given salt wins and changes every id; the same salt elsewhere gives the same ids.
    assert prepare(src, tmp_path / "o2", "--view", "brain", "--subject-salt", "s3cret") == 0
    assert prepare(src, tmp_path / "o3", "--view", "brain", "--subject-salt", "s3cret") == 0
    ids2, ids3 = set(_subject_split(tmp_path / "o2")), set(_subject_split(tmp_path / "o3"))
    assert ids2 == ids3 and not ids2 & set(found)
    assert not (tmp_path / "o2.salt").exists()


# ----------------------------------------------------------------------------- bad input


def _refused(tmp_path, capsys, src: Path, *flags: str, expect: str) -> None:
    before = set(tmp_path.iterdir())
    out = tmp_path / "out"
    assert prepare(src, out, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert set(tmp_path.iterdir()) == before  # nothing written, no salt, no temp folder


def test_burned_in_annotation_refused_without_clean(tmp_path, capsys):
    path = write_dicom(tmp_path / "src" / "a.dcm", noise(5, 32, 32), burned_in="YES")
    _refused(
        tmp_path, capsys, tmp_path / "src", "--view", "head", expect=f"{path}: BurnedInAnnotation"
    )


def test_burned_in_annotation_cleaned_with_clean(tmp_path):
    frame = np.full((64, 64), 60, np.uint8)
    frame += np.random.default_rng(0).integers(0, 20, size=frame.shape, dtype=np.uint8)
    frame[30:33, 20:44] = 255  # a caliper cross
    frame[20:44, 30:33] = 255
    write_dicom(tmp_path / "src" / "a.dcm", frame, burned_in="YES")
    assert prepare(tmp_path / "src", tmp_path / "out", "--view", "head", "--clean") == 0
    (row,) = rows(tmp_path / "out")
    image = decode_image(row["image"])
    assert image.shape == frame.shape  # a frame filled with echo is its own sector
    assert image[30:33, 20:44].max() < 120 and image[20:44, 30:33].max() < 120
    assert json.loads(row["provenance"])["cleaned"] is True


def test_clean_finds_colour_marks_in_rgb_files(tmp_path):
    grey = np.random.default_rng(1).integers(50, 90, size=(48, 48), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    # An orange mark, luma 146: too little contrast for the grey detector, so only its
    # chroma finds it, which needs the colour frame to reach the cleaner.
    rgb[20:24, 20:24] = (255, 120, 0)
    write_dicom(tmp_path / "src" / "a.dcm", rgb, photometric="RGB", burned_in="YES")
    assert prepare(tmp_path / "src", tmp_path / "out", "--view", "head", "--clean") == 0
    (row,) = rows(tmp_path / "out")
    image = decode_image(row["image"])
    assert image.shape == (48, 48) and image[20:24, 20:24].max() < 110


def test_not_dicom(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.dcm").write_bytes(b"just some text, not a DICOM file" * 10)
    _refused(
        tmp_path, capsys, tmp_path / "src", "--view", "head", expect="notes.dcm: not a DICOM file"
    )


def test_no_pixel_data(tmp_path, capsys):
    path = write_dicom(tmp_path / "src" / "a.dcm", noise(6, 8, 8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    _refused(
        tmp_path,
        capsys,
        tmp_path / "src",
        "--view",
        "head",
        expect="a.dcm: DICOM without pixel data",
    )


def test_unsupported_compression_without_handler(tmp_path, capsys):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS handler is installed here")
    write_dicom(
        tmp_path / "src" / "a.dcm",
        noise(7, 8, 8),
        syntax=JPEGLSLossless,
        pixel_data=encapsulate([b"\xff\xd8\xff\xf7" + bytes(60)]),
    )
    _refused(tmp_path, capsys, tmp_path / "src", "--view", "head", expect="JPEG-LS Lossless")


def test_inconsistent_spacing_between_frames(tmp_path, capsys):
    loop = np.stack([noise(8, 8, 8), noise(9, 8, 8)])
    write_dicom(tmp_path / "src" / "a.dcm", loop, per_frame_spacing=[[0.2, 0.2], [0.3, 0.3]])
    _refused(
        tmp_path,
        capsys,
        tmp_path / "src",
        "--view",
        "head",
        expect="inconsistent spacing between frames",
    )


def test_anisotropic_region_refused(tmp_path, capsys):
    region = {"x0": 0, "y0": 0, "x1": 7, "y1": 7, "dx_cm": 0.02, "dy_cm": 0.03}
    write_dicom(tmp_path / "src" / "a.dcm", noise(9, 8, 8), region=region)
    _refused(tmp_path, capsys, tmp_path / "src", "--view", "head", expect="anisotropic")


def test_csv_naming_a_missing_file(tmp_path, capsys):
    write_dicom(tmp_path / "src" / "a.dcm", noise(10, 8, 8))
    csv = tmp_path / "src" / "views.csv"
    csv.write_text("file,view\na.dcm,head\nmissing.dcm,brain\n")
    _refused(tmp_path, capsys, tmp_path / "src", "--csv", str(csv), expect="line 3 column 'file'")


def test_no_view_and_no_csv_is_refused(tmp_path, capsys):
    write_dicom(tmp_path / "src" / "a.dcm", noise(11, 8, 8))
    _refused(tmp_path, capsys, tmp_path / "src", expect="--view")


def test_missing_patient_id_needs_a_subject_column(tmp_path, capsys):
    write_dicom(tmp_path / "src" / "a.dcm", noise(12, 8, 8), patient_id=None, phi=False)
    _refused(tmp_path, capsys, tmp_path / "src", "--view", "head", expect="no PatientID")
