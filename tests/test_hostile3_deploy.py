"""Third hostile trial, deploy: ONNX metadata that disagrees with its graph (an image_size of
64 or 1024 over a 32 px graph was an onnxruntime traceback in predict and a bare 500 in serve),
one client address holding every connection of serve, and a form of 1,000 files of which serve
predicted the first alone, silently."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import QUICK, TINY, TINY_IMAGE, make_dataset
from tests.test_cli import run_cli
from tests.test_serve_load import BlockingPredictor
from transferkit import api
from transferkit.deploy.serve_pool import ServeLimits
from transferkit.errors import TransferkitError

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

# --------------------------------------------------------------------------- ONNX metadata vs graph


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny image run at 32 px, exported: (model.onnx, one image)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from transferkit.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("hostile3")
    data = make_dataset(root / "data", per_class=6)
    fit = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "epochs": 1, "seed": 0, **QUICK}
    api.fit(data, out=root / "run", strategy="linear-probe", augment=False, **fit)
    export_onnx(root / "run", repeats=1)
    return root / "run" / "model.onnx", data / "class_0" / "000.png"


def _with_image_size(source: Path, target: Path, side: int) -> Path:
    """``source`` with its metadata's image_size set to ``side`` (inside 16–1024), the graph untouched."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "transferkit":
            meta = json.loads(prop.value)
            meta["preprocessing"]["image_size"] = side
            prop.value = json.dumps(meta)
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("side", [64, 1024])
def test_an_image_size_the_graph_does_not_take_is_refused_when_loaded_in_one_line(
    side: int,
    exported: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transferkit.deploy.onnx_model import OnnxModel

    edited = _with_image_size(exported[0], tmp_path / f"t{side}.onnx", side)
    with pytest.raises(TransferkitError, match=rf"image_size {side} makes \(batch, 3, {side}, {side}\)"):
        OnnxModel(edited)
    # serve loads the model before it listens
    for command in (["predict", str(edited), str(exported[1])], ["serve", str(edited)]):
        code, _, err = run_cli(command, capsys, monkeypatch)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"image_size {side}" in err and "3, 32, 32)" in err, err
    assert OnnxModel(exported[0]).predict([exported[1]])[0]["top"]  # the untouched file still runs


def _fake_session(inputs: list[tuple[str, str, list[Any]]], outputs: list[list[Any]]) -> Any:
    def spec(name: str, kind: str, shape: list[Any]) -> Any:
        return SimpleNamespace(name=name, type=kind, shape=shape)

    return SimpleNamespace(
        get_inputs=lambda: [spec(*i) for i in inputs], get_outputs=lambda: [spec("logits", "", o) for o in outputs]
    )


IMAGE_PRE = {"kind": "image", "image_size": 32}


@pytest.mark.parametrize(
    ("inputs", "outputs", "says"),
    [
        ([("images", "tensor(float)", ["N", 1, 32, 32])], [["N", 3]], "(batch, 3, 32, 32)"),  # channels
        ([("images", "tensor(float)", [2, 3, 32, 32])], [["N", 3]], "a fixed batch of 2"),
        ([("images", "tensor(float)", ["N", 3, 32])], [["N", 3]], "has shape (N, 3, 32)"),
        ([("images", "tensor(int64)", ["N", 3, 32, 32])], [["N", 3]], "holds tensor(int64)"),
        ([("waveforms", "tensor(float)", ["N", 16000])], [["N", 3]], "image preprocessing does not make"),
        ([("images", "tensor(float)", ["N", 3, 32, 32])], [["N", 4]], "outputs have shape (N, 4)"),  # classes
        ([("images", "tensor(float)", ["N", 3, 32, 32])], [["N", 3, 1]], "outputs have shape (N, 3, 1)"),
        ([("images", "tensor(float)", ["N", 3, 32, 32])], [["N", 3], ["N", 3]], "1 output(s) of [3] scores"),
    ],
)
def test_a_graph_is_held_to_its_metadata_dimension_by_dimension(
    inputs: list[tuple[str, str, list[Any]]], outputs: list[list[Any]], says: str
) -> None:
    from transferkit.deploy.onnx_graph import check_graph

    with pytest.raises(TransferkitError, match="export the run again") as info:
        check_graph(_fake_session(inputs, outputs), IMAGE_PRE, [3], "m.onnx metadata")
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_graph_whose_dimensions_agree_or_are_symbolic_passes() -> None:
    from transferkit.deploy.onnx_graph import check_graph

    check_graph(_fake_session([("images", "tensor(float)", ["N", 3, 32, 32])], [["N", 3]]), IMAGE_PRE, [3], "m")
    check_graph(_fake_session([("images", "tensor(float)", [None, 3, "h", "w"])], [[]]), IMAGE_PRE, [3], "m")
    text = {"kind": "text", "max_length": 128}
    tokens = [("input_ids", "tensor(int64)", ["N", "L"]), ("attention_mask", "tensor(int64)", ["N", "L"])]
    check_graph(_fake_session(tokens, [["N", 2]]), text, [2], "m")
    with pytest.raises(TransferkitError, match="a fixed length of 128"):  # texts are padded per batch
        check_graph(_fake_session([("input_ids", "tensor(int64)", ["N", 128])], [["N", 2]]), text, [2], "m")
    audio = {"kind": "audio", "sample_rate": 16000, "clip_seconds": 1.5}
    check_graph(_fake_session([("waveforms", "tensor(float)", ["N", 24000])], [["N", 2]]), audio, [2], "m")
    with pytest.raises(TransferkitError, match=r"clip_seconds 1\.5 makes \(batch, 24000\)"):
        check_graph(_fake_session([("waveforms", "tensor(float)", ["N", 16000])], [["N", 2]]), audio, [2], "m")


def test_what_onnxruntime_refuses_during_inference_is_one_line_exit_2(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line of defence: with the load-time check out of the way, the arrays are held
    to the graph before onnxruntime sees them, and what onnxruntime itself refuses is a line."""
    from transferkit.deploy import onnx_model
    from transferkit.deploy.onnx_graph import InferenceError, check_outputs

    model = onnx_model.OnnxModel(exported[0])
    with pytest.raises(InferenceError, match=r"onnxruntime could not run the model \(\w+: .*double") as info:
        model.run({"images": np.zeros((1, 3, 32, 32), dtype=np.float64)})  # float64 where float32 is declared
    assert "\n" not in str(info.value)
    with pytest.raises(InferenceError, match=r"answered \(1, 3, 1\) scores for 1 item"):
        check_outputs([np.zeros((1, 3, 1))], 1, [3], "m")

    edited = _with_image_size(exported[0], tmp_path / "t64.onnx", 64)
    monkeypatch.setattr(onnx_model, "check_graph", lambda *_: None)
    code, _, err = run_cli(["predict", str(edited), str(exported[1])], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "has shape (s" in err and "inference made (1, 3, 64, 64)" in err, err
    monkeypatch.setattr(onnx_model, "check_feed", lambda _, inputs, __: inputs)  # straight to onnxruntime
    code, _, err = run_cli(["predict", str(edited), str(exported[1])], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "onnxruntime could not run the model (" in err, err


def test_serve_answers_a_failing_model_with_a_json_500_that_names_the_problem(
    exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from transferkit.deploy import onnx_model
    from transferkit.deploy.serve import create_app, load_predictor

    edited = _with_image_size(exported[0], tmp_path / "t64.onnx", 64)
    monkeypatch.setattr(onnx_model, "check_graph", lambda *_: None)
    client = TestClient(create_app(load_predictor(edited)))
    upload = {"file": ("digit.png", exported[1].read_bytes(), "image/png")}
    answer = client.post("/predict", files=upload)
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json", answer.text
    detail = answer.json()["detail"]
    assert "the model could not run" in detail and "(1, 3, 64, 64)" in detail and str(tmp_path) not in detail
    monkeypatch.setattr(onnx_model, "check_feed", lambda _, inputs, __: inputs)
    answer = client.post("/predict", files=upload)
    assert answer.status_code == 500 and "onnxruntime could not run the model" in answer.json()["detail"]
    assert client.get("/health").json() == {"status": "ok"}


def test_any_other_failure_in_serve_is_a_json_500_not_a_bare_one() -> None:
    from transferkit.deploy.serve import create_app

    predictor = BlockingPredictor(literal_inputs=True)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("/srv/secret/path")

    predictor.predict_samples = broken  # type: ignore[method-assign]
    app = create_app(predictor, limits=ServeLimits())  # type: ignore[arg-type]

    async def scenario() -> Any:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post("/predict", json={"text": "hello"})

    answer = asyncio.run(scenario())
    app.state.pool.shutdown()
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert "RuntimeError" in answer.json()["detail"] and "secret" not in answer.text


# --------------------------------------------------------------------------- connections per client


def _half_open(port: int, source: str, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # closed by the cap already
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # half a head: held until --header-timeout
        sockets.append(sock)
    return sockets


def test_one_address_cannot_take_every_connection_and_another_is_still_answered() -> None:
    pytest.importorskip("uvicorn")
    from tests.test_serve_http import running

    limits = ServeLimits(header_timeout_s=3.0, max_connections=20)
    assert limits.per_client == 5
    with running(limits) as (port, server):
        held: list[socket.socket] = []
        try:
            # one client with 3× the whole cap, reopening as the server closes: the trial's attack
            for _ in range(3):
                held += _half_open(port, "127.0.0.1", 20)
                time.sleep(0.1)
                assert len(server.server_state.connections) <= limits.per_client
            other = httpx.HTTPTransport(local_address="127.0.0.2")  # another address (all of 127/8 is local)
            with httpx.Client(transport=other, base_url=f"http://127.0.0.1:{port}", timeout=3) as client:
                answers = [client.get("/health", headers={"connection": "close"}) for _ in range(10)]
            assert [a.status_code for a in answers] == [200] * 10
            # a second address has its own share of the places, no more
            held += _half_open(port, "127.0.0.3", 20)
            time.sleep(0.1)
            assert len(server.server_state.connections) <= 2 * limits.per_client
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections_per_client": 0},
        {"max_connections_per_client": 257},  # past --max-connections (256)
        {"max_connections": 8, "max_connections_per_client": 9},
        {"max_connections_per_client": 2.0},
        {"max_connections_per_client": True},
    ],
    ids=str,
)
def test_the_per_client_cap_is_bounded_by_the_whole_cap(limits: dict[str, Any]) -> None:
    with pytest.raises(TransferkitError, match="serve --max-connections-per-client"):
        ServeLimits(**limits)


def test_the_per_client_cap_defaults_to_a_quarter_and_counts_ipv6_by_its_64() -> None:
    pytest.importorskip("uvicorn")
    from transferkit.deploy.serve_http import client_key

    assert ServeLimits().per_client == 64 and ServeLimits(max_connections=3).per_client == 1
    assert ServeLimits(max_connections=10, max_connections_per_client=10).per_client == 10  # behind a proxy
    assert client_key(("::ffff:10.0.0.1", 1, 0, 0)) == client_key(("10.0.0.1", 2)) == "10.0.0.1"
    assert client_key(("2001:db8::1", 1, 0, 0)) == client_key(("2001:db8::ffff:2", 2, 0, 0)) == "2001:db8::/64"
    assert client_key(("2001:db8:0:1::1", 1, 0, 0)) != client_key(("2001:db8::1", 1, 0, 0))
    assert client_key(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert client_key(None) == client_key("") == ""


# --------------------------------------------------------------------------- files per request


def test_a_form_of_many_files_is_refused_naming_the_rule_not_answered_for_the_first() -> None:
    from transferkit.deploy.serve import ONE_FILE, create_app

    async def post(app: Any, **request: Any) -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            return await client.post("/predict", **request)

    for literal in (False, True):
        predictor = BlockingPredictor(literal_inputs=literal)
        predictor.release.set()
        app = create_app(predictor, limits=ServeLimits())  # type: ignore[arg-type]
        many = [("file", (f"{i}.png", b"OK")) for i in range(1000)]
        answer = asyncio.run(post(app, files=many))
        assert answer.status_code == 400 and answer.json()["detail"] == ONE_FILE
        other_field = [("file", ("a.png", b"OK")), ("extra", ("b.png", b"OK"))]  # any second file, any field
        assert asyncio.run(post(app, files=other_field)).status_code == 400
        assert predictor.calls == 0 and app.state.pool.admitted == 0
        one = asyncio.run(post(app, files=[("file", ("a.png", b"OK"))], data={"note": "a plain field"}))
        assert one.status_code == 200 and len(one.json()["predictions"]) == 1
        app.state.pool.shutdown()


# --------------------------------------------------------------------------- decoded pixels per request


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` (its data cut short): under 100 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 100))


def _post_upload(predictor: Any, limits: ServeLimits, data: bytes) -> Any:
    from transferkit.deploy.serve import create_app

    app = create_app(predictor, limits=limits)

    async def scenario() -> Any:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post("/predict", files={"file": ("big.png", data, "image/png")})

    try:
        return asyncio.run(scenario())
    finally:
        app.state.pool.shutdown()


@pytest.mark.parametrize("side", [8_000, 60_000])
def test_an_upload_declaring_more_pixels_than_the_server_decodes_is_413_before_decoding(side: int) -> None:
    """The fourth round: a 20 MiB upload may declare hundreds of megapixels. Its header is read
    first; past --max-pixels it is refused (413) and nothing is decoded."""
    predictor = BlockingPredictor(literal_inputs=False)
    predictor.release.set()
    checked: list[Path] = []
    predictor.modality.check_file = lambda path: checked.append(path)  # type: ignore[attr-defined]
    answer = _post_upload(predictor, ServeLimits(max_pixels=10_000_000), _png_declaring(side, side))
    assert answer.status_code == 413 and "--max-pixels" in answer.json()["detail"], answer.text
    assert not checked and predictor.calls == 0


def test_a_decoding_that_runs_out_of_memory_in_its_check_is_413_not_500() -> None:
    predictor = BlockingPredictor(literal_inputs=False)

    def exhausted(_: Path) -> str | None:
        raise MemoryError

    predictor.modality.check_file = exhausted  # type: ignore[attr-defined]
    answer = _post_upload(predictor, ServeLimits(), _png_declaring(64, 64))
    assert answer.status_code == 413 and "too large to decode" in answer.json()["detail"], answer.text


def test_the_pixel_limit_is_bounded_and_on_the_command_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TransferkitError, match="max-pixels"):
        ServeLimits(max_pixels=10)
    code, _, err = run_cli(["serve", "nowhere", "--max-pixels", str(2**40)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
