"""Writing and removing the return Secret. ``reconcile.py`` calls these; the content and the
ownership rules are in ``secret.py`` (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from function import secret as secrets
from function.errors import ConfigError
from function.model import Ref
from function.steps import PassBase


class SecretSteps(PassBase):
    """Create, repair, move and delete the return Secret; never touch one that is not ours."""

    def write_secret(self, where: Ref, current: Mapping[str, Any] | None,
                     token: secrets.TokenData) -> None:
        """Make the Secret at ``where`` hold ``token``; no write when it already does."""
        assert self.conn is not None
        desired = secrets.build(self.dt, where, token, self.conn.registry)
        if current is None:
            self._create_secret(where, desired)
            self.act("create-secret")
        elif not secrets.is_intact(current, desired):
            meta = current["metadata"]
            if current.get("type") != desired["type"]:  # type is immutable: recreate
                self.kube.delete_secret(where.namespace, where.name, uid=meta.get("uid"))
                self._create_secret(where, desired)
            else:  # keep labels and annotations others added
                body = dict(desired)
                body["metadata"] = {
                    **desired["metadata"],
                    "resourceVersion": meta.get("resourceVersion"),
                    "labels": {**(meta.get("labels") or {}), **desired["metadata"]["labels"]},
                    "annotations": {**(meta.get("annotations") or {}),
                                    **desired["metadata"]["annotations"]},
                }
                self.kube.replace_secret(body)
            self.act("update-secret")
        self.status["retSecret"] = {"namespace": where.namespace, "name": where.name}

    def drop_old_secret(self) -> None:
        """retSecretRef moved or went away: delete the Secret we wrote before, if still ours."""
        old = self.dt.status.ret_secret
        if old is not None and old != self.dt.ret_secret:
            self.delete_secret(old)
            if self.dt.ret_secret is None:
                self.status["retSecret"] = None

    def delete_secret(self, where: Ref) -> None:
        found = self.kube.get_secret(where.namespace, where.name)
        if found is not None and secrets.is_ours(found, self.dt):
            self.kube.delete_secret(where.namespace, where.name, uid=found["metadata"].get("uid"))
            self.act("delete-secret")

    def _create_secret(self, where: Ref, desired: dict[str, Any]) -> None:
        if not self.kube.create_secret(desired):
            # the token is already recorded in status: the resync writes the Secret once it can
            raise ConfigError(
                f"retSecretRef.namespace: namespace {where.namespace!r} does not exist; create it "
                "(the next resync then writes the Secret) or name an existing namespace")
