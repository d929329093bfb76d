"""What output ``i`` of a head means is stored with the weights (a digest of the ordered class
list, in model.safetensors' metadata and an export's): a class list reordered or edited in
config.json, split.json or an ONNX file's metadata is refused (one line, exit 2), where it
used to be scored 0.75 by ``evaluate`` while ``predict`` called a 0 a 9."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import QUICK, TINY, TINY_IMAGE, make_dataset
from tests.test_trust import copy_run
from transferkit import api
from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.modalities.common import class_digest
from transferkit.model import CLASSES_KEY, load_model
from transferkit.ownership import signed

FIT = {"backbone": TINY, "image_size": TINY_IMAGE, "batch_size": 8, "epochs": 1, "seed": 0, "augment": False, **QUICK}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("order")
    data = make_dataset(root / "data", per_class=6)
    api.fit(data, out=root / "run", strategy="feature-extraction", **FIT)
    return root / "run", data


def edit_json(path: Path, key: str, change: object) -> None:
    record = json.loads(path.read_text())
    record[key] = change(record[key])  # type: ignore[operator]
    path.write_text(json.dumps(record))


def cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["transferkit", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return int(info.value.code or 0), capsys.readouterr().err


def test_the_weights_carry_the_digest_of_their_class_order(run_dir: tuple[Path, Path]) -> None:
    run = run_dir[0]
    with safe_open(str(run / "model.safetensors"), framework="pt") as handle:
        saved = handle.metadata()[CLASSES_KEY]
    assert saved == class_digest(json.loads((run / "config.json").read_text())["classes"])
    assert class_digest(["a", "b"]) != class_digest(["b", "a"])


@pytest.mark.parametrize(
    "change",
    [lambda c: c[::-1], lambda c: c[1:] + c[:1], lambda c: ["cat", *c[1:]]],
    ids=["reversed", "rotated", "renamed"],
)
def test_a_reordered_class_list_in_config_json_is_refused_at_every_door(
    run_dir: tuple[Path, Path], tmp_path: Path, change: object,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    run, data = copy_run(run_dir[0], tmp_path / "edited"), run_dir[1]
    edit_json(run / "config.json", "classes", change)
    with pytest.raises(TransferkitError, match="another order"):
        load_model(run)
    with pytest.raises(TransferkitError, match="another order"):
        api.evaluate(run)  # the saved split: was scored 0.75
    image = next(data.glob("*/*.png"))
    for args in (["evaluate", str(run)], ["evaluate", str(run), str(data)], ["predict", str(run), str(image)]):
        code, err = cli(args, monkeypatch, capsys)
        assert code == 2 and "another order" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_a_split_json_whose_classes_differ_from_the_model_is_refused(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run = copy_run(run_dir[0], tmp_path / "split")
    edit_json(run / "split.json", "classes", lambda c: c[::-1])
    with pytest.raises(TransferkitError, match="not written by transferkit on this machine"):
        api.evaluate(run)  # an edited split is not this machine's any more
    record = json.loads((run / "split.json").read_text())
    (run / "split.json").write_text(json.dumps(signed(record)))  # as if this machine had written it so
    with pytest.raises(TransferkitError, match=r"split\.json lists other classes"):
        api.evaluate(run)
    assert api.evaluate(run, run_dir[1])["num_items"] > 0  # data given: the split is not read


def test_weights_without_the_digest_are_refused(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    """Dropping the digest is as easy as reordering the list: no "older file" fallback."""
    run = copy_run(run_dir[0], tmp_path / "old")
    weights = run / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt", "transferkit_format": "1"})
    with pytest.raises(TransferkitError, match="no record of its class order"):
        load_model(run)


def _onnx_file(path: Path, meta: dict[str, object]) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"transferkit": json.dumps(meta)})
    onnx.save(model, str(path))
    return path


def test_an_exports_class_list_is_checked_against_its_digest(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from transferkit.deploy.onnx_model import OnnxModel

    config = json.loads((run_dir[0] / "config.json").read_text())
    classes = config["classes"]
    meta = {"classes": classes, "preprocessing": config["preprocessing"], "input_names": ["x"]}
    with pytest.raises(TransferkitError, match="no record"):  # no digest: no "older file" fallback
        OnnxModel(_onnx_file(tmp_path / "old.onnx", meta))
    meta["classes_digest"] = class_digest(classes)
    assert OnnxModel(_onnx_file(tmp_path / "ok.onnx", meta)).classes == classes
    meta["classes"] = classes[::-1]
    with pytest.raises(TransferkitError, match="another order"):
        OnnxModel(_onnx_file(tmp_path / "edited.onnx", meta))


def test_a_multitask_runs_task_classes_are_checked_too(tmp_path: Path) -> None:
    from tests.test_multitask import BASE, _csv
    from transferkit.workflows.multitask import MultiTaskConfig, fit_multitask, load_multitask, load_multitask_csv

    csv_path, images = _csv(tmp_path)
    cfg = MultiTaskConfig(tasks=("kind", "first"), base=BASE)
    fit_multitask(load_multitask_csv(csv_path, images, cfg), cfg, out=tmp_path / "run")
    assert load_multitask(tmp_path / "run").tasks["kind"]
    edit_json(tmp_path / "run" / "config.json", "tasks", lambda t: {**t, "kind": t["kind"][::-1]})
    with pytest.raises(TransferkitError, match="another order"):
        load_multitask(tmp_path / "run")
