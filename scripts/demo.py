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
        with harness.FunctionProcess(fn_kc) as fn:
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
    say("Applying the DockerToken dockertoken-sample (spec.name: mytoken)")
    custom.create_namespaced_custom_object(G, V, NS, P, {
        "apiVersion": f"{G}/{V}", "kind": "DockerToken", "metadata": {"name": "dockertoken-sample"},
        "spec": {"connSecretRef": {"name": "quay-credentials"}, "preserveInQuayOnDeletion": False,
                 "name": "mytoken", "retSecretRef": {"name": "dockertoken-sample-ret-secret"}}})

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
    uuid = obj()["status"]["uuid"]
    say("Posting the update event the function's own status write causes: nothing to do")
    send("update")
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


if __name__ == "__main__":
    sys.exit(main())
