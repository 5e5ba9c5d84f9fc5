"""Optional TLS: both files or neither, checked before starting; a real HTTPS server on loopback."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from aipaas.exceptions import ConfigurationError
from aipaas.ops import up
from aipaas.settings import Settings
from tests.conftest import settings_env
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _tls(settings: Settings, cert: Path | None, key: Path | None) -> Settings:
    serving = settings.serving.model_copy(update={"tls_certfile": cert, "tls_keyfile": key})
    return settings.model_copy(update={"serving": serving})


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, and a certificate it issued for 127.0.0.1 with its key, as PEM files."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return files


def test_no_tls_settings_means_plain_http(settings):
    assert up.serving_tls(settings) is None
    svc = up.serving_service(settings, ["aipaas", "serve"])
    assert svc.health_url == f"http://127.0.0.1:{settings.serving.port}/healthz"
    assert svc.ca_file is None and "AIPAAS_SERVING__TLS_CERTFILE" not in svc.env


@pytest.mark.parametrize("which", ["cert", "key"])
def test_one_file_without_the_other_is_refused(settings, pki, which):
    given = (
        {"cert": pki["cert"], "key": None} if which == "cert" else {"cert": None, "key": pki["key"]}
    )
    with pytest.raises(ConfigurationError, match="set both .* or neither"):
        up.serving_tls(_tls(settings, given["cert"], given["key"]))


def test_missing_unmatched_or_encrypted_files_are_refused(settings, pki, tmp_path):
    with pytest.raises(ConfigurationError, match="tls_keyfile: no such file"):
        up.serving_tls(_tls(settings, pki["cert"], tmp_path / "nope.pem"))
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ConfigurationError, match="do not load"):
        up.serving_tls(_tls(settings, pki["cert"], other_key))
    with pytest.raises(ConfigurationError, match="do not load"):
        up.serving_tls(_tls(settings, pki["key"], pki["key"]))  # a key is not a certificate
    key = serialization.load_pem_private_key(pki["key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigurationError, match="encrypted"):  # never a password prompt
        up.serving_tls(_tls(settings, pki["cert"], encrypted))


def test_up_starts_the_serving_child_with_tls_and_probes_https(settings, pki):
    s = _tls(settings, pki["cert"], pki["key"])
    svc = up.serving_service(s, ["aipaas", "serve"])
    port = s.serving.port
    assert (svc.url, svc.health_url) == (
        f"https://127.0.0.1:{port}/docs",
        f"https://127.0.0.1:{port}/healthz",
    )
    assert svc.env == {
        "AIPAAS_SERVING__TLS_CERTFILE": str(pki["cert"].resolve()),
        "AIPAAS_SERVING__TLS_KEYFILE": str(pki["key"].resolve()),
    }
    assert svc.ca_file == pki["cert"].resolve()


def _env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    env.update(settings_env(settings), AIPAAS_SERVING__PORT=str(port), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _serve(settings: Settings, port: int, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from aipaas.cli import main; main()", "serve"],
        cwd=ROOT,
        env=_env(settings, port, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_serve_refuses_half_a_tls_configuration_without_a_traceback(settings, pki):
    proc = _serve(settings, free_port(), AIPAAS_SERVING__TLS_CERTFILE=str(pki["cert"]))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    text = out.decode()
    assert "serving.tls_certfile is set but serving.tls_keyfile is not" in text
    assert "Traceback" not in text


@pytest.mark.slow
@pytest.mark.e2e
def test_serve_answers_https_verified_by_the_ca_and_refuses_plain_http(settings, pki):
    port = free_port()
    proc = _serve(
        settings,
        port,
        AIPAAS_SERVING__TLS_CERTFILE=str(pki["cert"]),
        AIPAAS_SERVING__TLS_KEYFILE=str(pki["key"]),
    )
    url = f"https://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + 90
        # what `aipaas up` waits on: https, verified against the served certificate
        while not up.http_ok(url, ca_file=pki["cert"]):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server never answered over https"
            time.sleep(0.3)
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        r = httpx.get(url, verify=trusted, timeout=5)
        assert (r.status_code, r.json()) == (200, {"alive": True})
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, verify=ssl.create_default_context(), timeout=5)  # system CAs only
        assert not up.http_ok(url)  # nor does the probe trust it without the file
        with pytest.raises(httpx.TransportError):  # plain http on the TLS port: no answer
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
