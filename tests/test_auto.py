"""`transferkit auto`: held-out items no choice sees, a model in OUT/best from the first minute,
successive halving inside the budget, resumable after SIGKILL, a report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TINY, cli_command, cli_env, make_dataset
from tests.test_cli import run_cli
from tests.test_report import CHROMIUM, _chromium
from transferkit.auto import auto
from transferkit.auto.clock import Clock, spent_before
from transferkit.auto.halving import predicted_seconds, promote, rungs, schedule
from transferkit.auto.plans import Cost, Plan, interleave
from transferkit.auto.search import Deadline, hold_out
from transferkit.errors import ConfigError, TransferkitError
from transferkit.modalities.common import item_identity
from transferkit.workflows.auto_config import AutoConfig, seconds


def _costs(tmp: Path, export: float = 3.0) -> None:
    """Tell the search what an export of the tiny model costs here (as an earlier search would)."""
    cache = Path(os.environ["TRANSFERKIT_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "auto-costs.json").write_text(json.dumps({f"{TINY}:onnx": export, f"{TINY}:none": 0.0}))


BUDGET = "60s"
Searched = tuple[Path, Path, dict[str, Any], dict[str, Any]]  # data, out, result, what the kill left


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Searched:
    """One search, as a user has it: the command SIGKILLed once its first model is out and a
    second into the search, then continued with the same --out (here through the Python API)."""
    from transferkit import load

    root = tmp_path_factory.mktemp("auto")
    data = make_dataset(root / "data", classes=3, per_class=15)
    _costs(root)
    out = root / "out"
    args = cli_command("auto", str(data), "--out", str(out), "--budget", BUDGET, "--backbone", TINY, "--no-zoo",
                       "--quiet")  # fmt: skip
    run = subprocess.Popen(args, env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "best" / "model.safetensors").is_file() and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # into the search
    finished_first = run.poll() is not None
    run.send_signal(signal.SIGKILL)
    run.wait()
    load(out / "best")  # a complete model, whatever the moment
    killed = {"spent": spent_before(out), "finished_first": finished_first}
    result = auto(data, AutoConfig(budget=BUDGET, backbones=(TINY,), zoo=False), out=out)
    return data, out, result, killed


# --------------------------------------------------------------------------- the parts


def test_budgets_read_as_durations() -> None:
    assert [seconds(b) for b in ("90s", "5m", "1.5h", "45")] == [90, 300, 5400, 45]
    for bad in ("0m", "10", "five minutes", "1d"):
        with pytest.raises(ConfigError, match="budget"):
            AutoConfig(budget=bad)
    with pytest.raises(ConfigError, match="--no-zoo needs"):
        AutoConfig(zoo=False)


def test_the_held_out_share_is_stratified_and_disjoint(tmp_path: Path) -> None:
    from transferkit.config import FitConfig
    from transferkit.pipeline import load_data

    data = make_dataset(tmp_path / "d", classes=3, per_class=20)
    splits = load_data(data, FitConfig())
    search, held = hold_out(splits, AutoConfig(holdout=0.25), 0.2)
    seen = {item_identity(s) for s in (*search.train, *search.val)}
    assert not seen & {item_identity(s) for s in held}
    assert len(seen) + len(held) == 60
    assert sorted(s.label for s in held) == [0] * 5 + [1] * 5 + [2] * 5
    # a test/ split is the held-out share as it is
    with_test = make_dataset(tmp_path / "t", classes=3, per_class=12, layout="split")
    (with_test / "test").mkdir()
    (with_test / "val" / "class_0").rename(with_test / "test" / "class_0")
    splits = load_data(with_test, FitConfig())
    search, held = hold_out(splits, AutoConfig(), 0.2)
    assert held == list(splits.test) and not search.test


def test_successive_halving_fits_the_seconds_it_is_given() -> None:
    plans = [Plan("b", s) for s in ("partial", "two-phase", "full", "feature-extraction")]
    costs = {p: Cost(5.0, 0.1 * (i + 1)) for i, p in enumerate(plans)}
    assert rungs(4, 30, 300) == ([30, 90, 270], [4, 2, 1])
    for seconds_ in (20.0, 60.0, 200.0, 2000.0):
        chosen = schedule(plans, costs, seconds_, 25, 300)
        if chosen.plans:
            assert chosen.predicted <= seconds_
            assert chosen.predicted == predicted_seconds(chosen.plans, costs, chosen.steps, chosen.keep)
            assert chosen.steps[0] >= 25 and chosen.keep[-1] <= len(chosen.plans)
    assert not schedule(plans, costs, 1.0, 25, 300).plans  # nothing fits: only the probe ships
    assert len(schedule(plans, costs, 2000.0, 25, 300).plans) == 4


def test_each_backbone_keeps_its_most_promising_plans_when_the_schedule_cuts() -> None:
    big = [Plan("big", s) for s in ("partial", "two-phase", "full")]
    small = [Plan("small", s) for s in ("partial", "two-phase")]
    assert interleave([big, small]) == [big[0], small[0], big[1], small[1], big[2]]
    assert interleave([]) == [] and interleave([small]) == small


def test_the_paired_test_gives_a_tie_at_the_cut_to_the_cheaper_plan() -> None:
    a, b, c = Plan("big", "full"), Plan("big", "partial"), Plan("small", "full")
    same = [1] * 18 + [0] * 2
    scored = [(a, 0.90, same), (b, 0.85, [1] * 17 + [0] * 3), (c, 0.80, [1] * 16 + [0] * 4)]
    kept, why = promote(scored, 1, lambda x, y: x.backbone == "small" and y.backbone == "big")
    assert kept == [c] and "paired test" in why
    clear = [(a, 0.95, [1] * 200), (c, 0.50, [1] * 100 + [0] * 100)]
    kept, _ = promote(clear, 1, lambda x, y: x.backbone == "small")
    assert kept == [a]


def test_the_deadline_ends_a_run_once_the_search_time_is_up() -> None:
    from types import SimpleNamespace

    now = {"spent": 10.0}
    clock = SimpleNamespace(spent=lambda: now["spent"])
    deadline = Deadline(clock, stop_at=30.0)  # type: ignore[arg-type]
    loop = SimpleNamespace(summary={}, stop_phase=False)
    deadline.on_epoch_end(loop, None)  # type: ignore[arg-type]
    assert not loop.stop_phase and not deadline.fired
    now["spent"] = 30.5
    deadline.on_epoch_end(loop, None)  # type: ignore[arg-type]
    assert loop.stop_phase and deadline.fired and loop.summary["stopped_early"]


def test_the_clock_books_every_session(tmp_path: Path) -> None:
    clock = Clock(100.0, tmp_path, started=time.time() - 30).start()
    clock.stop()
    assert 29 < spent_before(tmp_path) < 40
    again = Clock(100.0, tmp_path, started=time.time())
    assert 29 < again.spent() < 41 and again.left() < 71
    (tmp_path / "clock.json").write_text('{"spent": "lots"}')  # edited: counted as nothing, not a crash
    assert spent_before(tmp_path) == 0.0


# --------------------------------------------------------------------------- the whole search


def test_auto_ships_a_model_scored_on_items_no_choice_saw(searched: Searched) -> None:
    from transferkit import load

    data, out, result, _ = searched
    held = result["held_out"]
    assert held["items"] == 9 and 0.0 <= held["accuracy"] <= 1.0 and held["low"] <= held["high"]
    model = load(out / "best")
    assert model.predict([next(data.rglob("*.png"))])[0].labels[0] in ("class_0", "class_1", "class_2")
    split = json.loads((out / "best" / "split.json").read_text())
    assert len(split["test"]) == 9 and not {i["path"] for i in split["test"]} & set(split["train_items"])
    trail = json.loads((out / "auto.json").read_text())
    stages = [e["stage"] for e in trail["trail"]]
    assert stages[0] == "anytime" and "export" in stages
    # the search trained what fitted, or booked why nothing did (a loaded machine times steps long)
    assert "rung 1" in stages or all(e["status"] == "dropped" for e in trail["trail"] if e["stage"] == "plan")
    assert all(e["status"] != "running" for e in trail["trail"])
    onnx = next(r for r in result["exports"] if r["format"] == "ONNX fp32")
    assert abs(onnx["accuracy"] - held["accuracy"]) <= 0.002 and Path(onnx["file"]).is_file()
    assert (out / "report.html").read_text().count('id="trail"') == 1


def test_a_rerun_of_a_finished_search_reuses_every_run(searched: Searched, tmp_path: Path) -> None:
    data, out, first, _ = searched
    before = {p.name for p in (out / "runs").iterdir()}
    again = auto(data, AutoConfig(budget=BUDGET, backbones=(TINY,), zoo=False), out=out)
    assert {p.name for p in (out / "runs").iterdir()} == before
    assert again["held_out"]["accuracy"] == first["held_out"]["accuracy"]


def test_other_settings_other_data_and_user_folders_are_refused(searched: Searched, tmp_path: Path) -> None:
    data, out, *_ = searched
    with pytest.raises(TransferkitError, match="other settings"):
        auto(data, AutoConfig(budget=BUDGET, backbones=(TINY,), zoo=False, seed=1), out=out)
    other = make_dataset(tmp_path / "other", classes=3, per_class=14)
    with pytest.raises(TransferkitError, match="other data"):
        auto(other, AutoConfig(budget=BUDGET, backbones=(TINY,), zoo=False), out=out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(TransferkitError, match="did not write"):
        auto(data, AutoConfig(budget=BUDGET, backbones=(TINY,), zoo=False), out=mine)
    assert (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 1


def test_a_bad_budget_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(["auto", tmp_path, "--budget", "soon"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "budget" in err


def test_killed_at_any_moment_best_loads_and_the_rerun_spends_what_is_left(
    searched: Searched,
) -> None:
    from transferkit import load

    _, out, result, killed = searched
    assert not killed["finished_first"] and killed["spent"] > 0  # the kill came mid-search, its time booked
    # the rerun continued the clock (wall-time limits are the benchmark's: benchmarks/auto.py --parts kills)
    assert spent_before(out) >= killed["spent"] and result["seconds"] >= killed["spent"]
    trail = json.loads((out / "auto.json").read_text())["trail"]
    assert [e["stage"] for e in trail].count("anytime") == 1  # the probe was reused, not trained again
    load(out / "best")


def test_a_wise_ft_mix_is_a_model_that_loads_and_says_how_it_was_made(searched: Searched, tmp_path: Path) -> None:
    from transferkit import load
    from transferkit.auto.finish import START_FILE, wise_ft

    _, out, *_ = searched
    tuned = next((p.parent for p in (out / "runs").glob(f"*/{START_FILE}")), None)
    if tuned is None:
        pytest.skip("the search fitted no fine-tuning run on this machine's timing")
    mixed = wise_ft(tuned, tmp_path / "mix", alpha=0.25)
    assert mixed is not None
    card = json.loads((tmp_path / "mix" / "config.json").read_text())
    assert card["weights"] == {"method": "wise-ft", "alpha": 0.25} and card["strategy"] != "linear-probe"
    assert load(tmp_path / "mix").predict([next(out.parent.rglob("*.png"))])[0].labels


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs it: apt-get install chromium)"
)
def test_the_report_renders_in_headless_chromium(searched: Searched, tmp_path: Path) -> None:
    report = (searched[1] / "report.html").resolve()
    html = report.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    shot = tmp_path / "auto.png"
    done = _chromium(["--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()], tmp_path / "p1")
    assert shot.is_file() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    dom = _chromium(["--dump-dom", report.as_uri()], tmp_path / "p2").stdout
    for part in ('id="plot-trail"', 'id="plot-confusion"', '<table id="trail">', 'id="most-confused"'):
        assert part in dom
    assert dom.count("<tr") == 1 + len(json.loads((searched[1] / "auto.json").read_text())["trail"])
