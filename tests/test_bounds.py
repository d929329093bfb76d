"""One declaration of every bound, enforced at every door (#42).

Each option's constraint objects (``transferkit.params``) are the only place a bound is written.
These tests walk every declared option and feed its generated invalid values through each door a
value can come in by — the Python API, a ``--config`` YAML file, a run's ``config.json``, an ONNX
file's metadata and a federated server's message (``tests/test_options.py`` walks the command
line) — so an option added later cannot skip one. The walk also checks that no number is left
unbounded above: a value from a file or another party must never size an allocation by itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from tests.test_cli import run_cli
from transferkit import config
from transferkit.auto.config import AutoConfig
from transferkit.cli import app
from transferkit.config import FitConfig
from transferkit.errors import ConfigError, TransferkitError, shown
from transferkit.modalities.audio import AudioOptions
from transferkit.modalities.image import ImageOptions
from transferkit.modalities.image_window import parse_window
from transferkit.modalities.text import TextOptions
from transferkit.model import check_run_card
from transferkit.params import MAX_ITEMS, MAX_TEXT, Interval, check_stored, params_of
from transferkit.strategies import Depth, HeadPhase, LoraOptions, ProbeOptions
from transferkit.workflows.compare_config import CompareConfig
from transferkit.workflows.federated.config import FederatedConfig
from transferkit.workflows.rank_config import RankConfig

CONFIGS = (FitConfig, CompareConfig, RankConfig, FederatedConfig, AutoConfig)
OWNERS = (ImageOptions, TextOptions, AudioOptions, Depth, HeadPhase, ProbeOptions, LoraOptions)
LONGEST_MESSAGE = 400  # characters: a field, at most ~100 of the value, and the fix


def _declared() -> list[tuple[Any, dataclasses.Field[Any], Any]]:
    return [(cls, f, p) for cls in (*CONFIGS, *OWNERS) for f, p in params_of(cls)]


@pytest.mark.parametrize(("cls", "f", "p"), _declared(), ids=lambda v: getattr(v, "name", getattr(v, "__name__", "")))
def test_every_number_is_bounded_on_both_sides(cls: Any, f: dataclasses.Field[Any], p: Any) -> None:
    kinds = {k.strip() for k in str(f.type).split("|")}
    if not kinds & {"int", "float"} or "bool" in kinds:
        return
    intervals = [c for c in p.constraints if isinstance(c, Interval)]
    assert intervals, f"{cls.__name__}.{f.name} is a number with no Interval: declare its bounds"
    for c in intervals:
        assert math.isfinite(c.low) and math.isfinite(c.high), f"{cls.__name__}.{f.name}: {c.describe()}"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, f"{prefix}{name} ")
        else:
            out.append((prefix + name, command))
    return out


def test_every_hand_written_number_option_has_a_range() -> None:
    """Options no config owns (``--top-k``, ``--steps``, ``--nproc``) carry click's range."""
    declared = {f.name for _, f, _ in _declared()}
    root = typer.main.get_command(app)
    assert isinstance(root, click.Group)
    open_ended = []
    for name, command in _commands(root):
        for param in command.params:
            if param.name in declared or not isinstance(param, click.Option):
                continue
            kind = param.type
            if isinstance(kind, click.IntRange | click.FloatRange):
                if kind.min is None or kind.max is None:
                    open_ended.append(f"{name} {param.opts[0]}")
            elif kind in (click.INT, click.FLOAT):
                open_ended.append(f"{name} {param.opts[0]}")
    assert not open_ended, f"number options without min and max: {open_ended}"


def _invalid(classes: tuple[Any, ...]) -> list[tuple[Any, str, Any]]:
    return [(cls, f.name, v) for cls in classes for f, p in params_of(cls) for v in p.invalid()]


def _short(message: str) -> None:
    assert len(message) <= LONGEST_MESSAGE and "\n" not in message, message


@pytest.mark.parametrize(("cls", "field", "value"), _invalid((FitConfig, CompareConfig, FederatedConfig)))
def test_the_yaml_door_refuses_what_the_command_line_refuses(cls: Any, field: str, value: Any, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({field: list(value) if isinstance(value, tuple) else value}), encoding="utf-8")
    with pytest.raises(TransferkitError) as info:
        if cls is FitConfig:
            config.resolve(path)
        else:
            own, rest = config.split_yaml(path, cls)
            cls(**own, base=config.resolve(None, defaults=rest))
    _short(str(info.value))


RUN_CARD = {
    "format_version": 1, "backbone": "efficientnet_lite0.offline", "classes": ["a", "b"],
    "preprocessing": {}, "head": {"hidden": 0}, "strategy": "two-phase",
}  # fmt: skip


@pytest.mark.parametrize(("cls", "field", "value"), [c for c in _invalid((FitConfig,)) if c[1] != "init_weights"])
def test_a_run_files_fit_config_is_held_to_the_same_declaration(cls: Any, field: str, value: Any) -> None:
    card = {**RUN_CARD, "fit_config": {field: list(value) if isinstance(value, tuple) else value}}
    with pytest.raises(TransferkitError) as info:
        check_run_card(card, "run/config.json")
    assert field in str(info.value)
    _short(str(info.value))


@pytest.mark.parametrize(("field", "value"), [(f, v) for _, f, v in _invalid((FitConfig,)) if f != "init_weights"])
def test_onnx_metadata_and_federated_messages_share_the_check(field: str, value: Any) -> None:
    """``check_stored`` is what ``OnnxModel`` runs on its metadata's options; a federated client
    builds its config with ``config.from_dict``, i.e. ``FitConfig``'s own validator."""
    with pytest.raises(ConfigError):
        check_stored(FitConfig, {field: value}, "fit_config")
    with pytest.raises(TransferkitError):
        config.from_dict({field: value})


def test_a_stored_init_weights_path_is_not_checked_on_this_machine() -> None:
    check_stored(FitConfig, {"init_weights": "/elsewhere/backbone.safetensors"}, "fit_config")


def test_every_stored_option_is_checked_and_an_unknown_one_refused() -> None:
    card = {**RUN_CARD, "fit_config": {"batch_size": 8192, "num_workers": 96, "image_size": 224}}
    check_run_card(card, "run/config.json")  # within the bounds
    for bad in ({"epochs": 0}, {"lr": -1}, {"trust_pickle": "yes"}, {"device": "tpu"}, {"surprise": 1}):
        with pytest.raises(TransferkitError, match="fit_config"):
            check_run_card({**card, "fit_config": bad}, "run/config.json")


@pytest.mark.parametrize("value", ["²", "٣", "1" * 5000, " 12 "])
def test_an_image_side_in_other_digits_is_refused_in_a_line(value: str) -> None:
    if value.strip() == "12":
        with pytest.raises(ConfigError, match="image_size"):  # 12 px: below the bound, as a number
            config.from_dict({"image_size": value})
        return
    with pytest.raises(ConfigError, match="image_size"):
        config.from_dict({"image_size": value})


@pytest.mark.parametrize("value", [10**400, -(10**400), 1e308, float("nan"), True])
def test_a_stored_number_of_any_size_is_refused_not_raised(value: Any) -> None:
    from transferkit.modalities.image_window import Window
    from transferkit.schema import SchemaError

    with pytest.raises(SchemaError):
        Window.from_dict({"center": value, "width": 400, "source": "user"})
    with pytest.raises(SchemaError):
        Window.from_dict({"center": 40, "width": value, "source": "user"})


@pytest.mark.parametrize(
    "value",
    ["x" * (MAX_TEXT + 1), ["a"] * (MAX_ITEMS + 1), 2**70, -1, 10**5000, 1e300, "\ud800" * 10],
    ids=["long-text", "many-items", "2^70", "-1", "googol^50", "1e300", "surrogates"],
)
def test_no_value_is_quoted_whole(value: Any) -> None:
    for field in ("seed", "backbone", "log", "text_column"):
        with pytest.raises(TransferkitError) as info:
            config.from_dict({field: value})
        _short(str(info.value))


def test_a_yaml_alias_bomb_is_refused_in_a_line_without_expanding(tmp_path: Path) -> None:
    """``epochs: [&a [lol×9], &b [*a×9] …]``: nine levels share one list each, tiny in memory,
    billions of items as text. The message must quote a bounded part of it."""
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\nepochs: *a9\n", encoding="utf-8")
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    start = time.perf_counter()
    with pytest.raises(TransferkitError) as info:
        config.from_dict({"epochs": values["epochs"]})
    assert time.perf_counter() - start < 1.0
    _short(str(info.value))
    assert len(shown(values["epochs"])) <= 100


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--seed", "-1"], "seed"),
        (["--seed", "4294967296"], "seed"),
        (["--image-size", "9000"], "image_size"),
        (["--image-size", "20000"], "image_size"),
        (["--hidden", "1000000"], "hidden"),
        (["--num-workers", "100000"], "num_workers"),
        (["--window", "1e300,1e300"], "window"),
        (["--window", "40,1e-9"], "window"),
        (["--window", "-2e9,400"], "window"),
    ],
)
def test_the_issues_cases_on_the_command_line_and_in_yaml(
    args: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _out, err = run_cli(["fit", str(tmp_path), *args], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and field in err, err
    path = tmp_path / "run.yaml"
    value = yaml.safe_load(args[1]) if field != "window" else args[1]
    path.write_text(yaml.safe_dump({field: value}), encoding="utf-8")
    code, _out, err = run_cli(["fit", str(tmp_path), "--config", str(path)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and field in err, err


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70])
def test_seeds_are_bounded_in_every_config(seed: int) -> None:
    for cls in (FitConfig, RankConfig, AutoConfig):
        with pytest.raises(ConfigError, match="seed"):
            cls(seed=seed)


def test_a_window_fit_accepts_is_one_predict_accepts() -> None:
    """``parse_window`` (the option) and ``Window.from_dict`` (a saved run) share the bounds."""
    from transferkit.modalities.image_window import Window

    for text in ("1e300,1e300", "40,1e-9", "-2e9,400", "nan,400", "40,inf"):
        with pytest.raises(ValueError):
            parse_window(text)
    window = parse_window("40,400")
    assert Window.from_dict(window.to_dict()) == window


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000 + ": 1\n",  # not YAML: PyYAML's message quotes the line, over several lines
        "a" * 5_000 + ": 1\n",  # an unknown key of 5,000 characters
        "backbone: " + "b" * 3_000 + "\n",  # an unknown name within the length bound
        "strategy: " + "s" * 100_000 + "\n",
        "log: [" + ", ".join(["tensorboard"] * 300) + "]\n",
    ],
    ids=["not-yaml", "long-key", "long-backbone", "long-strategy", "many-loggers"],
)
def test_a_yaml_mistake_is_one_short_line(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    code, _out, err = run_cli(["fit", str(tmp_path), "--config", str(path)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and len(err) <= LONGEST_MESSAGE + len(str(path)), err[:500]


@pytest.mark.parametrize("command", ["fit", "compare", "lr-find"])
def test_yaml_nested_a_thousand_deep_is_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("epochs: " + "[" * 1000 + "]" * 1000 + "\n", encoding="utf-8")
    code, _out, err = run_cli([command, str(tmp_path), "--config", str(path)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "nested too deeply" in err, err[-300:]


@pytest.mark.parametrize(
    "name", [" ", "a\tb", "a\udcff", "a\u200bb", "a\u202eb"], ids=["blank", "tab", "not-utf8", "zero-width", "rtl"]
)
def test_a_class_name_no_loader_could_read_back_is_refused_when_the_data_is_read(name: str) -> None:
    from transferkit.errors import DataError
    from transferkit.modalities.common import DatasetSplits

    with pytest.raises(DataError, match="rename"):
        DatasetSplits(classes=("ok", name), train=(), val=())
    with pytest.raises(DataError, match="unique"):  # composed and decomposed 'é' print alike
        DatasetSplits(classes=("caf\u00e9", "cafe\u0301"), train=(), val=())
