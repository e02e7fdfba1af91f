"""``python -m function.audit`` (also ``kubectl dockertoken audit``): every Quay token next to the
DockerTokens that track it, and the orphans nobody tracks.

One paged list of the cluster's DockerTokens, and one Quay token list per connection (Secrets
that hold the same Quay host and credentials share one list). Read-only, unless
``--revoke-orphans --older-than AGE --yes``: then it revokes only the orphans (fleet.py says what
an orphan is), after listing the DockerTokens once more so that a token claimed meanwhile is
spared. It runs with the caller's kubeconfig: reading the connection Secrets needs ``get`` on them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from function import fleet, pullsecret
from function.connection import Connection, parse_connection
from function.errors import PermanentError, QuayError, ReconcileError
from function.kube import Kube
from function.model import LABEL, SUBDOMAIN, Ref, Token
from function.renewal import rfc3339

if TYPE_CHECKING:
    from function.quay import QuayClient

QuayFactory = Callable[[Connection], "QuayClient"]
DEFAULT_UNUSED = "30d"


@dataclass
class Group:
    """One Quay account (one token list) and the connection Secrets that reach it."""

    secrets: list[str]
    host: str = ""
    conn: Connection | None = None
    error: str = ""
    rows: list[fleet.Row] = field(default_factory=list)
    missing: list[fleet.Missing] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"secrets": self.secrets, "host": self.host, "error": self.error,
                "tokens": [r.as_json() for r in self.rows],
                "missing": [{"owner": m.owner, "uuid": m.uuid} for m in self.missing],
                "revoked": self.revoked}


@dataclass
class Report:
    generated: str
    groups: list[Group]
    quay_lists: int = 0

    def totals(self) -> dict[str, int]:
        rows = [r for g in self.groups for r in g.rows]
        out = {state: sum(r.state == state for r in rows)
               for state in (fleet.TRACKED, fleet.PENDING, fleet.ADOPTABLE, fleet.ORPHAN)}
        out["expired"] = sum(r.expired for r in rows)
        out["unused"] = sum(r.unused_days is not None for r in rows)
        out["missing"] = sum(len(g.missing) for g in self.groups)
        out["errors"] = sum(bool(g.error) for g in self.groups)
        return out

    def as_json(self) -> dict[str, Any]:
        return {"generated": self.generated, "quayLists": self.quay_lists, "totals": self.totals(),
                "connections": [g.as_json() for g in self.groups]}


def default_quay(conn: Connection) -> QuayClient:
    from function.quay import QuayClient

    return QuayClient(conn)


def audit(kube: Kube, *, now: datetime.datetime, unused_after: datetime.timedelta,
          connection: Ref | None = None, quay_factory: QuayFactory = default_quay) -> Report:
    """List, classify, report; no write anywhere."""
    claims = fleet.claims(kube.iter_dockertokens(), now)
    refs = [connection] if connection else sorted(set(c.conn for c in claims if c.conn.name),
                                                  key=str)
    groups: dict[str, Group] = {}
    report = Report(rfc3339(now), [])
    for ref in refs:
        conn, error = _connection(kube, ref)
        if conn is None:
            users = sum(c.conn == ref for c in claims)
            report.groups.append(Group([str(ref)], error=f"{error} (used by {users} DockerToken(s))"))
            continue
        group = groups.get(conn.fingerprint)
        if group is None:
            group = groups[conn.fingerprint] = Group([], host=conn.base_url, conn=conn)
            report.groups.append(group)
        group.secrets.append(str(ref))
    for group in groups.values():
        assert group.conn is not None
        try:
            with quay_factory(group.conn) as quay:
                report.quay_lists += 1
                tokens = quay.list_tokens()
        # one unreachable Quay does not hide the others
        except QuayError as exc:
            group.error = str(exc)
            continue
        group.rows = fleet.classify(tokens, claims, now=now, unused_after=unused_after)
        mine = [c for c in claims if str(c.conn) in group.secrets]
        group.missing = fleet.missing(tokens, mine)
    return report


def revoke_orphans(kube: Kube, report: Report, *, older_than: datetime.timedelta,
                   now: datetime.datetime, quay_factory: QuayFactory = default_quay,
                   out: TextIO = sys.stdout) -> int:
    """Revoke the orphans older than ``older_than``; returns how many were revoked.

    The DockerTokens are listed again first: a token one of them recorded or may adopt since
    the audit's list is no longer an orphan, and is kept.
    """
    fresh = fleet.claims(kube.iter_dockertokens(), now)
    count = 0
    for group in report.groups:
        plan = fleet.revocable(group.rows, older_than=older_than, now=now)
        if not plan or group.conn is None:
            continue
        still = {r.uuid for r in fleet.revocable(
            fleet.classify([_token(r) for r in plan], fresh, now=now, unused_after=older_than),
            older_than=older_than, now=now)}
        with quay_factory(group.conn) as quay:
            for row in plan:
                if row.uuid not in still:
                    print(f"kept {row.uuid}: a DockerToken claims it now", file=out)
                    continue
                try:
                    quay.revoke_token(row.uuid)
                except QuayError as exc:
                    print(f"could not revoke {row.uuid} ({row.title!r}): {exc}", file=out)
                    continue
                group.revoked.append(row.uuid)
                count += 1
                print(f"revoked {row.uuid} ({row.title!r}, created {row.created})", file=out)
    return count


def _token(row: fleet.Row) -> Token:
    return Token(row.uuid, row.title, row.created, row.expiration, row.last_accessed)


def _connection(kube: Kube, ref: Ref) -> tuple[Connection | None, str]:
    try:
        secret = kube.get_secret(ref.namespace, ref.name)
        if secret is None:
            return None, f"connection Secret {ref}: not found"
        return parse_connection(pullsecret.decoded(secret), secret_name=str(ref)), ""
    except ReconcileError as exc:
        return None, str(exc)


# -- output ---------------------------------------------------------------------------------------
def render(report: Report, *, older_than: datetime.timedelta | None = None,
           now: datetime.datetime | None = None) -> str:
    """The table a person reads (one block per Quay account), and the totals."""
    lines = []
    for group in report.groups:
        lines.append(f"Connection {', '.join(group.secrets)}" + (f" ({group.host})" if group.host else ""))
        if group.error:
            lines += [f"  error: {group.error}", ""]
            continue
        table = [("STATE", "UUID", "TITLE", "CREATED", "LAST USED", "EXPIRES", "OWNER / NOTE")]
        for r in group.rows:
            notes = [r.owner] if r.owner else []
            notes += ["expired"] if r.expired else []
            notes += [f"unused {r.unused_days}d"] if r.unused_days is not None else []
            table.append((r.state, r.uuid, _cut(r.title, 24), r.created[:10] or "-",
                          r.last_accessed[:10] or "never", r.expiration[:10] or "never",
                          ", ".join(notes)))
        lines += _columns(table) if group.rows else ["  (no tokens)"]
        lines += [f"  missing from Quay: {m.owner} records {m.uuid}; the next resync replaces it"
                  for m in group.missing]
        lines.append("")
    totals = report.totals()
    lines.append(", ".join(f"{n} {k}" for k, n in totals.items()) +
                 f"; {report.quay_lists} Quay list call(s)")
    if older_than is not None and now is not None:
        plan = [(g, r) for g in report.groups
                for r in fleet.revocable(g.rows, older_than=older_than, now=now)]
        lines.append(f"Revoking {len(plan)} orphan(s) created more than {_age(older_than)} ago:")
        lines += [f"  {r.uuid}  {r.title!r}  created {r.created}  ({', '.join(g.secrets)})" for g, r in plan]
    return "\n".join(lines)


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(value: datetime.timedelta) -> str:
    days, rest = divmod(int(value.total_seconds()), 86400)
    return f"{days}d" if days and not rest else f"{int(value.total_seconds() // 60)}m"


# -- the command ----------------------------------------------------------------------------------
def parser(prog: str = "python -m function.audit") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "List every Quay token of every connection Secret the DockerTokens use: tracked (by which "
        "DockerToken), pending revocation, adoptable, or orphan; expired and unused ones; and "
        "DockerTokens whose token is gone from Quay. Read-only unless --revoke-orphans --yes."))
    p.add_argument("--kubeconfig", help="kubeconfig to use (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument("--connection", metavar="NAMESPACE/NAME",
                   help="audit only this connection Secret (even one no DockerToken uses)")
    p.add_argument("--unused-days", metavar="AGE", default=DEFAULT_UNUSED,
                   help="report tokens not used for longer than this (default 30d; 12h, 90m ...)")
    p.add_argument("--json", action="store_true", help="one JSON document, for machines")
    p.add_argument("--revoke-orphans", action="store_true",
                   help="revoke orphans created more than --older-than ago (prints the plan; needs --yes)")
    p.add_argument("--older-than", metavar="AGE", help="with --revoke-orphans: 30d, 12h, 90m ...")
    p.add_argument("--yes", action="store_true", help="with --revoke-orphans: do it")
    return p


def main(argv: Sequence[str] | None = None, *, kube: Kube | None = None,
         quay_factory: QuayFactory = default_quay, out: TextIO = sys.stdout,
         now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
         prog: str = "python -m function.audit") -> int:
    """Exit status: 0 done, 1 a connection could not be audited, 2 bad usage or no API access."""
    p = parser(prog)
    args = p.parse_args(argv)
    try:
        unused = fleet.parse_age(args.unused_days, "--unused-days")
        older = fleet.parse_age(args.older_than) if args.older_than else None
        connection = _ref(args.connection) if args.connection else None
    except PermanentError as exc:
        p.error(str(exc))
    if args.revoke_orphans and older is None:
        p.error("--revoke-orphans needs --older-than AGE (such as 30d): only orphans older than that "
                "are revoked")
    if (args.yes or older is not None) and not args.revoke_orphans:
        p.error("--older-than and --yes go with --revoke-orphans")
    at = now()
    try:
        kube = kube or (Kube.from_kubeconfig(args.kubeconfig) if args.kubeconfig else Kube())
        report = audit(kube, now=at, unused_after=unused, connection=connection,
                       quay_factory=quay_factory)
        if older is not None:
            fleet.revocable([], older_than=older, now=at)  # refuses an age below the lease TTL
    except PermanentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ReconcileError as exc:
        print(f"error: {exc}; try again", file=sys.stderr)
        return 2
    if args.json:
        doc = report.as_json()
        if older is not None:
            doc["revocable"] = [r.uuid for g in report.groups
                                for r in fleet.revocable(g.rows, older_than=older, now=at)]
            if args.yes:
                revoke_orphans(kube, report, older_than=older, now=at, quay_factory=quay_factory,
                               out=sys.stderr)
                doc["connections"] = [g.as_json() for g in report.groups]
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        print(render(report, older_than=older, now=at), file=out)
        if args.revoke_orphans and not args.yes:
            print("Nothing revoked: run again with --yes to revoke them.", file=out)
        elif args.revoke_orphans:
            assert older is not None
            count = revoke_orphans(kube, report, older_than=older, now=at,
                                   quay_factory=quay_factory, out=out)
            print(f"{count} orphan(s) revoked.", file=out)
    return 1 if any(g.error for g in report.groups) else 0


def _ref(text: str) -> Ref:
    namespace, _, name = text.partition("/")
    if not (LABEL.fullmatch(namespace) and SUBDOMAIN.fullmatch(name)):
        raise PermanentError(f"--connection: {text!r} is not NAMESPACE/NAME of a Secret")
    return Ref(namespace, name)


if __name__ == "__main__":
    sys.exit(main())
