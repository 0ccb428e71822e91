#!/usr/bin/env bash
# Print the absolute path of a deno 2.9.6 binary on stdout, installing it if needed.
#
# Usage: DENO=$(bash scripts/ensure_deno.sh)
#
# Order of preference:
#   1. `deno` on PATH, if `deno --version` reports the pinned version;
#   2. <repo>/.tools/deno/node_modules/deno/deno (installed from the npm package `deno` if missing).
# All progress/diagnostics go to stderr; only the path goes to stdout.
set -euo pipefail

DENO_VERSION="2.9.6"

log() { printf 'ensure_deno: %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
tools_dir="${EGRESSTRATOR_TOOLS_DIR:-$repo_root/.tools}"
prefix="$tools_dir/deno"
local_deno="$prefix/node_modules/deno/deno"

# is_pinned <binary>: true if the binary runs and reports the pinned version.
is_pinned() {
  local out
  out="$("$1" --version 2>/dev/null | head -n1)" || return 1
  [[ "$out" == "deno $DENO_VERSION "* || "$out" == "deno $DENO_VERSION" ]]
}

# 1. deno on PATH
if path_deno="$(command -v deno 2>/dev/null)" && [[ -n "$path_deno" ]]; then
  if [[ "$path_deno" != /* ]]; then
    path_deno="$(cd -- "$(dirname -- "$path_deno")" && pwd -P)/$(basename -- "$path_deno")"
  fi
  if is_pinned "$path_deno"; then
    printf '%s\n' "$path_deno"
    exit 0
  fi
  log "deno on PATH ($path_deno) is not $DENO_VERSION; using a project-local copy"
fi

# 2. project-local copy (fast path, no lock needed)
if [[ -x "$local_deno" ]] && is_pinned "$local_deno"; then
  printf '%s\n' "$local_deno"
  exit 0
fi

# 3. install it (serialised, so concurrent callers don't race on node_modules)
mkdir -p "$prefix"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$prefix/.install.lock"
  flock 9
fi

# Someone else may have installed it while we waited for the lock.
if [[ -x "$local_deno" ]] && is_pinned "$local_deno"; then
  printf '%s\n' "$local_deno"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "npm not found; installing Debian's npm package (needed to fetch deno from the npm registry)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update >&2 || die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends npm >&2 || die "apt-get install npm failed"
  else
    die "npm is not installed; install Node.js + npm (e.g. 'apt-get install npm' as root), or put deno $DENO_VERSION on PATH"
  fi
fi

log "installing deno@$DENO_VERSION from the npm registry into $prefix"
rm -rf "$prefix/node_modules" "$prefix/package.json" "$prefix/package-lock.json"
# npm's own output goes to stderr so stdout stays a single path.
if ! npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "deno@$DENO_VERSION" >&2; then
  die "npm install deno@$DENO_VERSION failed (is the npm registry reachable?)"
fi

# The binary ships in a platform package (@deno/<os>-<arch>-<libc>); deno's postinstall script
# hard-links it to node_modules/deno/deno. If install scripts were disabled, do that ourselves.
if [[ ! -x "$local_deno" ]]; then
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported architecture $(uname -m) (deno ships x64 and arm64 only)" ;;
  esac
  platform_deno="$prefix/node_modules/@deno/linux-$arch-glibc/deno"
  [[ -f "$platform_deno" ]] || die "npm did not install $platform_deno (optional dependency skipped?)"
  ln -f "$platform_deno" "$local_deno" 2>/dev/null || cp -f "$platform_deno" "$local_deno"
  chmod +x "$local_deno"
fi

is_pinned "$local_deno" || die "$local_deno does not report deno $DENO_VERSION: $("$local_deno" --version 2>&1 | head -n1)"
log "installed $("$local_deno" --version | head -n1) at $local_deno"
printf '%s\n' "$local_deno"
