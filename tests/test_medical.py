"""Medical images: DICOM files read as radiologists window them, 16-bit images windowed the
same way, and no patient field anywhere transferkit writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import QUICK_FLAGS, TINY, TINY_IMAGE
from tests.test_cli import run_cli
from transferkit.modalities.image_window import Window, apply_window, parse_window

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from transferkit.modalities.dicom import check_dicom, grey_levels, open_dicom, read_dataset  # noqa: E402

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"  # pydicom's own files (no download)
PATIENT = "Doe^Jane"
PATIENT_ID = "MRN-0042-SECRET"


def bundled(name: str) -> Path:
    path = BUNDLED / name
    if not path.is_file():
        pytest.skip(f"pydicom's test file {name} is not bundled with this pydicom")
    return path


def write_dicom(path: Path, values: np.ndarray, photometric: str = "MONOCHROME2", **tags: Any) -> Path:
    """A CT-like file: int16 stored values, rescale intercept -1024, a patient name and ID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.StudyDescription = PATIENT, PATIENT_ID, f"study of {PATIENT}"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = values.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _output_range(ds: Dataset) -> tuple[float, float]:
    """pydicom's windowing output range (its apply_windowing docs): the stored bits, rescaled."""
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return low * slope + intercept, high * slope + intercept


def _pydicom_grey(ds: Dataset) -> np.ndarray:
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = _output_range(ds)
    return np.rint(255 * (voi - low) / (high - low))


def test_a_files_own_window_gives_what_pydicoms_apply_voi_lut_gives() -> None:
    ds = read_dataset(bundled("MR_small.dcm"))  # window centre 600, width 1600
    ours = grey_levels(ds, None).astype(float)
    assert np.abs(ours - _pydicom_grey(ds)).max() <= 1 and ours.std() > 10


def test_the_users_window_replaces_the_files_and_matches_pydicom(tmp_path: Path) -> None:
    ds = read_dataset(bundled("CT_small.dcm"))  # rescale intercept -1024: Hounsfield units
    ours = grey_levels(ds, parse_window("40,400")).astype(float)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    assert np.abs(ours - _pydicom_grey(ds)).max() <= 1
    # the same window on a file that carries another one: --window wins over the file's
    own = write_dicom(tmp_path / "own.dcm", ds.pixel_array, WindowCenter=500, WindowWidth=100)
    assert np.array_equal(grey_levels(read_dataset(own), parse_window("40,400")), ours.astype(np.uint8))
    # a window fitted on the data does not override the file's own
    fitted = grey_levels(read_dataset(own), Window(40, 400, "data"))
    assert not np.array_equal(fitted, ours.astype(np.uint8))


def test_monochrome1_is_inverted_so_that_dense_is_bright(tmp_path: Path) -> None:
    values = np.tile(np.linspace(1000, 1500, 16), (16, 1))
    two = open_dicom(write_dicom(tmp_path / "two.dcm", values), parse_window("200,600"))
    one = open_dicom(write_dicom(tmp_path / "one.dcm", values, "MONOCHROME1"), parse_window("200,600"))
    assert np.array_equal(np.asarray(one).astype(int), 255 - np.asarray(two).astype(int))


def test_compressed_files_decode_like_their_uncompressed_twin() -> None:
    plain = np.asarray(open_dicom(bundled("MR_small.dcm")))
    assert np.array_equal(np.asarray(open_dicom(bundled("MR_small_jpeg_ls_lossless.dcm"))), plain)
    assert np.array_equal(np.asarray(open_dicom(bundled("MR_small_RLE.dcm"))), plain)
    assert open_dicom(bundled("JPGExtended.dcm")).size == (256, 1024)  # 12-bit JPEG: pylibjpeg-libjpeg
    assert open_dicom(bundled("SC_rgb_jpeg.dcm")).mode == "RGB"


def test_files_it_cannot_use_are_refused_in_one_clear_line(tmp_path: Path) -> None:
    assert "multi-frame" in (check_dicom(bundled("rtdose.dcm")) or "")
    assert "without pixel data" in (check_dicom(bundled("rtplan.dcm")) or "")
    (tmp_path / "fake.dcm").write_bytes(b"not a dicom file at all" * 10)
    assert "not a DICOM file" in (check_dicom(tmp_path / "fake.dcm") or "")


def test_16_bit_images_share_one_window_instead_of_each_its_own_range(tmp_path: Path) -> None:
    from transferkit.modalities.image_io import open_rgb
    from transferkit.modalities.image_window import fit_window

    a = np.full((8, 8), 1000, np.uint16)
    a[0, 0] = 3000  # one image reaches far higher than the other
    b = np.full((8, 8), 1000, np.uint16)
    b[0, 0] = 1200
    for name, values in (("a", a), ("b", b)):
        Image.fromarray(values).save(tmp_path / f"{name}.png")
    window = fit_window([a.astype(float), b.astype(float)])
    assert window is not None and window.source == "data"
    grey_a = np.asarray(open_rgb(tmp_path / "a.png", window=window))[1, 1]
    grey_b = np.asarray(open_rgb(tmp_path / "b.png", window=window))[1, 1]
    assert np.array_equal(grey_a, grey_b)  # the same value is the same grey in both images
    assert apply_window(np.array([1000.0]), window)[0] == grey_a[0]


def test_a_dicom_folder_trains_predicts_and_exports_with_no_patient_field_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit.demos import DEMO_PATIENT

    code, _, err = run_cli(["demo-scans", tmp_path / "scans", "--per-class", 8], capsys, monkeypatch)
    assert code == 0, err
    data = tmp_path / "scans"
    out = tmp_path / "run"
    args = ["fit", data, "--out", out, "--backbone", TINY, "--image-size", TINY_IMAGE, "--epochs", 2,
            "--batch-size", 8, *QUICK_FLAGS]  # fmt: skip
    code, fit_out, fit_err = run_cli(args, capsys, monkeypatch)
    assert code == 0, fit_err
    card = json.loads((out / "config.json").read_text())
    window = card["preprocessing"]["window"]
    # half the slices carry the scanner's lung window; the others get one fitted in Hounsfield units
    assert window["source"] == "data" and -1000 < window["center"] < 0
    code, pred_out, pred_err = run_cli(["predict", out, data / "nodule", "--json"], capsys, monkeypatch)
    assert code == 0, pred_err
    assert {r["top"][0]["label"] for r in json.loads(pred_out)["predictions"]} <= {"nodule", "clear"}
    code, exp_out, exp_err = run_cli(["export", out, "--data", data], capsys, monkeypatch)
    assert code == 0, exp_err
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".html", ".txt")]
    seen = "".join([fit_out, fit_err, pred_out, pred_err, exp_out, exp_err]).encode() + b"".join(written)
    assert DEMO_PATIENT[0].encode() in (data / "nodule" / "slice_000.dcm").read_bytes()  # it was there to leak
    for secret in (*DEMO_PATIENT, "Demo^"):
        assert secret.encode() not in seen, secret


def test_a_window_is_checked_where_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(["fit", tmp_path, "--window", "40"], capsys, monkeypatch)
    assert code == 2 and "window" in err and "centre,width" in err and err.count("\n") == 1


def test_the_window_is_saved_with_the_model_and_old_cards_read_as_before() -> None:
    from transferkit.modalities.image_io import ImagePreprocessing

    pre = ImagePreprocessing(32, (0.5,) * 3, (0.5,) * 3, window=parse_window("40,400"))
    again = ImagePreprocessing.from_dict(pre.to_dict())
    assert again.window == pre.window
    assert "window" not in ImagePreprocessing(32, (0.5,) * 3, (0.5,) * 3).to_dict()  # old cards unchanged
