"""Multi-task heads on one shared backbone: CSV loading, masked losses, weighting, save/load."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import (
    QUICK_FLAGS,
    ROOT,
    TINY,
    TINY_IMAGE,
    cli_command,
    cli_env,
    kill_after_first_checkpoint,
    make_dataset,
    quick_config,
)
from tests.test_cli import run_cli
from transferkit.backbones import create_backbone
from transferkit.cli import app
from transferkit.errors import ConfigError, DataError
from transferkit.layers import is_adapter
from transferkit.modalities import MISSING
from transferkit.modalities.image_io import eval_transform, open_rgb
from transferkit.runfolder import RunFolder
from transferkit.workflows.multitask import (
    MultiTaskConfig,
    MultiTaskHead,
    MultiTaskObjective,
    fit_multitask,
    load_multitask,
    load_multitask_csv,
)
from transferkit.workflows.multitask_versus import versus_single_task

BASE = quick_config(backbone=TINY, image_size=TINY_IMAGE, batch_size=8, epochs=2, augment=False)


def _csv(root: Path) -> tuple[Path, Path]:
    """3 shape classes; task 'kind' = the class, task 'first' = class 0 or not, some cells empty."""
    images = make_dataset(root / "images", classes=3, per_class=8)
    rows = ["image,kind,first"]
    for i, path in enumerate(sorted(images.glob("*/*.png"))):
        label = path.parent.name
        first = "" if i % 4 == 0 else ("yes" if label == sorted(p.name for p in images.iterdir())[0] else "no")
        rows.append(f"{path.relative_to(images).as_posix()},{label},{first}")
    csv_path = root / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path, images


@pytest.fixture
def mt_data(tmp_path: Path) -> tuple[Path, Path]:
    return _csv(tmp_path)


def _head(uncertainty: bool = False) -> MultiTaskHead:
    return MultiTaskHead(4, {"a": 3, "b": 2}, hidden=0, dropout=0.0, uncertainty=uncertainty)


def multitask_loss(
    head: MultiTaskHead, logits: torch.Tensor, labels: torch.Tensor, weights: tuple[float, ...]
) -> tuple[torch.Tensor, list[float]]:
    """The engine's multi-task objective: (total loss, per-task losses; NaN where unlabelled)."""
    objective = MultiTaskObjective(head, weights, 0.0, [None, None])
    per_task = [float("nan") if x is None else float(x.detach()) for x in objective.task_losses(logits, labels)]
    return objective.combined(logits, labels), per_task


def test_missing_labels_add_nothing_to_the_loss() -> None:
    torch.manual_seed(0)
    head = _head()
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([[0, 1], [1, MISSING], [2, MISSING], [0, 0]])
    total, per_task = multitask_loss(head, logits, labels, weights=(1.0, 1.0))
    a, b = logits[:, :3], logits[:, 3:]
    expected_b = torch.nn.functional.cross_entropy(b[[0, 3]], torch.tensor([1, 0]))
    assert per_task[1] == pytest.approx(float(expected_b.detach()))
    total.backward()
    # The unlabelled rows get no gradient through task b's logits.
    assert torch.all(logits.grad[[1, 2], 3:] == 0)  # type: ignore[index]
    assert torch.all(logits.grad[[1, 2], :3] != 0)  # type: ignore[index]
    assert float(total.detach()) == pytest.approx(
        float((torch.nn.functional.cross_entropy(a, labels[:, 0]) + expected_b).detach())
    )


def test_a_batch_without_labels_for_a_task_is_fine() -> None:
    head = _head()
    total, per_task = multitask_loss(head, torch.randn(2, 5), torch.tensor([[1, MISSING], [0, MISSING]]), (1.0, 1.0))
    assert torch.isfinite(total) and per_task[1] != per_task[1]  # NaN: nothing to report


def test_fixed_weights_scale_each_task() -> None:
    head = _head()
    logits, labels = torch.randn(3, 5), torch.tensor([[0, 1], [1, 0], [2, 1]])
    _, per_task = multitask_loss(head, logits, labels, (1.0, 1.0))
    total, _ = multitask_loss(head, logits, labels, (2.0, 0.5))
    assert float(total) == pytest.approx(2.0 * per_task[0] + 0.5 * per_task[1], rel=1e-5)


def test_uncertainty_weighting_follows_kendall_et_al() -> None:
    head = _head(uncertainty=True)
    with torch.no_grad():
        head.log_vars.copy_(torch.tensor([0.5, -1.0]))  # type: ignore[union-attr]
    logits, labels = torch.randn(3, 5), torch.tensor([[0, 1], [1, 0], [2, 1]])
    total, per_task = multitask_loss(head, logits, labels, (1.0, 1.0))
    expected = sum(torch.exp(torch.tensor(-s)) * loss + 0.5 * s for s, loss in zip([0.5, -1.0], per_task, strict=True))
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    total.backward()
    assert head.log_vars.grad is not None  # type: ignore[union-attr]  # the weights are learned


def test_csv_loading_masks_empty_cells_and_splits(mt_data: tuple[Path, Path]) -> None:
    csv_path, images = mt_data
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=BASE)
    data = load_multitask_csv(csv_path, images, cfg, val_fraction=0.25)
    assert data.classes["first"] == ("no", "yes")
    assert len(data.train) + len(data.val) == 24
    assert sum(s.label[1] == MISSING for s in (*data.train, *data.val)) == 6  # type: ignore[index]
    single = data.single_task("first")
    assert len(single.train) + len(single.val) == 18


@pytest.mark.parametrize(
    ("tasks", "message"), [(("kind", "frist"), "did you mean 'first'"), (("kind", "image"), "must not also be a task")]
)
def test_bad_task_columns_are_clear_errors(mt_data: tuple[Path, Path], tasks: tuple[str, ...], message: str) -> None:
    csv_path, images = mt_data
    with pytest.raises((DataError, ConfigError), match=message):
        load_multitask_csv(csv_path, images, MultiTaskConfig(tasks=tasks, base=BASE))


def test_a_missing_image_is_named(mt_data: tuple[Path, Path]) -> None:
    csv_path, images = mt_data
    next(images.glob("*/*.png")).unlink()
    with pytest.raises(DataError, match="missing"):
        load_multitask_csv(csv_path, images, MultiTaskConfig(tasks=("kind",), base=BASE))


def test_config_rejects_bad_values_before_any_compute() -> None:
    with pytest.raises(ConfigError, match="weighting"):
        MultiTaskConfig(tasks=("a",), weighting="magic", base=BASE)
    with pytest.raises(ConfigError, match="task_weights"):
        MultiTaskConfig(tasks=("a", "b"), task_weights=(1.0,), base=BASE)
    with pytest.raises(ConfigError, match="strategy"):
        MultiTaskConfig(tasks=("a",), base=BASE.replace(strategy="linear-probe"))


def test_lora_trains_the_adapters_and_heads_only(mt_data: tuple[Path, Path]) -> None:
    csv_path, images = mt_data
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=BASE.replace(strategy="lora"))
    data = load_multitask_csv(csv_path, images, cfg, val_fraction=0.25)
    result = fit_multitask(data, cfg)
    pretrained = create_backbone(TINY).state_dict()
    after = result.model.backbone.state_dict()
    adapters = [k for k in after if is_adapter(k)]
    assert adapters, "lora must add adapters to the backbone"
    # every base weight (peft keeps the original under base_layer) is the pre-trained one
    for key, value in after.items():
        if not is_adapter(key):
            assert torch.equal(value, pretrained[key.replace(".base_layer", "")]), key
    assert any(not torch.all(after[k] == 0) for k in adapters if "lora_B" in k), "the adapters trained"


def test_scratch_starts_from_random_weights_and_updates_batchnorm(mt_data: tuple[Path, Path]) -> None:
    csv_path, images = mt_data
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=BASE.replace(strategy="scratch"))
    data = load_multitask_csv(csv_path, images, cfg, val_fraction=0.25)
    pretrained = create_backbone(TINY).state_dict()
    fresh = create_backbone(TINY, pretrained=False).state_dict()
    after = fit_multitask(data, cfg).model.backbone.state_dict()
    weights = [k for k in after if k.endswith("weight") and after[k].ndim > 1]
    assert not all(torch.equal(after[k], pretrained[k]) for k in weights), "scratch must not be the pre-trained net"
    stats = [k for k in after if k.endswith("running_mean")]
    assert all(not torch.equal(after[k], fresh[k]) for k in stats), "random-init BatchNorm statistics must update"


def _mt_cmd(csv_path: Path, images: Path, out: Path, *extra: str) -> list[str]:
    args = ["fit-multitask", str(csv_path), "--images", str(images), "--tasks", "kind,first", "--backbone", TINY]
    args += ["--image-size", str(TINY_IMAGE), "--batch-size", "4", "--strategy", "two-phase", "--epochs", "6"]
    return cli_command(*args, *QUICK_FLAGS, "--out", str(out), *extra)


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(mt_data: tuple[Path, Path], tmp_path: Path) -> None:
    csv_path, images = mt_data
    subprocess.run(
        _mt_cmd(csv_path, images, tmp_path / "ref"), check=True, capture_output=True, cwd=ROOT, env=cli_env()
    )
    run = tmp_path / "run"
    kill_after_first_checkpoint(_mt_cmd(csv_path, images, run), run / RunFolder.CHECKPOINT)
    done = subprocess.run(
        _mt_cmd(csv_path, images, run, "--resume"), capture_output=True, text=True, cwd=ROOT, env=cli_env()
    )
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_fit_save_load_predict_every_task(mt_data: tuple[Path, Path], tmp_path: Path, weighting: str) -> None:
    csv_path, images = mt_data
    cfg = MultiTaskConfig(tasks=("kind", "first"), weighting=weighting, base=BASE.replace(strategy="two-phase"))
    data = load_multitask_csv(csv_path, images, cfg, val_fraction=0.25)
    result = fit_multitask(data, cfg, out=tmp_path / "run")
    assert set(result.metrics) == {"kind", "first"}
    assert len(result.history) == 2  # one head epoch, one fine-tuning epoch
    loaded = load_multitask(tmp_path / "run")
    paths = [str(s.path) for s in data.val]
    predictions = loaded.predict(paths)
    assert set(predictions[0].labels) == {"kind", "first"}
    # The reloaded model predicts exactly what the trained one does.
    result.model.eval()
    batch = torch.stack([eval_transform(loaded.preprocessing)(open_rgb(p)) for p in paths])
    with torch.inference_mode():
        assert torch.equal(result.model(batch), loaded.model(batch))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["kind"] == "multitask" and saved["head"]["weighting"] == weighting


def test_frozen_backbone_strategy_keeps_backbone_weights(mt_data: tuple[Path, Path]) -> None:
    csv_path, images = mt_data
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=BASE.replace(strategy="feature-extraction"))
    data = load_multitask_csv(csv_path, images, cfg, val_fraction=0.25)
    before = create_backbone(TINY).state_dict()
    after = fit_multitask(data, cfg).model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_fit_then_predict_prints_every_task(mt_data: tuple[Path, Path], tmp_path: Path) -> None:
    csv_path, images = mt_data
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["fit-multitask", str(csv_path), "--images", str(images), "--tasks", "kind,first", "--backbone", TINY,
         "--image-size", str(TINY_IMAGE), "--epochs", "2", "--batch-size", "8", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    predicted = runner.invoke(app, ["predict", str(run), str(next(images.glob("*/*.png"))), "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.output)["predictions"]
    assert set(rows[0]["labels"]) == {"kind", "first"}


def test_cli_bad_task_weights_is_a_one_line_error(
    mt_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path, images = mt_data
    args = ["fit-multitask", csv_path, "--images", images, "--tasks", "kind,first", "--task-weights", "x"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "task_weights" in err and "Traceback" not in err and err.count("\n") == 1


def test_versus_single_task_reports_both_sides_over_seeds(mt_data: tuple[Path, Path], tmp_path: Path) -> None:
    csv_path, images = mt_data
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=BASE)
    data = load_multitask_csv(csv_path, images, cfg, val_fraction=0.25)
    result = versus_single_task(data, cfg, out=tmp_path / "run", seeds=2)
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    for side in ("multi_task", "single_task"):
        assert set(result[side]["per_task"]) == {"kind", "first"}
        assert 0.0 <= result[side]["per_task"]["kind"]["accuracy_mean"] <= 1.0
    # Two single-task models hold two backbones; the multi-task model one.
    assert result["single_task"]["params"] > 1.8 * result["multi_task"]["params"]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_fit_multitask_reads_its_own_options_from_yaml_too(
    mt_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MultiTaskConfig is in the one option scheme: its fields are generated options, and a
    --config file holds them beside the fit options (#43 point 5)."""
    csv_path, images = mt_data
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [kind, first]\nweighting: magic\n", encoding="utf-8")
    code, _, err = run_cli(["fit-multitask", csv_path, "--images", images, "--config", bad], capsys, monkeypatch)
    assert code == 2 and "weighting" in err and err.count("\n") == 1, err
    good = tmp_path / "good.yaml"
    good.write_text(
        f"tasks: kind,first\nweighting: uncertainty\nepochs: 2\nbackbone: {TINY}\nimage_size: {TINY_IMAGE}\n"
        "min_steps: 0\nbatch_size: 8\n",
        encoding="utf-8",
    )
    args = ["fit-multitask", csv_path, "--images", images, "--config", good, "--out", tmp_path / "run"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    card = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert card["multitask_config"]["weighting"] == "uncertainty"
