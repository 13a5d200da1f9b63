"""The pod-deletion cost duty against a stand-in Kubernetes API server: a real HTTPS server on
127.0.0.1 whose certificate a test CA signed, as a cluster's service account sees it."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from claude_hooks.service.pod_cost import ANNOTATION, Cluster, PodCost, in_cluster
from claude_hooks.store.nodes import NodeLoad
from tests.support import wait_until

POD = "claude-hooks-5d9c7-a1b2c"
NAMESPACE = "agents"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Patch:
    path: str
    headers: dict[str, str]
    body: dict[str, object]


@dataclass
class FakeApiServer:
    """Answers PATCH on pods as the API server does, or with `refuse`'s status."""

    folder: Path
    patches: list[Patch] = field(default_factory=list)
    refuse: int | None = None
    ca_file: Path = field(init=False)
    url: str = field(init=False)

    def __post_init__(self) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("cluster-ca", ca_key, "cluster-ca", ca_key, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        server = _certificate("kubernetes", key, "cluster-ca", ca_key, ca=False)
        self.ca_file = self.folder / "ca.crt"
        self.ca_file.write_bytes(_pem(ca))
        (self.folder / "server.crt").write_bytes(_pem(server))
        (self.folder / "server.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.patches.append(Patch(self.path, dict(self.headers.items()), body))
                if fake.refuse is not None:
                    status = {"kind": "Status", "message": f'pods "{POD}" is forbidden'}
                    self._answer(fake.refuse, status)
                    return
                self._answer(200, {"kind": "Pod", "metadata": body["metadata"]})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.folder / "server.crt", self.folder / "server.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApiServer]:
    server = FakeApiServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def cluster(tmp_path: Path, api: FakeApiServer) -> Cluster:
    token = tmp_path / "token"
    token.write_text("token-1\n")
    return Cluster(api.url, token, api.ca_file, NAMESPACE)


class Work:
    """The node's load, as the store would answer it."""

    def __init__(self) -> None:
        self.now = NodeLoad(running=0, queued=0)
        self.fault: Exception | None = None

    async def __call__(self) -> NodeLoad:
        if self.fault is not None:
            raise self.fault
        return self.now


def test_the_duty_runs_only_in_a_pod(tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster(environ, account) is None  # no token mounted
    account.mkdir()
    (account / "token").write_text("t")
    (account / "ca.crt").write_text("ca")
    (account / "namespace").write_text(f"{NAMESPACE}\n")
    assert in_cluster({}, account) is None  # not in a pod's environment
    assert in_cluster(environ, account) == Cluster(
        "https://10.96.0.1:443", account / "token", account / "ca.crt", NAMESPACE
    )
    ipv6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    found = in_cluster(ipv6, account)
    assert found is not None and found.api_url == "https://[fd00::1]:443"


async def test_the_pod_is_annotated_with_its_work_when_it_changes(
    api: FakeApiServer, cluster: Cluster
) -> None:
    work = Work()
    duty = PodCost(cluster, POD, work, interval=0.01)
    try:
        duty.start()
        await wait_until(lambda: len(api.patches) == 1)
        work.now = NodeLoad(running=1, queued=2)
        await wait_until(lambda: len(api.patches) == 2)
        await wait_until(lambda: duty.written == 3)
        cluster.token_file.write_text("token-2\n")  # the kubelet rotated it
        work.now = NodeLoad(running=0, queued=0)
        await wait_until(lambda: duty.written == 0)
    finally:
        await duty.stop()
    assert len(api.patches) == 3  # only when the cost changed
    first, second, third = api.patches
    assert first.path == f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}"
    assert first.headers["Content-Type"] == "application/merge-patch+json"
    assert first.headers["Authorization"] == "Bearer token-1"
    assert [p.body for p in api.patches] == [
        {"metadata": {"annotations": {ANNOTATION: cost}}} for cost in ("0", "3", "0")
    ]
    assert third.headers["Authorization"] == "Bearer token-2"
    assert second.headers["Authorization"] == "Bearer token-1"


async def test_a_refusal_is_said_once_with_what_to_do_and_tried_again(
    api: FakeApiServer, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    api.refuse = 403
    duty = PodCost(cluster, POD, Work(), interval=0.01)
    try:
        with caplog.at_level(logging.WARNING, logger="claude_hooks.service.pod_cost"):
            await duty.run_once()
            await duty.run_once()
        assert duty.written is None and len(api.patches) == 2
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "answered 403" in warnings[0] and "is forbidden" in warnings[0]
        assert "deploy/kubernetes/rbac.yaml" in warnings[0]
        api.refuse = None
        await duty.run_once()
        assert duty.written == 0
    finally:
        await duty.stop()


async def test_a_server_the_accounts_ca_did_not_sign_gets_nothing(
    api: FakeApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "other").mkdir()
    other = FakeApiServer(tmp_path / "other")  # its own CA
    try:
        token = tmp_path / "token"
        token.write_text("secret")
        duty = PodCost(Cluster(other.url, token, api.ca_file, NAMESPACE), POD, Work())
        with caplog.at_level(logging.WARNING, logger="claude_hooks.service.pod_cost"):
            await duty.run_once()
        await duty.stop()
    finally:
        other.close()
    assert other.patches == [] and duty.written is None
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_the_database_away_leaves_the_cost_as_it_was(
    api: FakeApiServer, cluster: Cluster
) -> None:
    work = Work()
    work.fault = sa.exc.OperationalError("SELECT", {}, OSError("connection refused"))
    duty = PodCost(cluster, POD, work)
    try:
        await duty.run_once()  # quietly: readiness says the database is away
        assert api.patches == [] and duty.written is None
        work.fault = None
        await duty.run_once()
        assert duty.written == 0
    finally:
        await duty.stop()
