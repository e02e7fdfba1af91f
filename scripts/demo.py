"""The local demo behind ``scripts/demo``: what a user sees, step by step."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests import harness

G, V, P = "quay.herve4m.github.io", "v1alpha1", "dockertokens"
ROOT = Path(__file__).resolve().parents[1]
NS = "quay-demo"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(argv: list[str], kubeconfig: Path) -> None:
    """Print what kubectl would (when kubectl is installed), else the printer columns by hand."""
    if shutil.which("kubectl"):
        print("$ " + " ".join(argv), flush=True)
        subprocess.run([*argv, "--kubeconfig", str(kubeconfig)], check=False)
        return
    api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
    for item in api.list_namespaced_custom_object(G, V, NS, P)["items"]:
        ready = next((c for c in item.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        print(item["metadata"]["name"], item["spec"]["name"], ready.get("status"), ready.get("reason"),
              repr(item.get("status", {}).get("message", "")))


def masked(value: str) -> str:
    return value[:4] + "…" if len(value) > 8 else "…"


@contextlib.contextmanager
def local_world() -> Iterator[tuple[Any, ...]]:
    """Control plane + Quay simulator; yields admin and function kubeconfigs, a Quay URL and creds."""
    from tests.controlplane import ControlPlane, find_assets
    from tests.quaysim import ADMIN_TOKEN, QuaySimulator

    say("Starting a local control plane (etcd + kube-apiserver) and the Quay simulator")
    with ControlPlane(assets=find_assets()) as cp, QuaySimulator() as quay:
        print(f"kube-apiserver {cp.url} ready in {cp.startup_seconds:.1f} s; Quay simulator {quay.base_url}")
        yield (cp.kubeconfigs["admin"], cp.kubeconfigs["dockertoken-reconciler"], quay.base_url,
               {"token": ADMIN_TOKEN}, quay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, help="a real cluster (default: a local control plane)")
    parser.add_argument("--quay-url", help="a real Quay (default: the simulator)")
    parser.add_argument("--quay-token", help="OAuth token with the user:admin scope")
    parser.add_argument("--validate-certs", default="true")
    args = parser.parse_args(argv)
    if bool(args.kubeconfig) != bool(args.quay_url and args.quay_token):
        parser.error("--kubeconfig, --quay-url and --quay-token go together")

    if args.kubeconfig:
        world: Any = contextlib.nullcontext(
            (args.kubeconfig, args.kubeconfig, args.quay_url, {"token": args.quay_token}, None))
    else:
        world = local_world()
    with world as (admin_kc, fn_kc, quay_url, creds, quay):
        api = config.new_client_from_config(str(admin_kc))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        if args.kubeconfig:
            ensure_crd(api)
        say("Starting the function under functions-framework")
        # locally: the old token of a rotation is revoked 3 s after it (default 2 min), and the
        # demo's resyncs come every few seconds (default 10 min)
        demo_env = {} if args.kubeconfig else {"ROTATION_GRACE_SECONDS": "3", "RESYNC_PERIOD": "5s"}
        with harness.FunctionProcess(fn_kc, env=demo_env) as fn:
            print(f"function listening on {fn.url} (GET {fn.url}/healthz -> 200)")
            run(core, custom, fn, admin_kc, quay_url, creds, args.validate_certs, quay)
            print("\nfunction log (one JSON line per event):")
            for line in fn.logs().splitlines():
                if '"outcome"' in line:
                    print("  " + line)
    say("Done")
    return 0


def ensure_crd(api: Any) -> None:
    from kubernetes import utils

    with contextlib.suppress(utils.FailToCreateError):
        utils.create_from_yaml(api, str(ROOT / "knative" / "crd-dockertoken.yaml"))


def run(core: Any, custom: Any, fn: harness.FunctionProcess, kubeconfig: Path, quay_url: str,
        creds: dict[str, str], validate_certs: str, quay: Any) -> None:
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": NS}})
    say(f"Creating the connection Secret quay-credentials in namespace {NS} (the seed's example)")
    with contextlib.suppress(ApiException):
        core.delete_namespaced_secret("quay-credentials", NS)
    core.create_namespaced_secret(NS, {"metadata": {"name": "quay-credentials"}, "stringData": {
        "host": quay_url, "validateCerts": validate_certs, **creds}})
    say("Creating the ServiceAccount builder, which already pulls with another Secret")
    with contextlib.suppress(ApiException):
        core.create_namespaced_service_account(NS, {"metadata": {"name": "builder"},
                                                    "imagePullSecrets": [{"name": "registry-mirror"}]})
    spec: dict[str, Any] = {"connSecretRef": {"name": "quay-credentials"}, "preserveInQuayOnDeletion": False,
                            "name": "mytoken", "retSecretRef": {"name": "dockertoken-sample-ret-secret"},
                            "serviceAccounts": ["builder"]}
    if quay is not None:
        quay.token_expiration = 30  # the simulator's APP_SPECIFIC_TOKEN_EXPIRATION: 30-second tokens
        spec["renewBefore"] = "24s"  # so the token is rotated 6 s after it is made
        say("Applying the DockerToken dockertoken-sample (spec.name: mytoken, serviceAccounts: "
            "[builder], renewBefore: 24s; the simulator issues 30-second tokens)")
    else:
        say("Applying the DockerToken dockertoken-sample (spec.name: mytoken, serviceAccounts: [builder])")
    custom.create_namespaced_custom_object(G, V, NS, P, {
        "apiVersion": f"{G}/{V}", "kind": "DockerToken", "metadata": {"name": "dockertoken-sample"},
        "spec": spec})

    def obj() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(G, V, NS, P, "dockertoken-sample"))

    def send(verb: str) -> None:
        try:
            current = obj()
        except ApiException:
            current = {"apiVersion": f"{G}/{V}", "kind": "DockerToken",
                       "metadata": {"name": "dockertoken-sample", "namespace": NS}}
        started = time.monotonic()
        resp = harness.post(fn.url, harness.apiserver_event(verb, current, mode="ref"))
        print(f"POST dev.knative.apiserver.ref.{verb} -> {resp.status_code} "
              f"{resp.text.strip()!r} in {(time.monotonic() - started) * 1000:.0f} ms")

    say("Posting the add event, as ApiServerSource would (binary mode, Reference)")
    send("add")
    say("kubectl get dockertokens")
    show(["kubectl", "get", "dockertokens.quay.herve4m.github.io", "-n", NS], kubeconfig)
    say("The pull Secret dockertoken-sample-ret-secret, decoded (token code masked)")
    secret = core.read_namespaced_secret("dockertoken-sample-ret-secret", NS)
    print(f"type: {secret.type}")
    for key, value in sorted(secret.data.items()):
        text = base64.b64decode(value).decode()
        if key in ("tokenCode", "auth"):
            text = masked(text)
        elif key == ".dockerconfigjson":
            cfg = json.loads(text)
            for entry in cfg["auths"].values():
                entry["auth"] = masked(entry["auth"])
            text = json.dumps(cfg, ensure_ascii=False)
        print(f"  {key}: {text}")
    account = core.read_namespaced_service_account("builder", NS)
    print(f"ServiceAccount builder imagePullSecrets: {[r.name for r in account.image_pull_secrets or ()]}")
    uuid = obj()["status"]["uuid"]
    say("Posting the update event the function's own status write causes: nothing to do")
    send("update")
    if quay is not None:
        uuid = rotate(core, obj, fn, quay, uuid)
    say("Deleting the DockerToken; the finalizer holds it until the token is revoked")
    custom.delete_namespaced_custom_object(G, V, NS, P, "dockertoken-sample")
    send("update")
    send("delete")
    try:
        obj()
        print("DockerToken still present (see its status)")
    except ApiException:
        print("DockerToken gone")
    try:
        core.read_namespaced_secret("dockertoken-sample-ret-secret", NS)
        print("pull Secret still present")
    except ApiException:
        print("pull Secret gone")
    if quay is not None:
        left = [t for t in quay.tokens("devtable") if t["uuid"] == uuid]
        print(f"Quay token {uuid}: {'still there' if left else 'revoked'}")
    account = core.read_namespaced_service_account("builder", NS)
    print(f"ServiceAccount builder imagePullSecrets: {[r.name for r in account.image_pull_secrets or ()]}")


def rotate(core: Any, obj: Any, fn: harness.FunctionProcess, quay: Any, uuid: str) -> str:
    """Wait for status.renewalTime, then resync: a new token, the old one revoked after the grace."""
    status = obj()["status"]
    say(f"Waiting for status.renewalTime {status['renewalTime']} (the token expires "
        f"{status['expiration']}), then resyncing as the CronJob would")
    due = time.mktime(time.strptime(status["renewalTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    time.sleep(max(0.0, due - time.time()) + 0.5)
    resp = harness.post(fn.url, harness.resync_event(NS, "dockertoken-sample"))
    new = obj()["status"]
    print(f"resync -> {resp.status_code}; token {uuid} rotated to {new['uuid']}; "
          f"pendingRevocation {new.get('pendingRevocation')} until {new.get('revokeAfter')}")
    time.sleep(3.5)
    harness.post(fn.url, harness.resync_event(NS, "dockertoken-sample"))
    left = {t["uuid"] for t in quay.tokens("devtable")}
    print(f"after the grace, a resync: old token {'still there' if uuid in left else 'revoked'}, "
          f"new token {'live' if new['uuid'] in left else 'missing'}")
    return str(new["uuid"])


if __name__ == "__main__":
    sys.exit(main())
