#!/usr/bin/env bash
# Compile egresstrator into a single self-contained executable.
#
#   bash scripts/compile.sh [output-path]        (default: dist/egresstrator)
#
# Environment:
#   TARGET      optional `deno compile --target` triple (e.g. x86_64-unknown-linux-gnu)
#   DENORT_BIN  optional path to a denort base binary; deno compile reads this variable itself.
#               Without it deno downloads denort from dl.deno.land, which may not be reachable.
set -euo pipefail

log() { printf 'compile: %s\n' "$*" >&2; }

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"

# Resolve the output path relative to the caller's directory before changing directory.
out="${1:-$repo_root/dist/egresstrator}"
[[ "$out" == /* ]] || out="$PWD/$out"

cd "$repo_root"
DENO="$(bash scripts/ensure_deno.sh)"

if [[ -n "${DENORT_BIN:-}" ]]; then
  [[ -f "$DENORT_BIN" ]] || {
    log "DENORT_BIN=$DENORT_BIN does not exist"
    exit 1
  }
  # The full deno CLI is accepted by deno compile as a base binary, but the result just starts the
  # deno CLI/REPL instead of egresstrator. Catch that mistake (only checkable for the host target).
  if [[ -z "${TARGET:-}" ]] && [[ "$(timeout 5 "$DENORT_BIN" --version 2>/dev/null || true)" == "deno "* ]]; then
    log "DENORT_BIN=$DENORT_BIN is the deno CLI, not denort (the denort-<target>.zip release asset)"
    exit 1
  fi
  export DENORT_BIN
fi

# Least-privilege runtime permissions baked into the binary.
args=(
  compile
  --include templates
  --allow-net
  --allow-read
  --allow-write=/run,/var/run,/tmp
  --allow-env
  --allow-run
  --allow-sys=hostname,osRelease
  --output "$out"
)
if [[ -n "${TARGET:-}" ]]; then
  args+=(--target "$TARGET")
fi
args+=(main.ts)

mkdir -p "$(dirname -- "$out")"
errlog="$(mktemp)"
# deno compile leaves "<out>.tmp-<hash>" behind when it fails.
trap 'rm -f "$errlog" "$out".tmp-*' EXIT

if "$DENO" "${args[@]}" 2>"$errlog"; then
  cat "$errlog" >&2
  log "wrote $out"
  exit 0
else
  rc=$?
fi

if [[ -z "${DENORT_BIN:-}" ]] && grep -qiE 'denort|dl\.deno\.land|base binary' "$errlog"; then
  log "deno compile needs its denort base binary, which could not be downloaded here; set DENORT_BIN=/path/to/denort"
  exit 3
fi
cat "$errlog" >&2
exit "$rc"
