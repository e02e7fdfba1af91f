# Sourced by scripts/setup and scripts/check-locks: which Python makes the virtualenvs.
#
#   PYTHON=/path/to/python3.x   use that interpreter (default: python3 on PATH)
#
# qdt_python sets PYTHON to the interpreter's full path and PYTHON_VERSION to its version, or
# stops with a message naming the interpreter, its version and the fix when it is older than 3.11
# (pyproject.toml's requires-python) or cannot make a virtualenv. The locks are resolved for 3.11.
# shellcheck shell=bash

qdt_python() {
  local want=${PYTHON:-python3} path
  if ! path=$(command -v "$want"); then
    echo "no Python interpreter '$want' on PATH: install Python 3.11 or newer" \
      "(Debian 12: apt-get install python3 python3-venv) or name one with PYTHON=/path/to/python3.11" >&2
    return 1
  fi
  # Written for any Python 3 (and parsed by Python 2), so an old one gets this message, not a SyntaxError.
  if ! PYTHON_VERSION=$("$path" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))' 2>&1); then
    echo "$path does not run as a Python interpreter: $PYTHON_VERSION" >&2
    return 1
  fi
  if ! "$path" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
    echo "$path is Python $PYTHON_VERSION; quay-dockertoken needs Python 3.11 or newer (tested: 3.11)." \
      "Install one (Debian 12: apt-get install python3 python3-venv) and run again, naming it if it is" \
      "not python3: PYTHON=/usr/bin/python3.11 $0" >&2
    return 1
  fi
  if ! "$path" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "$path (Python $PYTHON_VERSION) cannot make virtualenvs: its venv or ensurepip module is missing" \
      "(Debian: apt-get install python3-venv)" >&2
    return 1
  fi
  PYTHON=$path
}
