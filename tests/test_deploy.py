"""Deploy: ONNX export (checked, refused when wrong), int8, torch-free inference, serving."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import (
    QUICK,
    ROOT,
    TINY,
    TINY_AUDIO,
    TINY_IMAGE,
    TINY_TEXT,
    cli_env,
    make_dataset,
    make_text_table,
    make_tones,
)
from transferkit import api
from transferkit.deploy import export as export_module
from transferkit.deploy.export import export_onnx
from transferkit.deploy.onnx_model import OnnxModel, assets_folder
from transferkit.errors import TransferkitError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

IMAGE_FIT = {
    "backbone": TINY,
    "image_size": TINY_IMAGE,
    "batch_size": 8,
    "epochs": 2,
    "seed": 0,
    "augment": False,
    **QUICK,
}
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("image")
    data = make_dataset(root / "data", per_class=12)
    api.fit(data, out=root / "run", strategy="two-phase", **IMAGE_FIT)
    return root / "run", data


@pytest.fixture(scope="module")
def image_onnx(image_run: tuple[Path, Path]) -> Path:
    run, data = image_run
    rows = export_onnx(run, quantize=("dynamic", "static"), calibrate=data, repeats=2)
    assert [r.format for r in rows] == ["PyTorch fp32", "ONNX fp32", "ONNX int8 dynamic", "ONNX int8 static"]
    assert rows[1].agreement == 1.0 and rows[1].accuracy == rows[0].accuracy
    return run / "model.onnx"


def test_image_export_carries_its_metadata_and_runs_like_pytorch(
    image_run: tuple[Path, Path], image_onnx: Path
) -> None:
    run, data = image_run
    model = OnnxModel(image_onnx)
    assert model.classes == ["class_0", "class_1", "class_2"] and model.meta["preprocessing"]["image_size"] == 32
    assert model.input_names == ["images"]
    for quantised in ("model.int8-dynamic.onnx", "model.int8-static.onnx"):
        assert OnnxModel(run / quantised).classes == model.classes
    by_onnx, by_torch = model.evaluate(data), api.evaluate(run, data)
    assert by_onnx["confusion_matrix"] == by_torch["confusion_matrix"]
    files = sorted(data.glob("class_1/*.png"))[:5]  # batch of 5, exported with batch 2: the axis is dynamic
    onnx_top = [r["top"][0]["label"] for r in model.predict(files, top_k=1)]
    torch_top = [p.labels[0] for p in api.predict(run, files, top_k=1)]
    assert onnx_top == torch_top


def test_a_graph_that_computes_something_else_is_refused_and_leaves_no_files(
    image_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import numpy_helper

    real_save = export_module._save_onnx

    def corrupted(*args: Any) -> None:
        real_save(*args)
        path = args[4]
        model = onnx.load(str(path))
        for i, tensor in enumerate(model.graph.initializer):  # scramble every weight matrix
            values = numpy_helper.to_array(tensor)
            if values.ndim >= 2:
                shuffled = np.random.default_rng(i).permutation(values.ravel()).reshape(values.shape)
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(shuffled, tensor.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export_module, "_save_onnx", corrupted)
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(TransferkitError, match="export refused"):
        export_onnx(image_run[0], target, quantize=("dynamic",), repeats=1)
    assert not target.exists() and not assets_folder(target).exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_text_export_takes_ids_and_mask_and_tokenizes_like_training(tmp_path: Path) -> None:
    from transferkit.modalities.text import TextPreprocessing, token_arrays
    from transferkit.modalities.text_encoder import Tokenize, minilm_source

    table = make_text_table(tmp_path / "news.csv", per_class=12)
    run = tmp_path / "run"
    api.fit(table, out=run, backbone=TINY_TEXT, strategy="two-phase", epochs=2, batch_size=8, seed=0)
    rows = export_onnx(run, quantize=("dynamic", "static"), calibrate=table, repeats=2)
    assert rows[1].agreement == 1.0 and rows[1].max_delta is not None and rows[1].max_delta < 1e-3
    model = OnnxModel(run / "model.onnx")
    assert model.input_names == ["input_ids", "attention_mask"]
    assert (assets_folder(run / "model.onnx") / "tokenizer.json").is_file()
    texts = ["the band played a new song", "shares fell after the bank report " * 20]
    ids, mask = token_arrays(texts, assets_folder(run / "model.onnx"), 32)
    packed = [Tokenize(TextPreprocessing(TINY_TEXT, 32), minilm_source())(t).numpy() for t in texts]
    assert np.array_equal(ids, np.stack([p[0] for p in packed])[:, : ids.shape[1]])
    assert np.array_equal(mask, np.stack([p[1] for p in packed])[:, : ids.shape[1]])
    assert model.predict(["the band played a new song"], top_k=1)[0]["top"][0]["label"] in model.classes
    done = subprocess.run(  # tokenizers and onnxruntime only: the text path loads no torch either
        [sys.executable, "-c", NO_TORCH, "predict", str(run / "model.onnx"), "the band played a new song", "--json"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert "TORCH:False" in done.stderr, done.stderr
    assert json.loads(done.stdout)["predictions"][0]["top"][0]["label"] in model.classes


def test_audio_and_multitask_runs_export(tmp_path: Path) -> None:
    clips = make_tones(tmp_path / "tones", per_class=6)
    api.fit(clips, out=tmp_path / "audio", backbone=TINY_AUDIO, strategy="feature-extraction", epochs=1,
            batch_size=8, augment=False)  # fmt: skip
    rows = export_onnx(tmp_path / "audio", repeats=1)
    assert rows[1].agreement == 1.0 and OnnxModel(tmp_path / "audio" / "model.onnx").input_names == ["waveforms"]

    from tests.test_multitask import _csv
    from transferkit.config import FitConfig
    from transferkit.workflows.multitask import MultiTaskConfig, fit_multitask, load_multitask_csv

    csv_path, images = _csv(tmp_path / "mt")
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=FitConfig(**IMAGE_FIT))
    fit_multitask(load_multitask_csv(csv_path, images, cfg), cfg, out=tmp_path / "mt-run")
    rows = export_onnx(tmp_path / "mt-run", data=images, repeats=1)
    assert rows[1].agreement == 1.0
    model = OnnxModel(tmp_path / "mt-run" / "model.onnx")
    assert [o.name for o in model.session.get_outputs()] == ["kind", "first"]
    row = model.predict([next(images.rglob("*.png"))])[0]
    assert set(row["labels"]) == {"kind", "first"}


NO_TORCH = """
import sys
from transferkit.cli import main
sys.argv = ["transferkit", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
print("TORCH:" + str("torch" in sys.modules), file=sys.stderr)
"""


def test_evaluate_and_predict_run_an_onnx_file_without_torch(image_run: tuple[Path, Path], image_onnx: Path) -> None:
    data = image_run[1]
    for args in (["evaluate", str(image_onnx), str(data), "--json"],
                 ["predict", str(image_onnx), str(data / "class_0"), "--json"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True
        )
        assert "TORCH:False" in done.stderr, done.stderr
        result = json.loads(done.stdout)
        assert result.get("num_items") == 36 or len(result["predictions"]) == 12


# --------------------------------------------------------------------------- serve


def _client(source: Path) -> Any:
    from fastapi.testclient import TestClient

    from transferkit.deploy.serve import create_app, load_predictor

    return TestClient(create_app(load_predictor(source), max_upload_bytes=200_000))


@pytest.mark.parametrize("source", ["onnx", "run"])
def test_serve_answers_uploads_and_refuses_bad_requests(
    source: str, image_run: tuple[Path, Path], image_onnx: Path
) -> None:
    run, data = image_run
    client = _client(image_onnx if source == "onnx" else run)
    assert client.get("/health").json() == {"status": "ok"}
    described = client.get("/model").json()
    assert described["classes"] == ["class_0", "class_1", "class_2"] and described["modality"] == "image"
    image = data / "class_2" / "000.png"
    answer = client.post("/predict?top_k=2", files={"file": ("digit.png", image.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    top = answer.json()["predictions"][0]
    assert top["path"] == "digit.png" and len(top["top"]) == 2 and top["top"][0]["label"] in described["classes"]
    broken = client.post("/predict", files={"file": ("x.png", b"\x89PNG broken", "image/png")})
    assert broken.status_code == 422 and "x.png" in broken.json()["detail"]
    huge = client.post("/predict", files={"file": ("big.png", b"0" * 300_000, "image/png")})
    assert huge.status_code == 413
    assert client.post("/predict", json={"text": "hello"}).status_code == 415
    assert client.post("/predict", content=b"raw", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/predict?top_k=0", files={"file": ("d.png", image.read_bytes())}).status_code == 422
    assert "<html" in client.get("/").text


def test_serve_text_takes_json_and_never_reads_paths(tmp_path: Path) -> None:
    table = make_text_table(tmp_path / "news.csv", per_class=10)
    api.fit(table, out=tmp_path / "run", backbone=TINY_TEXT, strategy="linear-probe", epochs=1)
    client = _client(tmp_path / "run")
    answer = client.post("/predict", json={"texts": ["the band played a new song", str(table)]})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert rows[1]["path"] == str(table)[:60]  # a path given as text is classified as text, not opened
    assert client.post("/predict", json={"text": ""}).status_code == 422
    broken = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    lone = client.post("/predict", content=b'{"text": "\\ud800"}', headers={"content-type": "application/json"})
    assert lone.status_code == 422 and "surrogate" in lone.json()["detail"]  # was a 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_page_works_in_headless_chromium(image_onnx: Path, tmp_path: Path) -> None:
    import uvicorn

    from tests.test_report import _chromium
    from transferkit.deploy.serve import create_app, load_predictor

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_predictor(image_onnx)), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", f"http://127.0.0.1:{port}/"], tmp_path / "p")
        assert "image model (onnx): class_0, class_1, class_2" in dom.stdout, dom.stderr[-2000:]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_deploy_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/deploy.py at tiny settings, so the script cannot rot."""
    fit = "--backbone resnet10t.random --image-size 32 --strategy feature-extraction --epochs 1 --no-augment"
    fit += " --min-steps 0"
    done = subprocess.run(
        [sys.executable, "benchmarks/deploy.py", "--out", str(tmp_path), "--digits-fit", fit, "--digits-per-class",
         "12", "--no-text", "--repeats", "1"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    formats = json.loads((tmp_path / "deploy.json").read_text())["digits"]
    assert [f["format"] for f in formats] == ["PyTorch fp32", "ONNX fp32", "ONNX int8 dynamic", "ONNX int8 static"]
    assert "| ONNX int8 static |" in done.stdout
