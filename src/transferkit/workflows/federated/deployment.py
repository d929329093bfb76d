"""Flower's deployment engine behind two commands: `federated-server` and `federated-client`.

Thin front ends over Flower's own processes and the apps of :mod:`.apps`: the server starts a
``flower-superlink`` and submits the run with ``flwr run`` (an app folder whose run config holds
the data folder, output folder and settings); a client starts a ``flower-supernode`` whose node
config names its own images. Everything runs with Flower's private state in a temporary
folder, so nothing is left in the user's home. docs/federated.md shows the same steps with
Flower's commands typed by hand (TLS, several sites).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from transferkit.errors import ConfigError, TransferkitError
from transferkit.ownership import check_output_dir
from transferkit.pipeline import fit_to_data, load_data
from transferkit.workflows.federated.apps import node_client
from transferkit.workflows.federated.config import FederatedConfig, replace_config

APPS = "transferkit.workflows.federated.apps"


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    """A Flower app folder: a pyproject.toml naming the installed apps, with the run's config."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = "\n".join(f"{key} = {_toml(value)}" for key, value in run_config.items())
    (folder / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "transferkit-federated"
version = "1.0.0"
description = "transferkit's federated fine-tuning, as a Flower app"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "transferkit"

[tool.flwr.app.components]
serverapp = "{APPS}:server_app"
clientapp = "{APPS}:client_app"

[tool.flwr.app.config]
{settings}
""",
        encoding="utf-8",
    )
    return folder


def serve(
    data: str | Path,
    cfg: FederatedConfig,
    address: str,
    *,
    out: str | Path,
    console: Console | None = None,
    round_timeout: float | None = None,
) -> dict[str, Any]:
    """A SuperLink on ``address`` and the run submitted to it; returns the saved ``rounds.json``."""
    out = Path(out).absolute()
    host, port = _address(address)
    run_config = _run_config(data, cfg, out, round_timeout)
    with tempfile.TemporaryDirectory(prefix="transferkit-flower-") as tmp:
        home, log = Path(tmp) / "home", Path(tmp) / "superlink.log"
        _connection(home, host, port)
        app = write_app(Path(tmp) / "app", run_config)
        with log.open("w") as handle:
            link = subprocess.Popen(
                [_command("flower-superlink"), "--insecure", "--host", host, "--port", str(port),
                 "--disable-runtime-dependency-installation"],
                stdout=handle, stderr=subprocess.STDOUT, env=_env(home),
            )  # fmt: skip
        try:
            _wait_for_port(host, port, link, log)
            if console:
                go_on = f"; rounds go on with {cfg.needed} if some drop out" if cfg.needed < cfg.clients else ""
                console.print(
                    f"SuperLink on {host}:{port}: waiting for {cfg.clients} client(s){go_on}", highlight=False
                )
            started = time.time()
            code = subprocess.run([_command("flwr"), "run", str(app), "local", "--stream"], env=_env(home)).returncode
        finally:
            _stop(link)
    rounds = out / "rounds.json"
    # `flwr run --stream` exits 0 even when the ServerApp failed: the fresh rounds file says it finished
    if code != 0 or not rounds.is_file() or rounds.stat().st_mtime < started:
        raise TransferkitError("the federation did not finish; see the server's log above")
    return dict(json.loads(rounds.read_text(encoding="utf-8")))


def app_for(
    data: str | Path, cfg: FederatedConfig, folder: str | Path, *, out: str | Path, round_timeout: float | None = None
) -> Path:
    """The app `federated-server` would submit, written to a new ``folder``: for a SuperLink
    started by hand, submit it with ``flwr run FOLDER SUPERLINK --stream``."""
    folder = Path(folder)
    if folder.exists():
        raise ConfigError(
            "write-app", str(folder), "name a folder that does not exist yet (nothing is written into it)"
        )
    return write_app(folder, _run_config(data, cfg, Path(out).absolute(), round_timeout))


def _run_config(data: str | Path, cfg: FederatedConfig, out: Path, round_timeout: float | None) -> dict[str, Any]:
    """What the ServerApp reads, checked here first: bad data or options fail in one line."""
    check_output_dir(out, "run", "--out")  # before any process starts
    splits = load_data(data, cfg.base)
    cfg = replace_config(cfg, base=fit_to_data(cfg.base, splits))
    return {"data": str(Path(data).absolute()), "out": str(out), "federated": json.dumps(cfg.to_dict()),
            "round-timeout": float(round_timeout or 0)}  # fmt: skip


def join(
    data: str | Path,
    superlink: str,
    *,
    part: tuple[int, int] | None = None,
    partition_scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    val_fraction: float = 0.2,
    init_weights: str | None = None,
    allow_download: bool = False,
    max_memory: int | None = None,
) -> int:
    """A SuperNode connected to ``superlink`` that trains on all of ``data`` (or on part ``i`` of
    ``n`` of it, for a demo on one machine) in every run; returns when it is stopped. Unless
    ``allow_download``, a server may name only backbones this machine holds offline."""
    node: dict[str, Any] = {"data": str(Path(data).absolute()), "seed": seed, "val-fraction": val_fraction,
                            "partition": partition_scheme, "alpha": alpha,
                            "allow-download": allow_download}  # fmt: skip
    if part is not None:
        if not 0 <= part[0] < part[1]:
            raise ConfigError("part", f"{part[0]}/{part[1]}", f"the part number must be 0..{part[1] - 1}")
        node["part"] = f"{part[0]}/{part[1]}"
    if init_weights is not None:
        node["init-weights"] = str(Path(init_weights).absolute())
    if max_memory is not None:
        node["max-memory"] = max_memory
    node_client(node)  # the data and part read once here: a mistake is one line now, not one per round
    _address(superlink)
    with tempfile.TemporaryDirectory(prefix="transferkit-flower-") as tmp:
        config = Path(tmp) / "node.toml"
        config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in node.items()), encoding="utf-8")
        args = [_command("flower-supernode"), "--insecure", "--superlink", superlink, "--port", str(_free_port()),
                "--node-config", str(config)]  # fmt: skip
        supernode = subprocess.Popen(args, env=_env(Path(tmp) / "home"))
        try:
            return supernode.wait()
        except KeyboardInterrupt:
            _stop(supernode)
            return 130


# --------------------------------------------------------------------------- Flower's processes


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string: the same escapes


def _connection(home: Path, host: str, port: int) -> None:
    """Flower's CLI finds SuperLinks in $FLWR_HOME/config.toml; ours is the one just started."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{host}:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )


def _env(home: Path) -> dict[str, str]:
    """Flower's state in ``home``; this interpreter's scripts first, for the processes Flower starts."""
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "FLWR_HOME": str(home), "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}


def _command(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    raise TransferkitError(f"Flower's {name} command is missing: pip install 'transferkit[federated]'")


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("address", text, "write it as host:port, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TransferkitError(f"Flower's SuperLink did not start: {log.read_text(encoding='utf-8')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    _stop(process)
    raise TransferkitError(f"Flower's SuperLink did not listen on {host}:{port} within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
