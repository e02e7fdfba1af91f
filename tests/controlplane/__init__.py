"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, started the way envtest does.

Used by the pytest fixtures in ``tests/conftest.py``, by ``scripts/demo`` and by the benchmarks.
The binaries come from ``scripts/build-controlplane`` (or ``KUBEBUILDER_ASSETS``). Identities are
static bearer tokens: an admin in ``system:masters``, one per ServiceAccount of ``knative/``
(``system:serviceaccount:quay-system:<name>``) and the tenants of ``TENANTS``, so RBAC binds them
exactly as in a cluster. The API server keeps an audit log of every request those
ServiceAccounts make, and of every SubjectAccessReview (``audit_events()``);
``tests/rbac_audit.py`` derives the RBAC check from it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

ROOT = Path(__file__).resolve().parents[2]
KNATIVE = ROOT / "knative" / "base"
SA_NAMESPACE = "quay-system"
# The ServiceAccounts of knative/base/rbac.yaml that tests impersonate with a token of their own.
SERVICE_ACCOUNTS = ("dockertoken-reconciler", "dockertoken-source", "dockertoken-resync")
# Tenant identities for the tenant-isolation tests (issue 11): identity -> (user name, groups).
# No group beyond system:authenticated, so each holds only the RBAC a test binds to it.
# "gitops" is a ServiceAccount of another namespace, as a GitOps tool's would be.
# "reconciler-without-secrets" runs a function whose RBAC a test cuts short (issue 20).
TENANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tenant-a": ("tenant-a", ()),
    "reconciler-without-secrets": ("reconciler-without-secrets", ()),
    "gitops": (
        "system:serviceaccount:gitops:deployer",
        ("system:serviceaccounts", "system:serviceaccounts:gitops"),
    ),
}
# Objects from knative/ that every test needs: the CRD, the namespace, the RBAC and the
# admission policy that keeps DockerTokens to credentials their requester may use.
BOOTSTRAP_FILES = ("namespace.yaml", "crd-dockertoken.yaml", "rbac.yaml", "admission.yaml")
# Audit: what the ServiceAccounts do (Metadata: verb, resource, namespace, decision, user agent),
# and SubjectAccessReviews with their answer (Knative's ApiServerSource controller checks the
# adapter's rights that way before it starts the adapter). Nothing else is logged.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "RequestResponse", "verbs": ["create"],
         "resources": [{"group": "authorization.k8s.io", "resources": ["subjectaccessreviews"]}]},
        {"level": "Metadata", "users": [f"system:serviceaccount:{SA_NAMESPACE}:{sa}" for sa in SERVICE_ACCOUNTS]},
        {"level": "None"},
    ],
}


class ControlPlaneError(RuntimeError):
    """Start-up failed; the message carries the tail of both processes' logs."""


def find_assets() -> Path:
    """Folder holding kube-apiserver and etcd: KUBEBUILDER_ASSETS, else the build script's cache."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-controlplane")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_certs(cert_dir: Path) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for 127.0.0.1/localhost, as envtest generates them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quay-dockertoken test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = cert_dir / "ca.crt", cert_dir / "apiserver.crt", cert_dir / "apiserver.key"
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (cert_dir / "sa.key").write_bytes(
        sa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (cert_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return ca_path, cert_path, key_path


@dataclass
class ControlPlane:
    """etcd and kube-apiserver as child processes; ``start()``/``stop()`` or a ``with`` block."""

    assets: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qdt-cp-")))
    url: str = ""
    ca_file: Path = Path()
    kubeconfigs: dict[str, Path] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    startup_seconds: float = 0.0
    audit_log: Path = Path()
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        self.ca_file, cert, key = _write_certs(certs)
        self.tokens = {"admin": secrets.token_hex(16)}
        lines = [f'{self.tokens["admin"]},admin,admin,"system:masters"']
        for sa in SERVICE_ACCOUNTS:
            self.tokens[sa] = secrets.token_hex(16)
            user = f"system:serviceaccount:{SA_NAMESPACE}:{sa}"
            groups = f"system:serviceaccounts,system:serviceaccounts:{SA_NAMESPACE}"
            lines.append(f'{self.tokens[sa]},{user},{sa},"{groups}"')
        for identity, (user, tenant_groups) in TENANTS.items():
            self.tokens[identity] = secrets.token_hex(16)
            line = f"{self.tokens[identity]},{user},{identity}"
            lines.append(f'{line},"{",".join(tenant_groups)}"' if tenant_groups else line)
        token_file = certs / "tokens.csv"
        token_file.write_text("\n".join(lines) + "\n")
        audit_policy = certs / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log = self.workdir / "audit.log"

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", etcd_url,
                "--advertise-client-urls", etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"qdt=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # tests need speed, not durability
                "--log-level", "error",
                "--name", "qdt",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                "--etcd-servers", etcd_url,
                "--cert-dir", str(certs),
                "--tls-cert-file", str(cert),
                "--tls-private-key-file", str(key),
                "--client-ca-file", str(self.ca_file),
                "--secure-port", str(api_port),
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--service-cluster-ip-range", "10.0.0.0/24",
                "--authorization-mode", "RBAC",
                "--token-auth-file", str(token_file),
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(certs / "sa.pub"),
                "--service-account-signing-key-file", str(certs / "sa.key"),
                "--disable-admission-plugins", "ServiceAccount",
                "--allow-privileged=true",
                "--audit-policy-file", str(audit_policy),
                "--audit-log-path", str(self.audit_log),
                "--audit-log-format", "json",
                "--audit-log-mode", "blocking",  # an event is on disk before its answer is sent
                "--v=1",
            ],
        )
        self.url = f"https://127.0.0.1:{api_port}"
        try:
            self._wait_ready(timeout=90)
            for name, token in self.tokens.items():
                self.kubeconfigs[name] = self._write_kubeconfig(name, token)
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        if os.environ.get("QDT_KEEP_CONTROLPLANE") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}.log (tail) ---\n{_tail(self.workdir / f'{n}.log')}" for n in ("etcd", "kube-apiserver")
        )

    def _wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    name = Path(str(cast(list[str], proc.args)[0])).name
                    raise ControlPlaneError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            req = urllib.request.Request(
                f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.tokens['admin']}"}
            )
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:  # not up yet: keep polling until the deadline
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout} s ({last})\n{self.logs()}")

    def _write_kubeconfig(self, user: str, token: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}],
            "current-context": user,
        }
        path = self.workdir / f"kubeconfig-{user}"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def request_totals(self) -> list[tuple[dict[str, str], int]]:
        """``apiserver_request_total`` from the API server's own /metrics: (labels, count) rows."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", verify=str(self.ca_file), timeout=30,
                         headers={"Authorization": f"Bearer {self.tokens['admin']}"}).text
        return [(dict(re.findall(r'(\w+)="([^"]*)"', line)), int(float(line.rsplit(" ", 1)[1])))
                for line in text.splitlines() if line.startswith("apiserver_request_total{")]

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit event so far (one per request and stage; see AUDIT_POLICY for which)."""
        if not self.audit_log.is_file():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def api_client(self, identity: str = "admin") -> Any:
        """A kubernetes ApiClient for one of the identities (admin, a ServiceAccount or a tenant)."""
        from kubernetes import config

        loader: Any = config  # untyped
        return loader.new_client_from_config(config_file=str(self.kubeconfigs[identity]))

    def apply_file(self, path: Path) -> None:
        """Create every object of a YAML file as admin (what ``kubectl create -f`` does)."""
        from kubernetes import utils

        api = self.api_client()
        creator: Any = utils  # untyped
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                creator.create_from_dict(api, doc)

    def _bootstrap(self) -> None:
        for name in BOOTSTRAP_FILES:
            self.apply_file(KNATIVE / name)
        self._wait_crd_established()

    def _wait_crd_established(self, timeout: float = 30) -> None:
        from kubernetes import client

        ext = client.ApiextensionsV1Api(self.api_client())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crd = ext.read_custom_resource_definition("dockertokens.quay.herve4m.github.io")
            conds = {c.type: c.status for c in ((crd.status and crd.status.conditions) or [])}
            if conds.get("Established") == "True":
                return
            time.sleep(0.1)
        raise ControlPlaneError("DockerToken CRD not Established")
