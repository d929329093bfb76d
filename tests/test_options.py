"""Every command's options come from the configs that own them; every bound refuses what it should.

The option lists are read from the parser the user gets (click's, built by Typer), so a
command that declared an option by hand, or forgot one, fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from tests.test_cli import run_cli
from transferkit.auto.config import AutoConfig
from transferkit.cli import app
from transferkit.cli.federated import CLIENT_FIT, FIT_SKIPS
from transferkit.cli.options import generated_fields, option_name
from transferkit.cli.train import COMPARE_OWNS, MULTITASK_SKIPS
from transferkit.config import FitConfig
from transferkit.errors import ConfigError
from transferkit.params import params_of
from transferkit.workflows.compare_config import CompareConfig
from transferkit.workflows.federated.config import FederatedConfig
from transferkit.workflows.multitask_config import MultiTaskConfig
from transferkit.workflows.rank_config import RankConfig

OTHER_THAN_CLIENT_FIT = tuple(f.name for f, _ in params_of(FitConfig) if f.name not in CLIENT_FIT)
OTHER_THAN_PARTITION = tuple(f.name for f, _ in params_of(FederatedConfig) if f.name not in ("partition", "alpha"))

# Options no config holds: where output goes, how it is printed, what the command itself does.
PRINTS = {"--json", "--quiet"}
COMMANDS: dict[str, tuple[list[tuple[Any, tuple[str, ...]]], set[str]]] = {
    "fit": ([(FitConfig, ())], {"--out", "--config", "--lr", "--resume", "--nproc", *PRINTS}),
    "compare": ([(FitConfig, COMPARE_OWNS), (CompareConfig, ())], {"--out", "--config", "--lr", "--best-out", *PRINTS}),
    "lr-find": ([(FitConfig, ())], {"--config", "--plot", "--steps", *PRINTS}),
    "rank": ([(RankConfig, ())], {"--out", "--config", *PRINTS}),
    "auto": ([(AutoConfig, ())], {"--out", "--config", *PRINTS}),
    # federated: --partition takes several schemes (one simulation each), as --lr takes auto
    "federated": (
        [(FitConfig, FIT_SKIPS), (FederatedConfig, ("partition",))],
        {"--out", "--config", "--partition", "--baseline"},
    ),
    "federated-server": (
        [(FitConfig, FIT_SKIPS), (FederatedConfig, ("partition", "alpha"))],
        {"--out", "--config", "--address", "--round-timeout", "--write-app"},
    ),
    "federated-client": (
        [(FitConfig, OTHER_THAN_CLIENT_FIT), (FederatedConfig, OTHER_THAN_PARTITION)],
        {
            "--server",
            "--part",
            "--allow-download",
            "--max-memory",
        },  # the client's own trust and limits, never the server's
    ),
    "fit-multitask": (
        [(FitConfig, MULTITASK_SKIPS), (MultiTaskConfig, ())],
        {"--out", "--config", "--images", "--compare-single", "--seeds", "--resume"},
    ),
}


CONFIGS = (FitConfig, CompareConfig, RankConfig, FederatedConfig, AutoConfig, MultiTaskConfig)


def _options(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {o for p in click_command.params for o in getattr(p, "opts", ()) if o.startswith("--")}


def _expected(configs: list[tuple[Any, tuple[str, ...]]]) -> set[str]:
    out = set()
    for cls, exclude in configs:
        for name in generated_fields(cls, exclude):
            p = dict((f.name, q) for f, q in params_of(cls))[name]
            out.add(p.cli or option_name(name))
    return out


def test_every_command_with_generated_options_takes_a_yaml_config() -> None:
    """The README's promise: options on the command line or in a `--config` YAML file (the
    client's few are its operator's, given where it starts)."""
    assert all("--config" in _options(c) for c in COMMANDS if c != "federated-client")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_comes_from_a_config_or_is_the_commands_own(command: str) -> None:
    configs, own = COMMANDS[command]
    expected = _expected(configs)
    assert _options(command) == expected | own
    by_hand = own - {"--lr", "--partition"}  # config fields a command extends (--lr auto, several partitions)
    assert not by_hand & {option_name(f.name) for cls, _ in configs for f, _ in params_of(cls)}


def test_lr_find_takes_clip_seconds_and_compare_takes_cache_views() -> None:
    # Regression: both were missing when each command declared its own list.
    assert "--clip-seconds" in _options("lr-find")
    assert "--cache-views" in _options("compare")


def test_fit_multitask_leaves_augment_to_the_yaml_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: --augment defaulted to False and overrode `augment: true` from --config.
    seen: dict[str, FitConfig] = {}

    def capture(labels: Any, images: Any, cfg: Any, *args: Any) -> Any:
        seen["base"] = cfg.base
        raise ConfigError("tasks", "captured", "stop here")

    monkeypatch.setattr("transferkit.workflows.multitask.load_multitask_csv", capture)
    (tmp_path / "labels.csv").write_text("image,a\n")
    for augment in ("true", "false"):
        (tmp_path / "run.yaml").write_text(f"augment: {augment}\n")
        args = ["fit-multitask", tmp_path / "labels.csv", "--images", tmp_path, "--tasks", "a"]
        code, _, err = run_cli([*args, "--config", tmp_path / "run.yaml"], capsys, monkeypatch)
        assert code == 2 and "captured" in err
        assert seen["base"].augment is (augment == "true")


def _invalid_cases() -> list[tuple[Any, str, Any]]:
    cases = []
    for cls in CONFIGS:
        for f, p in params_of(cls):
            cases += [(cls, f.name, value) for value in p.invalid()]
    return cases


@pytest.mark.parametrize(("cls", "field", "value"), _invalid_cases())
def test_every_constraint_refuses_its_generated_invalid_values(cls: Any, field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    assert info.value.field == field and "is invalid: " in str(info.value)


def test_the_generated_invalid_values_cover_every_bounded_field() -> None:
    bounded = {f.name for cls in CONFIGS for f, p in params_of(cls) if p.constraints}
    assert bounded == {field for _, field, _ in _invalid_cases()}


def _typed_on_the_command_line() -> list[tuple[Any, str, Any]]:
    switches = {f.name for cls in CONFIGS for f, _ in params_of(cls) if "bool" in str(f.type)}
    return [c for c in _invalid_cases() if c[1] not in switches]  # a switch takes no value


@pytest.mark.parametrize(("cls", "field", "value"), _typed_on_the_command_line())
def test_an_invalid_value_on_the_command_line_is_one_line_and_exit_2(
    cls: Any,
    field: str,
    value: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands = {CompareConfig: "compare", RankConfig: "rank", FederatedConfig: "federated", AutoConfig: "auto"}
    command = [commands.get(cls, "fit")] if cls is not MultiTaskConfig else ["fit-multitask", "--images", tmp_path]
    p = dict((f.name, q) for f, q in params_of(cls))[field]
    code, _out, err = run_cli([*command, tmp_path, p.cli or option_name(field), value], capsys, monkeypatch)
    assert code == 2
    assert err.count("\n") == 1 and field in err, err


def test_modalities_and_strategies_own_their_options_and_the_run_config_composes_them() -> None:
    from dataclasses import fields

    from transferkit.modalities import registered_modalities
    from transferkit.strategies import registered_strategies

    run = {f.name: f for f in fields(FitConfig)}
    owners = {m.options for m in registered_modalities() if m.options} | {
        o for s in registered_strategies() for o in s.options
    }
    owned = set()
    for cls in owners:
        for f, p in params_of(cls):
            assert run[f.name].metadata["param"] is p and run[f.name].default == f.default, f.name
            assert run[f.name].metadata["owner"] == cls.__name__ and str(run[f.name].type) == str(f.type)
            owned.add(f.name)
    # every field FitConfig says another part owns is declared by a registered part
    assert owned == {name for name, f in run.items() if "owner" in f.metadata}
    assert {"image_size", "hflip", "max_length", "clip_seconds", "unfreeze", "head_epochs", "c", "lora_r"} <= owned


def test_one_yaml_file_holds_a_comparisons_own_options_and_its_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def capture(data: Any, cfg: Any, **kwargs: Any) -> Any:
        seen["cfg"] = cfg
        raise ConfigError("seeds", "captured", "stop here")

    monkeypatch.setattr("transferkit.workflows.compare.compare", capture)
    (tmp_path / "c.yaml").write_text("seeds: 3\nbudget-epochs: 2\nstrategies: [full, partial]\nbatch_size: 4\n")
    code, _, err = run_cli(["compare", tmp_path, "--config", tmp_path / "c.yaml", "--seeds", "1"], capsys, monkeypatch)
    assert code == 2 and "captured" in err
    cfg = seen["cfg"]
    assert (cfg.seeds, cfg.budget_epochs, cfg.strategies, cfg.base.batch_size) == (1, 2, ("full", "partial"), 4)


@pytest.mark.parametrize(("command", "yaml_text", "said"), [
    ("auto", "budget: soon\n", "budget"), ("auto", "max-tries: 3\n", "not an auto option"),
    ("rank", "neighbours: 0\n", "neighbours"), ("rank", "epochs: 3\n", "not a rank option"),
])  # fmt: skip
def test_auto_and_rank_read_their_options_from_a_yaml_file(
    command: str, yaml_text: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    (tmp_path / "options.yaml").write_text(yaml_text, encoding="utf-8")
    code, _, err = run_cli([command, str(tmp_path), "--config", str(tmp_path / "options.yaml")], capsys, monkeypatch)
    assert code == 2 and said in err and err.count("\n") == 1
