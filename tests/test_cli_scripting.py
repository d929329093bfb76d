"""The command line as scripts and CI meet it: instant answers, clean logs, --json, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK_FLAGS, ROOT, TINY, TINY_IMAGE, cli_command, cli_env
from tests.test_cli import run_cli
from transferkit import cli

FAST = ["--backbone", TINY, "--image-size", str(TINY_IMAGE), "--batch-size", "8", "--seed", "0", *QUICK_FLAGS]

NO_TORCH = """
import sys
from transferkit.cli import main
sys.argv = ["transferkit", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "timm", "transformers", "sklearn", "matplotlib") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["list"], ["fit", "/nonexistent/data"], ["fit", ".", "--epochs", "0"], ["compare", "/missing"],
     ["cache", "list"], ["layers", "efficientnet_lite0.offline"], ["layers", "all-minilm-l6-v2.offline"]],
)  # fmt: skip
def test_help_list_and_user_errors_answer_without_loading_torch(args: list[str], tmp_path: Path) -> None:
    env = {**cli_env(), "TRANSFERKIT_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert "HEAVY:\n" in done.stdout, done.stdout + done.stderr


def test_an_error_into_a_log_is_one_whole_line(tmp_path: Path) -> None:
    """stderr into a file (CI, cron, `2> log`): rich would wrap at 80 columns and read ``[old]``
    in a path as markup; the line comes out whole, the path as typed."""
    path = tmp_path / "[old]" / ("scans-of-the-left-knee-" * 4)
    env = {key: value for key, value in cli_env().items() if key != "COLUMNS"}
    done = subprocess.run(cli_command("fit", str(path)), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(path) in done.stderr, done.stderr
    demo = tmp_path / "[old]" / "digits"
    done = subprocess.run(cli_command("demo-data", str(demo), "--per-class", "1"), cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0 and f"under {demo}" in done.stdout, done.stdout + done.stderr  # the path as written


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, transferkit, transferkit.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), check=True)


def test_a_log_gets_one_line_per_epoch_and_no_blank_lines(tiny_data: Path, tmp_path: Path) -> None:
    log = tmp_path / "fit.log"
    with log.open("w") as handle:  # stdout redirected to a file, as in CI or `> log`
        done = subprocess.run(
            cli_command("fit", str(tiny_data), "--strategy", "two-phase", "--epochs", "3", *FAST, "--out",
                        str(tmp_path / "run")),
            cwd=ROOT, env=cli_env(), stdout=handle, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert all(line.strip() for line in lines), "blank lines in the log"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [int(re.match(r"epoch\s+(\d+)/3", e).group(1)) for e in epochs] == [1, 2, 3]  # type: ignore[union-attr]
    assert not any("\r" in line or "\x1b" in line for line in lines), "progress-bar redraws in the log"


def test_fit_json_carries_the_numbers_the_console_prints(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["fit", tiny_data, "--strategy", "feature-extraction", "--epochs", "2", *FAST, "--out", tmp_path / "run"]
    code, out, err = run_cli([*args, "--json"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)  # stdout holds the object alone; the progress went to stderr
    printed = re.search(
        r"final validation accuracy (\d\.\d{4}) \(95% CI [0-9.–]+ over \d+ items\), macro-F1 (\d\.\d{4})", err
    )
    assert printed is not None, err
    val = result["metrics"]["val"]
    assert f"{val['accuracy']:.4f}" == printed.group(1) and f"{val['macro_f1']:.4f}" == printed.group(2)
    assert result["strategy"] == "feature-extraction" and result["run_dir"] == str(tmp_path / "run")
    assert len(result["history"]) == 2

    code, out, err = run_cli([*args, "--quiet", "--out", tmp_path / "quiet"], capsys, monkeypatch)
    assert code == 0, err
    assert "epoch" not in out and f"final validation accuracy {val['accuracy']:.4f}" in out


def test_evaluate_predict_and_rank_json_match_the_tables(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    fit = ["fit", tiny_data, "--strategy", "linear-probe", "--epochs", "1", *FAST, "--out", run]
    assert run_cli(fit, capsys, monkeypatch)[0] == 0

    code, table, _ = run_cli(["evaluate", run, tiny_data], capsys, monkeypatch)
    code_json, out, err = run_cli(["evaluate", run, tiny_data, "--json"], capsys, monkeypatch)
    assert code == code_json == 0, err
    report = json.loads(out)
    assert f"{report['num_items']} images: accuracy {report['accuracy']:.4f}" in table

    image = tiny_data / "class_1" / "000.png"
    _, table, _ = run_cli(["predict", run, image, "--top-k", "1"], capsys, monkeypatch)
    _, out, _ = run_cli(["predict", run, image, "--top-k", "1", "--json"], capsys, monkeypatch)
    top = json.loads(out)["predictions"][0]["top"][0]
    assert f"{top['label']} ({top['probability']:.3f})" in table

    rank = ["rank", tiny_data, "--backbones", TINY, "--image-size", str(TINY_IMAGE), "--folds", "2"]
    _, table, _ = run_cli([*rank, "--out", tmp_path / "rank"], capsys, monkeypatch)
    code, out, err = run_cli([*rank, "--out", tmp_path / "rank2", "--json"], capsys, monkeypatch)
    assert code == 0, err
    ranking = json.loads(out)
    assert ranking["recommended"] == TINY and f"{ranking['scores'][0]['logme']:.3f}" in table


def test_compare_json_names_the_recommendation_it_prints(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["compare", tiny_data, "--backbone", TINY, "--strategies", "linear-probe,feature-extraction",
            "--budget-epochs", "1", "--seeds", "1", "--image-size", str(TINY_IMAGE), "--out", tmp_path / "cmp",
            "--json"]  # fmt: skip
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    comparison = json.loads(out)
    assert {r["strategy"] for r in comparison["rows"]} == {"linear-probe", "feature-extraction"}
    assert comparison["recommendation"]["reason"].split()[0] in err  # the printed recommendation names it


@pytest.mark.parametrize(("command", "code", "hint"), [("fit", 3, "--resume"), ("evaluate", 130, None)])
def test_an_interrupt_exits_3_when_a_rerun_continues_and_130_otherwise(
    command: str, code: int, hint: str | None, tiny_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from transferkit import api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, command, interrupted)
    args = [command, tiny_data, *FAST, "--out", tmp_path] if command == "fit" else [command, tmp_path, tiny_data]
    got, _, err = run_cli(args, capsys, monkeypatch)
    assert got == code and "Traceback" not in err
    assert (hint in err) if hint else ("--resume" not in err)
    assert cli.EXIT_RESUMABLE == 3


def test_doctor_and_cache_list_and_clear(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(["doctor", "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert {p["package"] for p in report["packages"]} >= {"torch", "timm", "transformers", "flwr"}
    assert any(w["backbone"] == "efficientnet_lite0.offline" and w["installed"] for w in report["offline_weights"])
    assert all(d["installed"] or d["fix"] for d in report["demos"])  # a missing piece comes with its fix

    fit = [
        "fit",
        tiny_data,
        "--strategy",
        "feature-extraction",
        "--epochs",
        "1",
        "--no-augment",
        *FAST,
        "--out",
        tmp_path / "r",
    ]
    assert run_cli(fit, capsys, monkeypatch)[0] == 0
    _, out, _ = run_cli(["cache", "list", "--json"], capsys, monkeypatch)
    listed = json.loads(out)
    features = [e for e in listed["entries"] if e["key"] != "scan-verdicts"]
    assert len(features) == 2 and {e["items"] for e in features} == {24, 6}  # train and val features
    (tmp_path / "cache" / "notes.txt").write_text("not ours")
    code, out, _ = run_cli(["cache", "clear"], capsys, monkeypatch)
    assert code == 0 and "freed" in out
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["notes.txt"]  # only transferkit's entries went
    code, _, err = run_cli(["cache", "clear", "nope"], capsys, monkeypatch)
    assert code == 2 and "no cache entry nope" in err


def test_a_second_scan_of_the_same_images_does_not_decode_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import make_dataset
    from transferkit.modalities import image_io
    from transferkit.modalities.image import scan_class_folders

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", per_class=4)
    (data / "class_0" / "broken.png").write_bytes(b"\x89PNG not really")
    decoded: list[str] = []
    real_open = image_io.Image.open

    def counting_open(fp: object, *args: object, **kwargs: object) -> object:
        decoded.append("x")
        return real_open(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(image_io.Image, "open", counting_open)
    first = scan_class_folders(data)
    assert len(decoded) == 13
    decoded.clear()
    second = scan_class_folders(data)
    assert decoded == [] and first[1] == second[1] and [s.reason for s in first[2]] == [s.reason for s in second[2]]
    (data / "class_1" / "000.png").write_bytes((data / "class_0" / "broken.png").read_bytes())  # same name, new bytes
    third = scan_class_folders(data)
    assert len(decoded) == 0 and len(third[1]) == 11  # known bad content: judged without decoding, and skipped


def test_startup_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/startup.py at tiny settings, so the script cannot rot."""
    done = subprocess.run(
        [sys.executable, "benchmarks/startup.py", "--repeats", "1", "--backbone", "resnet10t.random",
         "--fit-image-size", "32", "--image-size", "16", "--epochs", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "startup.json").read_text())
    assert set(result["startup"]) == {"--help", "fit /nonexistent/data", "list"}
    assert result["warm_cache"]["cold_s"] > 0 and result["warm_cache"]["warm_s"] > 0


def test_the_stored_layer_tables_match_the_built_backbones() -> None:
    """`layers` answers the offline zoo from stored tables; they must be what building says."""
    from transferkit.backbones import create_backbone
    from transferkit.cli.layer_tables import TABLES_FILE, describe, stored

    names = list(json.loads(TABLES_FILE.read_text())["backbones"])
    assert {"efficientnet_lite0.offline", "mobilenet_v2.offline", "all-minilm-l6-v2.offline"} <= set(names)
    for name in names:
        table = stored(name)
        assert table is not None, f"{name}: stored with other versions; python -m transferkit.cli.layer_tables"
        assert json.loads(json.dumps(describe(create_backbone(name, pretrained=False)))) == table, name


def test_demo_data_writes_a_few_shot_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(["demo-data", tmp_path / "few", "--per-class", "20", "--size", "16"], capsys, monkeypatch)
    assert code == 0, err
    counts = {d.name: len(list(d.glob("*.png"))) for d in (tmp_path / "few").iterdir() if d.is_dir()}
    assert counts == {str(d): 20 for d in range(10)} and "wrote 200 digit images" in out
