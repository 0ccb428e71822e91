#!/usr/bin/env bash
# Compile egresstrator into one self-contained executable and lay out a release directory.
#
#   bash scripts/compile.sh [--out-dir DIR]          (or: deno task compile; default DIR: dist)
#
# Writes, in DIR:
#   egresstrator-<os>-<arch>   the binary (linux-x64 or linux-arm64), templates embedded
#   egresstrator               symlink to the host's binary (only when compiling for this host)
#   egresstrator.service, egresstrator.env, install.sh   what install.sh installs next to the binary
#   sha256sums                 `sha256sum -c` format, over every file above except the symlink
#   latest.txt                 the version, for install.sh's default (`--version` not given)
# Running it once per TARGET into the same DIR accumulates binaries; sha256sums always lists all of them.
#
# Environment:
#   TARGET      optional `deno compile --target` triple: x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu
#   DENORT_BIN  optional path to a denort base binary (read by deno compile itself). Without it deno
#               downloads denort-<target>.zip from dl.deno.land; when that fails this script prints one
#               line saying so and exits 3.
#
# Exit codes: 0 built, 1 build failed, 2 usage, 3 no denort base binary available.
set -euo pipefail

log() { printf 'compile: %s\n' "$*" >&2; }
usage_error() {
  log "$*"
  exit 2
}

# Runtime permissions baked into the binary. `deno task start` (deno.json) must use the same list;
# tests/integration/install_test.ts checks that they match, and tests/integration/systemd_test.ts runs the
# packaged unit with exactly these flags.
#   --allow-all  and nothing narrower. Since Deno 1.43 anything under /proc, /sys and /dev (but /dev/null and
#                the like) needs --allow-all, whatever --allow-read says, and egresstrator reads /proc where
#                safety depends on it: /proc/sys/net/ipv6 (whether to write the IPv6 table; without it every
#                container's IPv6 went unfiltered), /proc/<pid>/ns/net against /proc/1/ns/net (never write the
#                host's tables), /proc/<pid>/status (which capabilities a container really holds). A narrower
#                list made each of those checks fail quietly, and the status socket could not be created
#                (Deno.umask needs --allow-sys). It contained nothing either: --allow-run must be unscoped
#                (nsenter, and the host's runc wherever it is), and nsenter runs any program as root.
#                What confines the daemon is the systemd unit (packaging/egresstrator.service: read-only
#                file system but /run/egresstrator, a capability bounding set, namespaces, address families).
permissions=(
  --allow-all
)

out_dir=""
while (($#)); do
  case "$1" in
    --out-dir)
      (($# >= 2)) || usage_error "--out-dir needs a directory"
      out_dir="$2"
      shift 2
      ;;
    --out-dir=*)
      out_dir="${1#--out-dir=}"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *) usage_error "unknown argument: $1 (usage: bash scripts/compile.sh [--out-dir DIR])" ;;
  esac
done

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
# Resolve the output directory relative to the caller's directory before changing directory.
out_dir="${out_dir:-$repo_root/dist}"
[[ "$out_dir" == /* ]] || out_dir="$PWD/$out_dir"

cd "$repo_root"

# <os>-<arch> of a target triple; egresstrator is Linux-only (network namespaces, iptables, nsenter).
platform_of() {
  case "$1" in
    x86_64-unknown-linux-gnu) echo linux-x64 ;;
    aarch64-unknown-linux-gnu) echo linux-arm64 ;;
    *) return 1 ;;
  esac
}
host_target() {
  [[ "$(uname -s)" == Linux ]] || return 1
  case "$(uname -m)" in
    x86_64 | amd64) echo x86_64-unknown-linux-gnu ;;
    aarch64 | arm64) echo aarch64-unknown-linux-gnu ;;
    *) return 1 ;;
  esac
}

host="$(host_target || true)"
target="${TARGET:-$host}"
[[ -n "$target" ]] || usage_error "cannot build for this host ($(uname -s) $(uname -m)); set TARGET=x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu"
platform="$(platform_of "$target")" ||
  usage_error "TARGET=$target is not supported: egresstrator runs on Linux only (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu)"
native=false
[[ "$target" == "$host" ]] && native=true

version="$(sed -n 's/^export const VERSION = "\([^"]*\)";$/\1/p' src/version.ts)"
[[ -n "$version" ]] || {
  log "cannot read VERSION from src/version.ts"
  exit 1
}

DENO="$(bash scripts/ensure_deno.sh)"

if [[ -n "${DENORT_BIN:-}" ]]; then
  [[ -f "$DENORT_BIN" && -x "$DENORT_BIN" ]] || {
    log "DENORT_BIN=$DENORT_BIN is not an executable file"
    exit 1
  }
  # The full deno CLI is accepted by deno compile as a base binary, but the result just starts the
  # deno CLI instead of egresstrator. Catch that mistake (only checkable for the host target).
  if $native && [[ "$(timeout 5 "$DENORT_BIN" --version 2>/dev/null || true)" == "deno "* ]]; then
    log "DENORT_BIN=$DENORT_BIN is the deno CLI, not denort (the denort-$target.zip release asset)"
    exit 1
  fi
  export DENORT_BIN
fi

mkdir -p "$out_dir"
out="$out_dir/egresstrator-$platform"
errlog="$(mktemp)"
# deno compile leaves "<out>.tmp-<hash>" behind when it fails.
trap 'rm -f "$errlog" "$out".tmp-* "$out_dir"/.sha256sums.tmp' EXIT

# The DNS listener worker (rules by DNS name) is loaded with new Worker(), which compile must be told about.
args=(compile --frozen --include templates --include packaging/egresstrator-runtime --include src/fqdn/ns_worker.ts
  "${permissions[@]}" --output "$out")
# Only when asked: without --target deno also finds a denort placed next to the deno executable.
[[ -n "${TARGET:-}" ]] && args+=(--target "$TARGET")
args+=(main.ts)
rc=0
"$DENO" "${args[@]}" 2>"$errlog" || rc=$?
if ((rc != 0)); then
  if [[ -z "${DENORT_BIN:-}" ]] && grep -qiE 'denort|dl\.deno\.land|base binary' "$errlog"; then
    log "no denort base binary for $target: deno compile could not download it from dl.deno.land; set DENORT_BIN=/path/to/denort (unzipped denort-$target.zip of deno $("$DENO" --version | sed -n '1s/^deno \([^ ]*\).*/\1/p'))"
    exit 3
  fi
  cat "$errlog" >&2
  exit "$rc"
fi
chmod 755 "$out"

# A binary that does not start as egresstrator is worse than none (e.g. a wrong DENORT_BIN).
if $native; then
  got="$(timeout 20 "$out" --version 2>&1 || true)"
  if [[ "$got" != "$version" ]]; then
    rm -f "$out"
    log "the compiled binary does not work: \`$(basename -- "$out") --version\` printed \"$got\", want \"$version\""
    exit 1
  fi
  ln -sfn "egresstrator-$platform" "$out_dir/egresstrator"
fi

# What install.sh needs next to the binaries, so a release directory is complete on its own.
if [[ "$out_dir" != "$repo_root" ]]; then
  install -m 644 packaging/egresstrator.service packaging/egresstrator.env "$out_dir/"
  install -m 755 install.sh "$out_dir/"
fi
printf '%s\n' "$version" >"$out_dir/latest.txt"

(
  cd "$out_dir"
  files=()
  for f in egresstrator-linux-* egresstrator.service egresstrator.env install.sh; do
    [[ -f "$f" && ! -L "$f" && "$f" != *.tmp-* ]] && files+=("$f")
  done
  sha256sum -- "${files[@]}" >.sha256sums.tmp
  mv -f .sha256sums.tmp sha256sums
)

log "wrote $out ($(du -h "$out" | cut -f1), egresstrator $version, $target) and $out_dir/sha256sums"
