#!/usr/bin/env bash
# Run egresstrator from source on any machine: installs the pinned Deno where it is missing, then runs
# main.ts with the same permissions the compiled binary has (deno task start). Arguments pass through:
#   bash scripts/run.sh --help
#   sudo bash scripts/run.sh -c 127.0.0.1:8500          # the daemon
#   sudo bash scripts/run.sh set --all
set -euo pipefail
repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
DENO="$(bash "$repo_root/scripts/ensure_deno.sh")"
cd "$repo_root"
exec "$DENO" task --quiet start "$@"
