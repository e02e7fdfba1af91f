# Sourced by scripts/build-image and scripts/test-image: which container engine to use, and how.
#
#   QDT_ENGINE=podman|docker   force one (default: podman when installed, else a running Docker)
#
# Podman is used rootful as installed from Debian, with the runc runtime when it is present
# (crun fails on hosts with a hybrid cgroup layout), cgroupfs and file events (no systemd
# needed). Both engines get explicit ulimits (QDT_ULIMIT_NOFILE, QDT_ULIMIT_NPROC), since some
# hosts refuse the engines' defaults (nofile 1048576).
# shellcheck shell=bash

qdt_engine() {
  local want=${QDT_ENGINE:-}
  if [[ -z "$want" ]]; then
    if command -v podman >/dev/null; then
      want=podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
      want=docker
    else
      echo "no container engine: install podman (Debian: apt-get install podman runc)" \
        "or start a Docker engine" >&2
      return 1
    fi
  fi
  ENGINE=("$want")
  if [[ "$want" == podman ]]; then
    command -v runc >/dev/null && ENGINE+=(--runtime runc)
    ENGINE+=(--cgroup-manager cgroupfs --events-backend file)
  fi
  # 4096 open files are plenty for the function, the resync and pip. The process limit counts
  # every process and thread of the same UID on the host (root's, during the build): 16384.
  # Both lowered to this shell's own hard limit when that is lower, since a host without
  # CAP_SYS_RESOURCE cannot raise one; podman also starts conmon with at most 32768 processes.
  local nofile nproc
  nofile=$(_qdt_limit -n "${QDT_ULIMIT_NOFILE:-4096}")
  nproc=$(_qdt_limit -u "${QDT_ULIMIT_NPROC:-16384}")
  ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
}

# min(wanted, this shell's hard limit) for ulimit option $1
_qdt_limit() {
  local hard
  hard=$(ulimit -H "$1")
  if [[ "$hard" != unlimited && "$hard" -lt "$2" ]]; then echo "$hard"; else echo "$2"; fi
}

# The project version (pyproject.toml), for the default image tag.
qdt_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$1/pyproject.toml" | head -n1
}
