# Sourced by scripts/build-controlplane: Go binaries built into a version-keyed cache folder that
# only ever holds complete binaries that ran. Call the functions as plain statements (not after
# `||`, `&&` or `if`), so that `set -e` stops the caller at the first failure.
#
#   gocache_init ROOT FOLDER        the cache is ROOT/FOLDER (FOLDER names the versions it holds)
#   gocache_binary NAME MODULE_DIR PACKAGE CHECK_ARGS EXPECTED [LDFLAGS]
#       ROOT/FOLDER/NAME, built when missing with `go build` of PACKAGE in the module MODULE_DIR;
#       before it is used, `NAME CHECK_ARGS` must exit 0 and print EXPECTED; it runs in an empty
#       environment, and leading VAR=value words of CHECK_ARGS (split on spaces) are set in it
#   gocache_verify PATH CHECK_ARGS EXPECTED    the same check on any binary (KUBEBUILDER_ASSETS')
#
# A build goes to a new folder ROOT/.build.XXXXXX, is checked there, then renamed into place
# (rename(2): the cache never holds part of a binary). Builders hold ROOT/.build-lock (flock), so
# concurrent runs wait for each other instead of racing, and the holder removes the .build.*
# folders of runs that were killed. A cached binary that fails its check is an error naming it
# and the fix; it is not used and not silently replaced.
# shellcheck shell=bash

gocache_init() {
  _gocache_root=$1
  _gocache_dir=$1/$2
  _gocache_tmp=
  _gocache_locked=
  mkdir -p "$_gocache_dir"
  trap '[[ -z "${_gocache_tmp:-}" ]] || rm -rf "$_gocache_tmp"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

gocache_verify() { # path check_args expected
  local path=$1 expected=$3 output word status=0
  local -a words vars=() args=()
  read -ra words <<<"$2"
  for word in "${words[@]}"; do
    if [[ ${#args[@]} -eq 0 && "$word" == [A-Za-z_]*=* ]]; then vars+=("$word"); else args+=("$word"); fi
  done
  if [[ ! -f "$path" || ! -x "$path" ]]; then
    echo "$path is missing or not executable" >&2
    return 1
  fi
  output=$(cd / && timeout 60 env -i "${vars[@]}" "$path" "${args[@]}" 2>&1 </dev/null) || status=$?
  if [[ $status -ne 0 ]]; then
    echo "$path does not run: \`$(basename "$path") $2\` exited with status $status${output:+:}" >&2
    [[ -z "$output" ]] || printf '%s\n' "$output" | tail -n 5 >&2
    return 1
  fi
  if [[ "$output" != *"$expected"* ]]; then
    echo "$path is not the expected build: \`$(basename "$path") $2\` does not say '$expected':" >&2
    printf '%s\n' "$output" | tail -n 5 >&2
    return 1
  fi
}

_gocache_lock() {
  [[ -z "$_gocache_locked" ]] || return 0
  exec {_gocache_lockfd}>"$_gocache_root/.build-lock"
  if ! flock --nonblock "$_gocache_lockfd"; then
    echo "waiting for another build into $_gocache_root to finish ($_gocache_root/.build-lock) ..." >&2
    flock "$_gocache_lockfd"
  fi
  _gocache_locked=1
  # Every builder holds the lock, so a build folder seen now belongs to a run that was killed.
  rm -rf "$_gocache_root"/.build.* "$_gocache_dir"/*.tmp
}

gocache_binary() { # name module_dir package check_args expected [ldflags]
  local name=$1 mod=$2 pkg=$3 check=$4 expected=$5 ldflags=${6:-}
  local dest="$_gocache_dir/$name" start=$SECONDS
  if [[ ! -e "$dest" ]]; then _gocache_lock; fi
  if [[ -e "$dest" ]]; then # there already, or built by the run this one waited for
    if ! gocache_verify "$dest" "$check" "$expected"; then
      echo "the cached $name is broken: remove it (rm '$dest') and run $0 again to rebuild it" >&2
      return 1
    fi
    return 0
  fi
  _gocache_tmp=$(mktemp -d "$_gocache_root/.build.XXXXXX")
  echo "building $name ($pkg) into $_gocache_dir ..." >&2
  if ! (cd "$mod" && exec go build -trimpath -ldflags "-s -w $ldflags" -o "$_gocache_tmp/$name" "$pkg"); then
    echo "go build of $name ($pkg, module $mod) failed: go's message is above; the cache is unchanged" >&2
    return 1
  fi
  if ! gocache_verify "$_gocache_tmp/$name" "$check" "$expected"; then
    echo "the $name just built does not work (above); the cache is unchanged" >&2
    return 1
  fi
  mv -T "$_gocache_tmp/$name" "$dest" || return 1
  rm -rf "$_gocache_tmp"
  _gocache_tmp=
  echo "built $name in $((SECONDS - start)) s" >&2
}
