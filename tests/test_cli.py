"""The CLI as a user meets it: exit codes, stderr messages, no tracebacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK_FLAGS, TINY, TINY_IMAGE, make_dataset
from transferkit.cli import main

FAST = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8", *QUICK_FLAGS]


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["transferkit", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_fit_evaluate_predict(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    code, out, err = run_cli(
        ["fit", tiny_data, "--strategy", "two-phase", "--epochs", "2", *FAST, "--out", run], capsys, monkeypatch
    )
    assert code == 0, err
    assert "epoch   2/2" in out and "final validation accuracy" in out
    assert (run / "model.safetensors").is_file()

    code, out, err = run_cli(["evaluate", run, tiny_data, "--report", tmp_path / "eval.json"], capsys, monkeypatch)
    assert code == 0, err
    assert "accuracy" in out and "confusion matrix" in out
    assert json.loads((tmp_path / "eval.json").read_text())["num_items"] == 30

    code, out, err = run_cli(
        ["predict", run, tiny_data / "class_1" / "000.png", "--json", "--top-k", "2"], capsys, monkeypatch
    )
    assert code == 0, err
    rows = json.loads(out)["predictions"]
    assert len(rows) == 1 and len(rows[0]["top"]) == 2


def test_yaml_config_with_cli_override(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("strategy: feature-extraction\nepochs: 5\n")
    code, _, err = run_cli(
        ["fit", tiny_data, "--config", cfg, "--epochs", "1", *FAST, "--out", tmp_path / "r"], capsys, monkeypatch
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["strategy"] == "feature-extraction" and saved["fit_config"]["epochs"] == 1


def test_list_and_layers_work_offline(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_cli(["list"], capsys, monkeypatch)
    assert code == 0 and "efficientnet_lite0.offline" in out and "two-phase" in out
    code, out, _ = run_cli(["layers", "efficientnet_lite0.offline"], capsys, monkeypatch)
    assert code == 0 and "conv_stem" in out and "layer groups" in out and "BatchNormAct2d" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "{missing}"], "does not exist"),
        (["fit", "{one_class}"], "at least 2 class sub-folders"),
        (["fit", "{empty_class}"], "class folder(s) with no readable image"),
        (["fit", "{data}", "--backbone", "resnet1800"], "unknown backbone 'resnet1800'; did you mean"),
        (["fit", "{data}", "--strategy", "fine-tune"], "unknown strategy 'fine-tune'"),
        (["fit", "{data}", "--strategy", "partial", "--unfreeze", "99"], "unfreeze=99 is invalid"),
        (["fit", "{data}", "--epochs", "0"], "epochs=0 is invalid"),
        (["fit", "{data}", "--lr", "-0.1"], "lr=-0.1 is invalid"),
        (["fit", "{data}", "--backbone-lr", "0"], "backbone_lr=0.0 is invalid"),
        (["layers", "no_such_model"], "unknown backbone"),
        (["evaluate", "{data}", "{data}"], "not a model directory"),
        (["fit", "{data}", "--config", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_gives_message_and_exit_code_not_traceback(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = {
        "missing": tmp_path / "nowhere",
        "one_class": make_dataset(tmp_path / "one", classes=1, per_class=3),
        "empty_class": make_dataset(tmp_path / "empty", classes=2, per_class=3),
        "data": make_dataset(tmp_path / "data", classes=2, per_class=4),
    }
    (paths["empty_class"] / "class_9").mkdir()
    argv = [a.format(**paths) for a in args]
    if argv[0] == "fit":
        argv += ["--out", str(tmp_path / "run")] + (FAST if "--backbone" not in argv else FAST[2:])
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err + out


def test_compare_and_report_commands(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["compare", tiny_data, "--backbone", TINY, "--image-size", str(TINY_IMAGE), "--no-augment"]
    args += ["--strategies", "linear-probe,feature-extraction", "--budget-epochs", "1", "--seeds", "1"]
    code, out, err = run_cli([*args, "--out", tmp_path / "cmp", "--best-out", tmp_path / "best"], capsys, monkeypatch)
    assert code == 0, err
    assert "run 2/2" in out and "Recommendation:" in out and "Rule of thumb:" in out
    assert (tmp_path / "best" / "model.safetensors").is_file()
    code, out, err = run_cli(["report", tmp_path / "cmp"], capsys, monkeypatch)
    assert code == 0 and "report.html" in out
    code, _, err = run_cli(["report", tmp_path], capsys, monkeypatch)
    assert code == 2 and "no results.json" in err
    bad = [*args[:-4], "--strategies", "linear-probe,nope", "--out", tmp_path / "x"]
    code, _, err = run_cli(bad, capsys, monkeypatch)
    assert code == 2 and "unknown strategy 'nope'" in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["fit"], capsys, monkeypatch)
    assert code == 2 and "Missing argument" in err
