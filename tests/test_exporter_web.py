"""--web.config.file: TLS, client certificates and bcrypt basic auth, with real clients and real certificates."""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import bcrypt
import pytest
from exporter_util import EXPORTER, Exporter, Exposition, Process, free_port, get, need

from shm_metrics.readers.exporter.webconfig import Authenticator, WebConfigError, parse

x509 = pytest.importorskip("cryptography.x509", reason="the cryptography package (test extra) makes the certs")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

PASSWORD = "correct horse"


@pytest.fixture
def scratch():
    """A temporary directory removed after the test (keys and configs do not outlive it)."""
    with tempfile.TemporaryDirectory(prefix="shm-exporter-test-") as d:
        yield Path(d)


def self_signed(directory: Path, stem: str, server: bool = True) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1/localhost (server) or a client; (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"shm-exporter test {stem}")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def tls_dir(scratch) -> Path:
    self_signed(scratch, "server")
    return scratch


def client_context(cafile: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if cert:
        ctx.load_cert_chain(*map(str, cert))
    return ctx


def test_tls_and_basic_auth_with_real_clients(name, start_publisher, tls_dir):
    start_publisher(name, "--interval", "0.5")
    config = tls_dir / "web.yml"
    # Relative paths are relative to the config file, as in exporter-toolkit.
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                      "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                      f"basic_auth_users:\n  prometheus: '{bcrypt_hash(PASSWORD)}'\n")
    exp = Exporter(name, "--web.config.file", str(config))
    try:
        assert exp.scheme == "https"
        ctx = client_context(tls_dir / "server.crt")
        url = f"https://localhost:{exp.port}/metrics"

        status, headers, body = get(url, basic("prometheus", PASSWORD), context=ctx)
        assert status == 200 and Exposition(body).value("shm_metrics_up") == 1
        assert headers["X-Frame-Options"] == "deny"
        for creds in (basic("prometheus", "wrong"), basic("nobody", PASSWORD), {}, {"Authorization": "Basic !!"},
                      {"Authorization": "Bearer x"}):
            status, headers, body = get(url, creds, context=ctx)
            assert status == 401, creds
            assert headers["WWW-Authenticate"].startswith("Basic") and "node_" not in body
        assert get(f"https://localhost:{exp.port}/", basic("prometheus", "wrong"), context=ctx)[0] == 401

        # A client that connects and never says hello does not hold up the others: handshakes run in
        # the connection's own thread, not in the accept loop.
        with socket.create_connection(("127.0.0.1", exp.port), timeout=10):
            assert get(url, basic("prometheus", PASSWORD), context=ctx)[0] == 200

        # Keep-alive over TLS: one handshake, many scrapes.
        conn = http.client.HTTPSConnection("localhost", exp.port, context=ctx, timeout=10)
        try:
            sock = None
            for _ in range(5):
                conn.request("GET", "/metrics", headers=basic("prometheus", PASSWORD))
                resp = conn.getresponse()
                assert resp.status == 200 and b"node_load1 " in resp.read()
                sock = sock or conn.sock
                assert conn.sock is sock, "the TLS connection was not reused"
        finally:
            conn.close()

        # Plain HTTP on the TLS port gets no metrics; a client that does not trust the cert gets no handshake.
        plain = http.client.HTTPConnection("127.0.0.1", exp.port, timeout=10)
        try:
            plain.request("GET", "/metrics")
            assert b"node_load1" not in plain.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            plain.close()
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            get(url, basic("prometheus", PASSWORD), context=ssl.create_default_context())

        # The file is re-read when it changes: a new password works without a restart, the old one stops.
        time.sleep(0.01)
        config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                          f"basic_auth_users:\n  prometheus: '{bcrypt_hash('rotated password')}'\n")
        assert get(url, basic("prometheus", "rotated password"), context=ctx)[0] == 200
        assert get(url, basic("prometheus", PASSWORD), context=ctx)[0] == 401
        # An invalid edit fails closed (no handshake, as exporter-toolkit), and recovers when fixed.
        config.write_text("basic_auth_users: [not, a, mapping]\n")
        with pytest.raises((ssl.SSLError, OSError)):
            get(url, basic("prometheus", "rotated password"), context=ctx)
        config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
        assert get(url, context=ctx)[0] == 200
    finally:
        assert exp.stop() == 0


def test_invalid_edit_without_tls_fails_closed_with_500(name, scratch):
    config = scratch / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash(PASSWORD)}'\n")
    exp = Exporter(name, "--web.config.file", str(config))
    try:
        url = exp.url + "/metrics"
        assert exp.scheme == "http" and get(url, basic("prometheus", PASSWORD))[0] == 200
        config.write_text("basic_auth_users:\n  prometheus: not-a-hash\n")
        assert get(url, basic("prometheus", PASSWORD))[0] == 500
        assert get(url)[0] == 500
        config.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash(PASSWORD)}'\n")
        assert get(url, basic("prometheus", PASSWORD))[0] == 200
        assert get(url)[0] == 401
    finally:
        assert exp.stop() == 0
    assert "refusing requests" in exp.output() and "valid again" in exp.output()


def test_client_certificates_are_verified(name, start_publisher, tls_dir):
    start_publisher(name, "--interval", "0.5")
    client = self_signed(tls_dir, "client", server=False)
    config = tls_dir / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                      "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client.crt\n"
                      "  min_version: TLS13\n")
    exp = Exporter(name, "--web.config.file", str(config))
    try:
        url = f"https://localhost:{exp.port}/metrics"
        status, _, body = get(url, context=client_context(tls_dir / "server.crt", client))
        assert status == 200 and "node_load1 " in body
        with pytest.raises((ssl.SSLError, OSError)):  # no client certificate: refused in the handshake
            get(url, context=client_context(tls_dir / "server.crt"))
        (tls_dir / "other").mkdir()
        stranger = self_signed(tls_dir / "other", "stranger", server=False)
        with pytest.raises((ssl.SSLError, OSError)):
            get(url, context=client_context(tls_dir / "server.crt", stranger))
        old = client_context(tls_dir / "server.crt", client)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, OSError)):
            get(url, context=old)
    finally:
        assert exp.stop() == 0


@pytest.mark.parametrize("text, message", [
    ("tls_server_config:\n  cert_file: server.crt\n", "missing key_file"),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n", "nope.crt"),
    ("basic_auth_users:\n  prometheus: plaintext\n", "not a bcrypt hash"),
    ("basic_auth_user:\n  prometheus: x\n", "unknown field 'basic_auth_user'"),
    ("tls_server_config: [\n", "not valid YAML"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: SSL3\n", "SSL3"),
    ("http_server_config:\n  headers:\n    Server: x\n", "can not be configured"),
])
def test_invalid_web_config_exits_2_with_one_line(tls_dir, text, message):
    config = tls_dir / "web.yml"
    config.write_text(text)
    out = subprocess.run([*EXPORTER, "--web.config.file", str(config), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_web_config_parsing(scratch):
    hashed = bcrypt_hash("pw")
    assert parse("").tls is None and parse("").users == {}
    config = parse(f"basic_auth_users:\n  a: '{hashed}'\n", str(scratch / "w.yml"))
    assert config.tls is None and config.users == {"a": hashed}
    config = parse("tls_server_config:\n  cert_file: c\n  key_file: /abs/k\n", str(scratch / "w.yml"))
    assert config.tls.cert_file == str(scratch / "c") and config.tls.key_file == "/abs/k"
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_2
    for bad in ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",  # CA without auth type
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n",
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_allowed_sans: [x]\n",
                "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
                "[1, 2]\n"):
        with pytest.raises(WebConfigError):
            parse(bad)


def test_authenticator_caches_bcrypt():
    auth = Authenticator({"u": bcrypt_hash("pw")})
    calls = []
    real = auth._bcrypt
    auth._bcrypt = lambda password, hashed: calls.append(password) or real(password, hashed)
    for _ in range(3):
        assert auth.check(basic("u", "pw")["Authorization"])
        assert not auth.check(basic("u", "nope")["Authorization"])
        assert not auth.check(basic("x", "pw")["Authorization"])  # unknown user: checked against a decoy hash
    assert calls == [b"pw", b"nope", b"pw"]  # bcrypt ran once per distinct credential
    assert not auth.check(None) and not auth.check("Basic") and not auth.check("Basic bm9jb2xvbg==")
    assert not auth.check(basic("u", "p" * 100)["Authorization"])  # beyond bcrypt's 72 bytes: no match
    assert Authenticator({}).check(None)  # no users: no auth


def test_one_web_config_serves_node_exporter_and_shm_exporter(name, start_publisher, tls_dir):
    """The same exporter-toolkit file, read by both: same TLS certificate, same users, same 401s."""
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    start_publisher(name, "--interval", "0.5")
    config = tls_dir / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\n"
                      "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
                      f"basic_auth_users:\n  prometheus: '{bcrypt_hash(PASSWORD, rounds=10)}'\n")
    port = free_port()
    node = Process([binary, f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={config}",
                    "--collector.disable-defaults", "--collector.loadavg"])
    ours = Exporter(name, "--web.config.file", str(config))
    try:
        node.wait_for_line("TLS is enabled")
        ctx = client_context(tls_dir / "server.crt")
        for url in (f"https://localhost:{port}/metrics", f"https://localhost:{ours.port}/metrics"):
            status, headers, body = get(url, basic("prometheus", PASSWORD), context=ctx)
            assert status == 200 and "node_load1 " in body, url
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert get(url, basic("prometheus", "wrong"), context=ctx)[0] == 401
            assert get(url, context=ctx)[0] == 401
    finally:
        node.stop()
        assert ours.stop() == 0
