#!/usr/bin/env bash
# The one test command (also what CI runs via .ci/run):
#
#   bash scripts/test.sh [extra `deno test` args, e.g. --filter "rules"]
#
# Sets up the test environment (root needed: packages, dockerd, test images, consul), then runs
# fmt check, lint, type check, saves the host state the suite must leave unchanged, and runs the test
# suite, stopping at the first failure.
set -euo pipefail

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo_root"

step() { printf '\n==> %s\n' "$*" >&2; }

step "deno"
DENO="$(bash scripts/ensure_deno.sh)"
"$DENO" --version | head -n1 >&2

step "test environment"
bash scripts/test_env.sh

tools_dir="${EGRESSTRATOR_TOOLS_DIR:-$repo_root/.tools}"
export EGRESSTRATOR_TEST_CONSUL_BIN="$tools_dir/consul/usr/bin/consul"
# Nested `deno` invocations (e.g. tests that spawn the CLI) must find the same binary.
PATH="$(dirname -- "$DENO"):$PATH"
export PATH

step "deno fmt --check"
"$DENO" fmt --check

step "deno lint"
"$DENO" lint

check_targets=(main.ts src/ tests/)
# bench/ is optional; only check it when it holds TypeScript.
if [[ -d bench ]] && find bench -name '*.ts' -not -path 'bench/results/*' -print -quit | grep -q .; then
  check_targets+=(bench/)
fi
step "deno check ${check_targets[*]}"
"$DENO" check "${check_targets[@]}"

# What the suite must leave as it found it (docker0, the iptables/ip6tables filter tables, daemon.json):
# saved now, after test_env.sh, and compared by tests/integration/zz_host_intact_test.ts at the end.
step "save the host state"
state_dir="$(mktemp -d "${TMPDIR:-/tmp}/egt-host-state.XXXXXX")"
trap 'rm -rf -- "$state_dir"' EXIT
export EGRESSTRATOR_TEST_HOST_BEFORE="$state_dir/before.json"
"$DENO" run -A --frozen tests/support/host_state.ts "$EGRESSTRATOR_TEST_HOST_BEFORE"

step "deno test -A --frozen tests/ $*"
"$DENO" test -A --frozen tests/ "$@"
