"""DICOM headers are input like any other: every number that decides an allocation or a grey
level is bounded before it is used, and whatever a corrupt file makes pydicom or a decoder
raise (MemoryError included) is that file's "unusable" verdict, never the run's traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pydicom")
from tests.test_medical import write_dicom
from transferkit.modalities.dicom import DicomError, check_dicom, dicom_size, max_pixels
from transferkit.modalities.image_io import check_image

VALUES = (np.arange(32 * 32).reshape(32, 32) % 300).astype(np.int16)


def verdict(path: Path) -> str | None:
    """``check_dicom``'s verdict, with any numpy cast warning (NaN → uint8) an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return check_dicom(path)


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"RescaleSlope": "NaN"}, "rescale slope"),
        ({"RescaleSlope": "inf"}, "rescale slope"),
        ({"RescaleSlope": 1e308}, "rescale slope"),
        ({"RescaleSlope": -1e308}, "rescale slope"),
        ({"RescaleSlope": 0}, "rescale slope"),
        ({"RescaleSlope": 1e-9}, "rescale slope"),
        ({"RescaleIntercept": 1e12}, "rescale intercept"),
        ({"RescaleIntercept": "NaN"}, "rescale intercept"),
        ({"WindowCenter": "NaN", "WindowWidth": 100}, "window"),
        ({"WindowCenter": 100, "WindowWidth": "NaN"}, "window"),
    ],
)
def test_a_rescale_or_window_that_is_no_number_is_refused_not_predicted(
    tmp_path: Path, tags: dict[str, Any], reason: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns that "NaN" is no valid DS: it is the point
        path = write_dicom(tmp_path / "odd.dcm", VALUES, **tags)
        assert reason in (verdict(path) or "")


@pytest.mark.parametrize("tags", [{}, {"RescaleSlope": 2.5e-4, "RescaleIntercept": -3e4}, {"RescaleSlope": -1}])
def test_plausible_rescales_are_read(tmp_path: Path, tags: dict[str, Any]) -> None:
    assert verdict(write_dicom(tmp_path / "fine.dcm", VALUES, **tags)) is None


@pytest.mark.parametrize(
    "tags",
    [
        {"Rows": 65535, "Columns": 65535},  # 4.3 G pixels from a 2 KiB file
        {"Rows": 20000, "Columns": 20000},
        {"BitsAllocated": 48},
        {"BitsStored": 60000},  # more bits stored than allocated: 2**bits is what a colour file computes
    ],
)
def test_a_header_asking_for_too_much_is_refused_before_decoding(tmp_path: Path, tags: dict[str, Any]) -> None:
    path = write_dicom(tmp_path / "big.dcm", VALUES, **tags)
    reason = verdict(path) or ""
    assert "decompression-bomb limit" in reason or "bits a pixel" in reason
    if "Rows" in tags:
        assert str(max_pixels()) not in reason or f"{max_pixels():,}" in reason
        with pytest.raises(DicomError, match="decompression-bomb"):
            dicom_size(path)  # the header-only door too


def test_a_decoder_running_out_of_memory_is_the_files_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.dataset import Dataset

    def exhausted(self: Dataset) -> np.ndarray:
        raise MemoryError

    path = write_dicom(tmp_path / "fine.dcm", VALUES)
    monkeypatch.setattr(Dataset, "pixel_array", property(exhausted))
    assert "memory" in (check_dicom(path) or "")
    assert "memory" in (check_image(path)[0] or "")  # what a folder scan says of it


SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    import numpy as np
    from transferkit.modalities.dicom import check_dicom

    folder = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    files = []
    for i in range(120):
        body = rng.bytes(int(rng.integers(16, 4000)))
        path = folder / f"r{i}.dcm"
        path.write_bytes(b"\\0" * 128 + b"DICM" + body if i % 2 else body)
        files.append(path)
    files.append(folder / "huge_length.dcm")  # a valid file whose pixel element claims 4 GiB
    resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31))
    verdicts = [check_dicom(p) for p in files]
    assert all(isinstance(v, str) for v in verdicts), verdicts
    print("\\n".join(sorted(set(verdicts))))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is a Linux address-space limit")
def test_random_bytes_under_an_address_space_limit_are_unusable_files_not_a_memory_error(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", VALUES).read_bytes()
    at = good.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data: tag, VR OB/OW, 2 reserved, 4-byte length
    patched = good[: at + 8] + (0xFFFFFFF0).to_bytes(4, "little") + good[at + 12 :]
    (tmp_path / "huge_length.dcm").write_bytes(patched)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stdout
