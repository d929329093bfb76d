"""docs/federated.md's step-by-step deployment with TLS, as typed there: a SuperLink with a
certificate from a test CA, two SuperNodes that trust the CA, and `flwr run` of the app that
`federated-server --write-app` wrote, over https on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_federated import _free_port, _kill, _start
from tests.test_federated import fed as fed  # a fixture

BIN = Path(sys.executable).parent


def _certificates(folder: Path) -> None:
    """ca.crt, and server.pem / server.key for 127.0.0.1 signed by it (what openssl would make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey, ca: bool) -> bytes:
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if not ca:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transferkit test CA")])
    (folder / "ca.crt").write_bytes(cert("transferkit test CA", ca_key, ca_name, ca_key, ca=True))
    (folder / "server.pem").write_bytes(cert("127.0.0.1", key, ca_name, ca_key, ca=False))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    (folder / "server.key").write_bytes(pem)


@pytest.mark.slow  # three Flower processes and a run, ~40 s
def test_the_documented_tls_deployment_runs(
    fed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, weights = fed
    _certificates(tmp_path)
    port = _free_port()
    # as in an activated venv: the SuperLink starts Flower's other commands by name
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    env = dict(os.environ)
    link = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port), "--ssl-ca-certfile",
            str(tmp_path / "ca.crt"), "--ssl-certfile", str(tmp_path / "server.pem"), "--ssl-keyfile",
            str(tmp_path / "server.key")]  # fmt: skip
    processes = [_start(link, tmp_path / "superlink.log")]
    try:
        for i in (0, 1):
            node = tmp_path / f"node{i}.toml"
            node.write_text(f'data = "{data}"\npart = "{i}/2"\ninit-weights = "{weights}"\n', encoding="utf-8")
            args = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                    str(tmp_path / "ca.crt"), "--node-config", str(node), "--port", str(_free_port())]  # fmt: skip
            processes.append(_start(args, tmp_path / f"node{i}.log"))
        yaml = tmp_path / "fit.yaml"
        yaml.write_text(f"init_weights: {weights}\n", encoding="utf-8")
        write = [sys.executable, "-m", "transferkit", "federated-server", str(data), "--clients", "2", "--rounds",
                 "2", "--backbone", "test_efficientnet", "--image-size", "32", "--config", str(yaml), "--out",
                 str(tmp_path / "out"), "--write-app", str(tmp_path / "app")]  # fmt: skip
        assert subprocess.run(write, env=env, capture_output=True, text=True, timeout=120).returncode == 0
        config = Path(env["FLWR_HOME"]) / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        with config.open("a", encoding="utf-8") as handle:
            handle.write(
                f'[superlink.sites]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{tmp_path / "ca.crt"}"\n'
            )
        time.sleep(3)  # the SuperLink's https listener
        run = [str(BIN / "flwr"), "run", str(tmp_path / "app"), "sites", "--stream"]
        done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "round   2/2" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    finally:
        for process in processes:
            _kill(process)
    assert "https://127.0.0.1" in (tmp_path / "superlink.log").read_text()
    assert (tmp_path / "out" / "model.safetensors").is_file()
