"""The fourth hostile round's findings, each as the mechanism now holds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env
from tests.test_cli import run_cli
from transferkit.config import FitConfig, load_yaml
from transferkit.demos import write_digits_demo
from transferkit.errors import ConfigError, TransferkitError
from transferkit.ownership import files_under


@pytest.mark.parametrize("name", [".transferkit", ".transferkit.lock"])
def test_a_users_file_named_like_a_marker_deeper_down_is_theirs(tmp_path: Path, name: str) -> None:
    """Only the folder's own marker and lock are left out of its seal: demo-data deleted a user's
    `d10/3/.transferkit` replacing the dataset whole."""
    demo = write_digits_demo(tmp_path / "d10", per_class=2)
    (demo / "3" / name).write_text("precious", encoding="utf-8")
    with pytest.raises(TransferkitError, match="added or edited since"):
        write_digits_demo(demo, per_class=2)
    assert (demo / "3" / name).read_text(encoding="utf-8") == "precious"
    assert f"3/{name}" in files_under(demo)


@pytest.mark.parametrize("env", ["nope", "json.nope", "../../etc/passwd", "tests.boom_plugin"])
def test_a_plugin_that_fails_to_load_is_one_line_and_exit_2_on_every_command(tmp_path: Path, env: str) -> None:
    (tmp_path / "boom_plugin.py").write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    for args in (["list"], ["--help"]):
        done = subprocess.run(
            [sys.executable, "-c", "from transferkit.cli import main; main()", *args], cwd=ROOT, capture_output=True,
            text=True, env={**cli_env(), "TRANSFERKIT_PLUGINS": env.replace("tests.", ""),
                            "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "TRANSFERKIT_PLUGINS" in done.stderr and "Traceback" not in done.stderr


def test_yaml_reads_1e_minus_3_as_a_number(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nclip_grad: 5e-1\n", encoding="utf-8")
    assert load_yaml(tmp_path / "c.yaml") == {"lr": 0.001, "clip_grad": 0.5}


@pytest.mark.parametrize("kind", ["latin1", "folder", "device"])
def test_a_config_file_that_is_not_utf8_text_is_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = {"latin1": tmp_path / "c.yaml", "folder": tmp_path, "device": Path("/dev/zero")}[kind]
    if kind == "latin1":
        path.write_bytes(b"\xff\xfe")
    for command in ("fit", "auto", "rank", "compare"):
        code, _, err = run_cli([command, str(tmp_path), "--config", str(path)], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("option", [{"clip_grad": 1.0}, {"ema": 0.99}])
def test_loop_variations_are_refused_for_a_closed_form_strategy(option: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="closed form"):
        FitConfig(strategy="linear-probe", **option)  # type: ignore[arg-type]


def test_an_export_into_a_sealed_run_joins_its_seal(tmp_path: Path) -> None:
    """`export` wrote model.onnx beside a sealed run's files and the next `fit --out` there was
    refused as if the user had added it; an export now re-seals a run it found sealed."""
    pytest.importorskip("onnxscript")
    import transferkit
    from tests.conftest import make_dataset
    from tests.test_trust import FIT
    from transferkit.deploy.export import export_onnx
    from transferkit.ownership import check_output_dir

    data = make_dataset(tmp_path / "data", classes=2, per_class=6)
    transferkit.fit(data, out=tmp_path / "run", strategy="linear-probe", **FIT)
    export_onnx(tmp_path / "run", repeats=1)
    assert (tmp_path / "run" / "model.onnx").is_file()
    check_output_dir(tmp_path / "run", "run", "--out")  # still transferkit's run: no refusal
