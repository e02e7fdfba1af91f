"""``python -m tests.quaysim --port N [--tls] [--expiration S] [--server-hostname H] ...``: serve until stopped."""

from __future__ import annotations

import argparse
import signal
import threading

from tests.quaysim.server import ADMIN_TOKEN, PASSWORD, READONLY_TOKEN, USERNAME, QuaySimulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.quaysim", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a throwaway CA")
    parser.add_argument("--expiration", type=float, default=None, metavar="SECONDS",
                        help="APP_SPECIFIC_TOKEN_EXPIRATION (default: tokens never expire)")
    parser.add_argument("--server-hostname", default=None, metavar="HOST[:PORT]",
                        help="SERVER_HOSTNAME the registry announces (default: 127.0.0.1:PORT)")
    parser.add_argument("--fresh-login", type=float, default=600, metavar="SECONDS",
                        help="FRESH_LOGIN_TIMEOUT for cookie sessions (default 600)")
    parser.add_argument("--oauth-cost", type=float, default=0.0, metavar="SECONDS",
                        help="simulated server time per OAuth-authenticated request")
    parser.add_argument("--seed", action="store_true",
                        help="give devtable the 'some app' token of Quay's initdb")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sim = QuaySimulator(tls=args.tls, token_expiration=args.expiration,
                        fresh_login_timeout=args.fresh_login, seed_quay_testdata=args.seed,
                        oauth_request_cost=args.oauth_cost, port=args.port,
                        server_hostname=args.server_hostname).start()
    print(f"base URL:          {sim.base_url}")
    print(f"OAuth user:admin:  {ADMIN_TOKEN}")
    print(f"OAuth user:read:   {READONLY_TOKEN}  (no user:admin)")
    print(f"username/password: {USERNAME} / {PASSWORD}")
    print(f"SERVER_HOSTNAME:   {sim.server_hostname}  (realm {sim.registry_url}/v2/auth)")
    if sim.ca_path:
        print(f"CA certificate:    {sim.ca_path}")
    print("serving until SIGINT/SIGTERM", flush=True)
    try:
        stop.wait()
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
