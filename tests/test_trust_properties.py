"""Property suites over what transferkit reads (run folders, checkpoint metadata, ONNX metadata,
server messages: any mutation is either accepted or one TransferkitError, never another
exception), and the "user files untouched" check around every command that writes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import QUICK_FLAGS, ROOT, TINY, TINY_IMAGE, cli_command, cli_env, make_dataset
from tests.test_trust import FIT, copy_run, snapshot
from transferkit import api
from transferkit.errors import TransferkitError
from transferkit.model import load_model
from transferkit.ownership import STAGING

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
HOSTILE_STRINGS = st.sampled_from(["hf:/etc", "/etc", "../..", "hf:..", "~/x", "hf:./a", "", "\x00", "a" * 300])
VALUES = JSON | HOSTILE_STRINGS | st.integers(-(10**9), 10**9)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("props")
    data = make_dataset(root / "data", per_class=6)
    api.fit(data, out=root / "run", strategy="feature-extraction", **FIT)
    return root / "run"


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


CONFIG_FIELDS = [
    ["backbone"], ["classes"], ["strategy"], ["head"], ["head", "hidden"], ["preprocessing"],
    ["preprocessing", "image_size"], ["preprocessing", "mean"], ["preprocessing", "std"],
    ["preprocessing", "kind"], ["preprocessing", "interpolation"], ["preprocessing", "crop_pct"],
    ["format_version"], ["fit_config"],
]  # fmt: skip


@FUZZ
@given(field=st.sampled_from(CONFIG_FIELDS), value=VALUES)
def test_any_edit_of_config_json_loads_or_is_one_clear_error(
    saved_run: Path, tmp_path_factory: pytest.TempPathFactory, field: list[str], value: Any
) -> None:
    run = copy_run(saved_run, tmp_path_factory.mktemp("edit") / "run")
    config = json.loads((run / "config.json").read_text())
    _set(config, field, value)
    (run / "config.json").write_text(json.dumps(config))
    try:
        model = load_model(run)
    except TransferkitError:
        return
    assert model.preprocessing.to_dict().get("image_size", 0) <= 1024  # whatever loads is bounded


@pytest.fixture(scope="module")
def exported(saved_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from transferkit.deploy.export import export_onnx

    target = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(saved_run, target, repeats=1)
    return target


ONNX_FIELDS = [["classes"], ["preprocessing"], ["preprocessing", "image_size"], ["preprocessing", "kind"], ["tasks"]]


@FUZZ
@given(field=st.sampled_from(ONNX_FIELDS), value=VALUES)
def test_any_edit_of_onnx_metadata_loads_or_is_one_clear_error(
    exported: Path, tmp_path_factory: pytest.TempPathFactory, field: list[str], value: Any
) -> None:
    import onnx

    from transferkit.deploy.onnx_model import METADATA_KEY, OnnxModel

    model = onnx.load(str(exported))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    _set(meta, field, value)
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    target = tmp_path_factory.mktemp("edited") / "m.onnx"
    onnx.save(model, str(target))
    try:
        loaded = OnnxModel(target)
    except TransferkitError:
        return
    assert len(loaded.classes) == 3 or loaded.tasks is not None


LOOP_FIELDS = ["phase_index", "epoch_in_phase", "epoch", "best_epoch", "since_best", "history", "phases", "extra"]


@FUZZ
@given(field=st.sampled_from([*LOOP_FIELDS, "rng", "optimizer", "fit_config"]), value=VALUES)
def test_any_edit_of_checkpoint_metadata_loads_or_is_one_clear_error(
    saved_run: Path, tmp_path_factory: pytest.TempPathFactory, field: str, value: Any
) -> None:
    from safetensors.torch import load_file, save_file

    from transferkit.checkpoint import LoopState, load_checkpoint, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    state = {k: v for k, v in load_file(str(saved_run / "model.safetensors")).items()}
    save_checkpoint(path, {"loop": LoopState(), "model": state, "best": {k: v.clone() for k, v in state.items()}})
    tensors = load_file(str(path))
    with open(path, "rb") as f:
        meta = dict(json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"])
    if field in LOOP_FIELDS:
        loop = json.loads(meta["loop"])
        loop[field] = value
        meta["loop"] = json.dumps(loop)
    else:
        meta[field] = json.dumps(value)
    save_file(tensors, str(path), metadata=meta)
    with contextlib.suppress(TransferkitError):
        load_checkpoint(path)


MESSAGE_FIELDS = ["fit_config", "classes", "phase", "round", "proximal_mu", "unknown"]


@FUZZ
@given(field=st.sampled_from(MESSAGE_FIELDS), value=VALUES, as_json=st.booleans())
def test_any_server_message_is_checked_before_use(field: str, value: Any, as_json: bool) -> None:
    from tests.test_trust import _message
    from transferkit.workflows.federated.client import TransferClient, read_fit_message

    message = _message()
    message[field] = json.dumps(value) if as_json else value
    try:
        checked = read_fit_message(message)
        TransferClient([], ["a", "b"])._own_config(checked.fit_config)
    except TransferkitError:
        return


# --------------------------------------------------------------------------- user files untouched


def _user_tree(root: Path) -> None:
    """Files of the user's around (and inside the parent of) every output."""
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "thesis.tex").write_text("years of work")
    (root / "model.onnx.bak").write_bytes(b"an old model of theirs")
    (root / "config.json").write_text('{"theirs": true}')
    (root / "link-to-notes").symlink_to(root / "notes", target_is_directory=True)


COMMANDS = {
    "fit": lambda d, o: ["fit", str(d), "--out", str(o / "run"), "--backbone", TINY, "--image-size", str(TINY_IMAGE),
                         "--batch-size", "8", "--epochs", "3", "--strategy", "two-phase", "--no-augment", *QUICK_FLAGS],
    "demo-data": lambda d, o: ["demo-data", str(o / "demo"), "--per-class", "30"],
    "compare": lambda d, o: ["compare", str(d), "--out", str(o / "cmp"), "--backbone", TINY, "--image-size",
                             str(TINY_IMAGE), "--strategies", "linear-probe,feature-extraction", "--seeds", "1",
                             "--budget-epochs", "1", "--best-out", str(o / "best"), *QUICK_FLAGS],
    "export": lambda d, o: ["export", str(d.parent / "run"), "--out", str(o / "exp" / "model.onnx")],
    "cache clear": lambda d, o: ["cache", "clear"],  # with the cache folder set to the user's folder
}  # fmt: skip
USER_ERRORS = {
    "fit": lambda d, o: ["fit", str(o / "notes"), "--out", str(o), "--backbone", TINY],  # out: the user's folder
    "demo-data": lambda d, o: ["demo-data", str(o)],
    "compare": lambda d, o: ["compare", str(d), "--out", str(o), "--backbone", TINY],
    "export": lambda d, o: ["export", str(d.parent / "run"), "--out", str(o / "notes")],  # a folder
    "cache clear": lambda d, o: ["cache", "clear", "no-such-key"],
}


def _outputs_of(name: str, out: Path) -> set[str]:
    return {"fit": {"run"}, "demo-data": {"demo"}, "compare": {"cmp", "best"}, "export": {"exp"}}.get(name, set())


def _outside(tree: dict[str, bytes], outputs: set[str]) -> dict[str, bytes]:
    """The entries that are neither an output nor an output's staging sibling (``.NAME.tk-incoming-*``,
    which a SIGKILL mid-write may leave; the leftovers check below allows it only then)."""
    tops = {k.split("/")[0] for k in tree}
    staging = {t for t in tops if t.startswith(".") and t[1:].split(STAGING)[0] in outputs}
    return {k: v for k, v in tree.items() if k.split("/")[0] not in outputs | staging}


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("ending", ["success", "user error", "SIGINT", "SIGKILL"])
def test_user_files_around_every_output_stay_byte_for_byte(
    tmp_path: Path, name: str, ending: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "cache clear" and ending.startswith("SIG"):
        pytest.skip("cache clear ends within a second: nothing to interrupt")
    data = make_dataset(tmp_path / "data", per_class=8)
    if name == "export":
        api.fit(data, out=tmp_path / "run", strategy="linear-probe", **FIT)
    out = tmp_path / "work"
    _user_tree(out)
    before = snapshot(out)
    args = (USER_ERRORS if ending == "user error" else COMMANDS)[name](data, out)
    cache = {"TRANSFERKIT_CACHE": str(out)} if name == "cache clear" else {}
    if ending in ("success", "user error"):  # in this process: the same main(), without a second start-up
        from tests.test_cli import run_cli

        for key, value in cache.items():
            monkeypatch.setenv(key, value)
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == (0 if ending == "success" else 2) and "Traceback" not in err, err
    else:
        command, env = cli_command(*args), {**cli_env(), **cache}
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4.0)  # well into the work: imports, the data scan, training or writing
        process.send_signal(signal.SIGINT if ending == "SIGINT" else signal.SIGKILL)
        process.wait(timeout=120)
    assert _outside(snapshot(out), _outputs_of(name, out)) == before
    leftovers = [p for p in out.iterdir() if STAGING in p.name]
    assert not leftovers or ending == "SIGKILL", leftovers  # a SIGKILL can leave only a hidden temporary
