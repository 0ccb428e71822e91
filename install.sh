#!/bin/sh
# Install egresstrator: the release binary for this machine, its systemd unit and its env file.
# Safe to run again: unchanged files are left alone and an existing env file is never overwritten.
# Run `sh install.sh --help` for the options. Exit codes: 0 done, 1 failed, 2 usage.
set -eu

DEFAULT_RELEASE_URL=https://github.com/egresstrator/egresstrator/releases/download
UNIT_NAME=egresstrator.service

usage() {
  cat <<'EOF'
Usage: install.sh [options]

Installs the egresstrator binary, its systemd unit and /etc/default/egresstrator.

Options:
  --version X        release to download (default: the one named in <base>/latest.txt)
  --from FILE        install this local binary instead of downloading (offline); the unit and
                     env file are taken from FILE's directory, else from packaging/ next to install.sh
  --sha256 HEX       expected sha256 of --from FILE (default: its entry in a sha256sums file
                     next to it; without either the file is installed unverified, with a warning)
  --prefix DIR       install the binary as DIR/bin/egresstrator (default: /usr/local)
  --no-systemd       install the binary only: no unit, no env file
  --systemd-dir DIR  where the unit goes (default: /etc/systemd/system)
  --env-file PATH    the service's env file (default: /etc/default/egresstrator); installed only
                     when absent, never overwritten
  --uninstall        stop and remove the binary and the unit; keep the env file
  --purge            --uninstall, and remove the env file too
  --runtime          register the OCI runtime gate in dockerd's daemon.json (alone, or with an install);
                     containers then opt in to it with: docker run --runtime egresstrator ...
  --runtime-default  the same, and make it dockerd's default-runtime (every container goes through it)
  --daemon-json F    dockerd's config file (default: /etc/docker/daemon.json)
  --podman-hook      install the gate as an OCI hook for Podman (alone, or with an install): every
                     container Podman starts goes through `egresstrator hook`; only opted-in ones are touched
  --hooks-dir DIR    where Podman reads hooks (default: /etc/containers/oci/hooks.d)
  --dry-run          download and verify, then print what would change; change nothing
  -h, --help         show this help

Environment:
  EGRESSTRATOR_RELEASE_URL  release base URL (default: https://github.com/egresstrator/egresstrator/releases/download);
                            files are <base>/v<version>/egresstrator-<os>-<arch> and <base>/v<version>/sha256sums
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
  printf 'install.sh: error: %s\n' "$*" >&2
  exit 1
}
usage_die() {
  printf 'install.sh: %s\n' "$*" >&2
  printf "Try 'install.sh --help'.\n" >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------------------
# Arguments
version=""
from=""
sha256=""
prefix=/usr/local
systemd=1
systemd_dir=/etc/systemd/system
env_file=/etc/default/egresstrator
uninstall=0
purge=0
runtime=0
runtime_default=0
daemon_json=/etc/docker/daemon.json
podman_hook=0
hooks_dir=/etc/containers/oci/hooks.d
dry_run=0

while [ $# -gt 0 ]; do
  case $1 in
    --*=*)
      # --opt=value is --opt value.
      opt=${1%%=*}
      val=${1#*=}
      shift
      set -- "$opt" "$val" "$@"
      continue
      ;;
  esac
  case $1 in
    --version | --from | --sha256 | --prefix | --systemd-dir | --env-file | --daemon-json | --hooks-dir)
      if [ $# -lt 2 ] || [ -z "$2" ]; then usage_die "$1 needs a value"; fi
      case $1 in
        --version) version=$2 ;;
        --from) from=$2 ;;
        --sha256) sha256=$2 ;;
        --prefix) prefix=$2 ;;
        --systemd-dir) systemd_dir=$2 ;;
        --env-file) env_file=$2 ;;
        --daemon-json) daemon_json=$2 ;;
        --hooks-dir) hooks_dir=$2 ;;
      esac
      shift 2
      ;;
    --no-systemd) systemd=0 && shift ;;
    --uninstall) uninstall=1 && shift ;;
    --purge) uninstall=1 && purge=1 && shift ;;
    --runtime) runtime=1 && shift ;;
    --runtime-default) runtime=1 && runtime_default=1 && shift ;;
    --podman-hook) podman_hook=1 && shift ;;
    --dry-run) dry_run=1 && shift ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_die "unknown option: $1" ;;
  esac
done


[ -z "$from" ] || [ -z "$version" ] || usage_die "--from and --version exclude each other"
case $sha256 in
  *[!0-9a-fA-F]*) usage_die "--sha256 takes 64 hex digits" ;;
esac
[ -z "$sha256" ] || [ ${#sha256} -eq 64 ] || usage_die "--sha256 takes 64 hex digits"
[ -z "$sha256" ] || [ -n "$from" ] || usage_die "--sha256 goes with --from (downloads are checked against the release's sha256sums)"
if [ "$uninstall" = 1 ] && { [ -n "$from" ] || [ -n "$version" ]; }; then
  usage_die "--uninstall takes no --from or --version"
fi
for p in "$prefix" "$systemd_dir" "$env_file" "$daemon_json" "$hooks_dir"; do
  case $p in
    /*) ;;
    *) usage_die "paths must be absolute: $p" ;;
  esac
  # These paths end up in the unit file, where spaces, % and $ mean something.
  case $p in
    *[!A-Za-z0-9/._+@-]*) usage_die "unsupported characters in path: $p" ;;
  esac
done
prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/
bin_path="${prefix%/}/bin/egresstrator"
unit_path="${systemd_dir%/}/$UNIT_NAME"
hook_path="${hooks_dir%/}/egresstrator.json"

# ---------------------------------------------------------------------------------------------------------
# Helpers
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum <"$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 <"$1" | cut -d' ' -f1
  elif command -v openssl >/dev/null 2>&1; then
    openssl dgst -sha256 -r <"$1" | cut -d' ' -f1
  else
    die "need sha256sum, shasum or openssl to verify checksums"
  fi
}

# sum_for SUMS NAME: NAME's hash in a sha256sum-format file (empty when not listed).
sum_for() {
  awk -v n="$2" '{ f = $2; sub(/^\*/, "", f); if (f == n) { print tolower($1); exit } }' "$1"
}

# verify FILE EXPECTED WHAT: die unless FILE's sha256 is EXPECTED.
verify() {
  want=$(printf '%s' "$2" | tr 'A-F' 'a-f')
  got=$(sha256_of "$1")
  [ "$got" = "$want" ] || die "checksum mismatch for $3: expected sha256 $want, got $got"
}

fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$2" "$1"
  else
    die "need curl or wget to download (or install a local file with --from FILE)"
  fi
}

# The release name of this machine's binary: egresstrator-<os>-<arch>.
platform_name() {
  s=$(uname -s)
  m=$(uname -m)
  case $s in
    Linux) os=linux ;;
    *)
      printf '%s\n' "unsupported OS: $s (egresstrator runs on Linux only: it needs network namespaces, nsenter and iptables)"
      return 1
      ;;
  esac
  case $m in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *)
      printf '%s\n' "unsupported architecture: $m (releases exist for x86_64 and aarch64)"
      return 1
      ;;
  esac
  printf '%s\n' "egresstrator-$os-$arch"
}

# systemctl only for the real unit directories of a running systemd (never for a test's temp dir).
manage_systemd() {
  [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 || return 1
  case ${systemd_dir%/} in
    /etc/systemd/system | /run/systemd/system | /lib/systemd/system | /usr/lib/systemd/system | /usr/local/lib/systemd/system) return 0 ;;
  esac
  return 1
}

# install_file SRC DEST MODE WHAT: copy unless DEST already has SRC's content (returns 1 then).
install_file() {
  if [ -f "$2" ] && [ "$(sha256_of "$1")" = "$(sha256_of "$2")" ]; then
    say "$4 $2: unchanged"
    return 1
  fi
  if [ "$dry_run" = 1 ]; then
    say "would install $4 $2"
    return 0
  fi
  dir=$(dirname "$2")
  mkdir -p "$dir" || die "cannot create $dir"
  part="$dir/.$(basename "$2").install.$$"
  if ! { cp "$1" "$part" && chmod "$3" "$part" && mv -f "$part" "$2"; }; then
    rm -f "$part"
    die "cannot install $2"
  fi
  say "installed $4 $2"
}

remove_file() {
  if [ ! -e "$1" ] && [ ! -L "$1" ]; then
    say "$2 $1: not present"
  elif [ "$dry_run" = 1 ]; then
    say "would remove $2 $1"
  else
    rm -f "$1" || die "cannot remove $1"
    say "removed $2 $1"
  fi
}

# ---------------------------------------------------------------------------------------------------------
# The runtime gate: the binary itself edits daemon.json (a JSON merge that keeps every other setting).
# What dockerd runs is the shim beside the binary (egresstrator-runtime): it passes every call to runc at
# the cost of a shell, and runs the binary only for opted-in containers. The binary prints it.
shim_path="$(dirname -- "$bin_path")/egresstrator-runtime"
install_shim() {
  if [ "$dry_run" = 1 ]; then
    say "would write the runtime shim $shim_path ($bin_path runtime-shim)"
    return 0
  fi
  { "$bin_path" runtime-shim >"$shim_path.tmp" && chmod 755 "$shim_path.tmp" && mv -f "$shim_path.tmp" "$shim_path"; } ||
    { rm -f "$shim_path.tmp"; die "could not write the runtime shim $shim_path"; }
  say "installed runtime shim $shim_path"
}
runtime_config() {
  if [ "${1:-}" != --remove ]; then install_shim; fi
  if [ "$dry_run" = 1 ]; then
    say "would run: $bin_path runtime-config --daemon-json $daemon_json $*"
    return 0
  fi
  "$bin_path" runtime-config --daemon-json "$daemon_json" --binary "$bin_path" "$@" ||
    die "could not update $daemon_json (nothing else was changed)"
}

# The Podman hook: a hooks.d file (OCI hooks schema 1.0.0) that runs `egresstrator hook` at createRuntime,
# when the container's namespaces exist and its process has not started. "always": the opt-in is in the
# container's env, which hooks.d cannot match on; the hook returns at once for everything else.
podman_hook_install() {
  printf '%s\n' \
    '{' \
    '  "version": "1.0.0",' \
    '  "hook": {' \
    "    \"path\": \"$bin_path\"," \
    '    "args": ["egresstrator", "hook"],' \
    "    \"env\": [\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\", \"EGRESSTRATOR_ENV_FILE=$env_file\"]," \
    '    "timeout": 30' \
    '  },' \
    '  "when": { "always": true },' \
    '  "stages": ["createRuntime"]' \
    '}' >"$1/hook.json" || die "cannot write the hook file"
  install_file "$1/hook.json" "$hook_path" 644 "podman hook" || true
}

if { [ "$runtime" = 1 ] || [ "$podman_hook" = 1 ]; } && [ "$uninstall" = 1 ]; then
  usage_die "--runtime/--podman-hook and --uninstall exclude each other"
fi
if [ "$podman_hook" = 1 ] && [ -z "$from" ] && [ -z "$version" ]; then
  # Register only: the binary must be installed already.
  [ -x "$bin_path" ] || die "$bin_path is not installed; install it first (or add --version / --from)"
  hook_tmp=$(mktemp -d "${TMPDIR:-/tmp}/egresstrator-install.XXXXXX") || die "cannot create a temporary directory"
  trap 'rm -rf "$hook_tmp"' EXIT
  podman_hook_install "$hook_tmp"
  if [ "$runtime" = 1 ]; then
    if [ "$runtime_default" = 1 ]; then runtime_config --default; else runtime_config; fi
  fi
  exit 0
fi
if [ "$runtime" = 1 ] && [ -z "$from" ] && [ -z "$version" ]; then
  # Register only: the binary must be installed already.
  [ -x "$bin_path" ] || die "$bin_path is not installed; install it first (or add --version / --from)"
  if [ "$runtime_default" = 1 ]; then runtime_config --default; else runtime_config; fi
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# Uninstall
if [ "$uninstall" = 1 ]; then
  if [ -x "$bin_path" ] && [ -f "$daemon_json" ] && grep -q '"egresstrator"' "$daemon_json"; then
    runtime_config --remove
  fi
  if [ -f "$hook_path" ] && grep -q '"egresstrator", "hook"' "$hook_path"; then remove_file "$hook_path" "podman hook"; fi
  if [ "$systemd" = 1 ] && [ -f "$unit_path" ] && manage_systemd; then
    if [ "$dry_run" = 1 ]; then
      say "would run: systemctl disable --now $UNIT_NAME"
    else
      systemctl disable --now "$UNIT_NAME" || warn "systemctl disable --now $UNIT_NAME failed"
    fi
  fi
  remove_file "$shim_path" "runtime shim"
  remove_file "$bin_path" binary
  if [ "$systemd" = 1 ]; then
    remove_file "$unit_path" unit
    if [ "$purge" = 1 ]; then
      remove_file "$env_file" "env file"
    elif [ -e "$env_file" ]; then
      say "kept env file $env_file (remove it with --purge)"
    fi
    if manage_systemd && [ "$dry_run" = 0 ]; then systemctl daemon-reload || warn "systemctl daemon-reload failed"; fi
  fi
  [ "$dry_run" = 1 ] && say "dry run: nothing was changed"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# Get and verify what to install
tmp=$(mktemp -d "${TMPDIR:-/tmp}/egresstrator-install.XXXXXX") || die "cannot create a temporary directory"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

script_dir=""
case $0 in
  */install.sh | install.sh) script_dir=$(cd "$(dirname "$0")" && pwd) ;;
esac

unit_src=""
env_src=""
if [ -n "$from" ]; then
  [ -f "$from" ] || die "--from $from: no such file"
  from_dir=$(cd "$(dirname "$from")" && pwd)
  from_name=$(basename "$from")
  sums="$from_dir/sha256sums"
  if [ -n "$sha256" ]; then
    verify "$from" "$sha256" "$from"
    say "verified $from (sha256 $(sha256_of "$from"))"
  elif [ -f "$sums" ]; then
    want=$(sum_for "$sums" "$from_name")
    # dist/egresstrator is a symlink to dist/egresstrator-<os>-<arch>, which is what sha256sums lists.
    if [ -z "$want" ] && name=$(platform_name); then want=$(sum_for "$sums" "$name"); fi
    if [ -n "$want" ]; then
      verify "$from" "$want" "$from (listed in $sums)"
      say "verified $from against $sums"
    else
      warn "$sums does not list $from_name; installing it unverified"
    fi
  else
    warn "no --sha256 and no sha256sums next to $from: installing it unverified"
  fi
  bin_src=$from
  if [ "$systemd" = 1 ]; then
    for d in "$from_dir" "${script_dir:+$script_dir/packaging}"; do
      if [ -n "$d" ] && [ -f "$d/egresstrator.service" ] && [ -f "$d/egresstrator.env" ]; then
        unit_src="$d/egresstrator.service"
        env_src="$d/egresstrator.env"
        break
      fi
    done
    [ -n "$unit_src" ] || die "egresstrator.service and egresstrator.env are neither next to $from nor in packaging/ next to install.sh; pass --no-systemd to install the binary only"
    if [ -f "$sums" ]; then
      for f in "$unit_src" "$env_src"; do
        want=$(sum_for "$sums" "$(basename "$f")")
        if [ -n "$want" ] && [ "$(dirname "$f")" = "$from_dir" ]; then verify "$f" "$want" "$f (listed in $sums)"; fi
      done
    fi
  fi
else
  name=$(platform_name) || die "$name"
  base=${EGRESSTRATOR_RELEASE_URL:-$DEFAULT_RELEASE_URL}
  base=${base%/}
  if [ -z "$version" ]; then
    # GitHub serves the newest release's assets under releases/latest/download/.
    case $base in
      */releases/download) latest_url="${base%/download}/latest/download/latest.txt" ;;
      *) latest_url="$base/latest.txt" ;;
    esac
    fetch "$latest_url" "$tmp/latest.txt" || die "cannot find the latest version at $latest_url; pass --version X"
    version=$(head -n 1 "$tmp/latest.txt" | tr -d ' \t\r')
    say "latest version: ${version#v}"
  fi
  version=${version#v}
  case $version in
    '' | *[!0-9A-Za-z._+-]*) die "invalid version: \"$version\"" ;;
  esac
  url="$base/v$version"
  fetch "$url/sha256sums" "$tmp/sha256sums" || die "cannot download $url/sha256sums (is there a release v$version?)"
  want=$(sum_for "$tmp/sha256sums" "$name")
  [ -n "$want" ] || die "release v$version has no $name (its sha256sums does not list it)"
  fetch "$url/$name" "$tmp/$name" || die "cannot download $url/$name"
  verify "$tmp/$name" "$want" "$url/$name"
  say "downloaded and verified $name v$version"
  bin_src="$tmp/$name"
  if [ "$systemd" = 1 ]; then
    for f in egresstrator.service egresstrator.env; do
      want=$(sum_for "$tmp/sha256sums" "$f")
      [ -n "$want" ] || die "release v$version has no $f (its sha256sums does not list it); pass --no-systemd to install the binary only"
      fetch "$url/$f" "$tmp/$f" || die "cannot download $url/$f"
      verify "$tmp/$f" "$want" "$url/$f"
    done
    unit_src="$tmp/egresstrator.service"
    env_src="$tmp/egresstrator.env"
  fi
fi

# The unit as shipped runs /usr/local/bin/egresstrator with /etc/default/egresstrator; point it at ours.
if [ "$systemd" = 1 ]; then
  sed -e "s|^ExecStart=/usr/local/bin/egresstrator |ExecStart=$bin_path |" \
    -e "s|^ExecStart=/usr/local/bin/egresstrator\$|ExecStart=$bin_path|" \
    -e "s|^EnvironmentFile=-/etc/default/egresstrator\$|EnvironmentFile=-$env_file|" \
    "$unit_src" >"$tmp/unit" || die "cannot read $unit_src"
  if ! grep -qF "ExecStart=$bin_path" "$tmp/unit" || ! grep -qF "EnvironmentFile=-$env_file" "$tmp/unit"; then
    die "$unit_src has no ExecStart=/usr/local/bin/egresstrator or EnvironmentFile=-/etc/default/egresstrator line to adapt"
  fi
fi

# ---------------------------------------------------------------------------------------------------------
# Install
bin_changed=0
unit_changed=0
if install_file "$bin_src" "$bin_path" 755 binary; then bin_changed=1; fi
if [ "$dry_run" = 0 ]; then
  t=""
  command -v timeout >/dev/null 2>&1 && t="timeout 20"
  ran=$($t "$bin_path" --version 2>&1) || ran="does not run here ($ran)"
  say "$bin_path --version: $ran"
fi
if [ "$systemd" = 1 ]; then
  if install_file "$tmp/unit" "$unit_path" 644 unit; then unit_changed=1; fi
  if [ -e "$env_file" ]; then
    say "env file $env_file: kept as it is (never overwritten)"
  elif [ "$dry_run" = 1 ]; then
    say "would install env file $env_file"
  else
    # It may come to hold a Consul token: root only.
    install_file "$env_src" "$env_file" 600 "env file" || true
  fi
fi

if [ "$runtime" = 1 ]; then
  if [ "$runtime_default" = 1 ]; then runtime_config --default; else runtime_config; fi
fi
if [ "$podman_hook" = 1 ]; then podman_hook_install "$tmp"; fi

if [ "$dry_run" = 1 ]; then
  say "dry run: nothing was changed"
  exit 0
fi

if [ "$systemd" = 0 ]; then
  say "done. Run it with: $bin_path --help"
  exit 0
fi
if manage_systemd; then
  if [ "$unit_changed" = 1 ]; then systemctl daemon-reload || warn "systemctl daemon-reload failed"; fi
  if [ "$bin_changed" = 1 ] && systemctl is-active --quiet "$UNIT_NAME"; then
    say "the service runs the previous binary: systemctl restart egresstrator"
  fi
elif [ -d /run/systemd/system ]; then
  say "note: $systemd_dir is not a directory systemd loads units from; link or copy $unit_path yourself"
else
  say "note: systemd is not running here, so nothing was reloaded or started"
fi
say "next steps:"
say "  1. edit $env_file (Consul address, token file, mode; see the comments in it)"
say "  2. systemctl enable --now egresstrator"
say "  3. $bin_path status"
