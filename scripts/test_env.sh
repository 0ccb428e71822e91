#!/usr/bin/env bash
# Idempotent test-environment setup for egresstrator (Debian 12 "bookworm", run as root).
#
# Ensures:
#   * Debian packages: docker.io, iptables (iptables + ip6tables), busybox-static, debootstrap,
#     iproute2, util-linux (nsenter), curl, ca-certificates, and for the platform tests podman (with
#     containernetworking-plugins and catatonit, for pods) and docker-compose
#     -- apt is only touched if one is missing;
#   * Consul 1.8.x (from Debian bullseye) at <repo>/.tools/consul/usr/bin/consul
#     (.deb cached under <repo>/.tools/consul-apt/);
#   * a running dockerd (started by hand, in the background, if nothing answers);
#   * locally built test images (no registry needed):
#       egresstrator-test/busybox:1  static busybox with all applets in /bin
#       egresstrator-test/helper:1   debootstrap'ed bookworm minbase + iptables (nf_tables)
#       egresstrator-test/systemd:2  debootstrap'ed bookworm with systemd as PID 1, dbus, iptables, docker.io
#                                    and what rules by DNS name use (ipset, nftables, conntrack):
#                                    tests/integration/systemd_test.ts runs the unit in it
#     The debootstrap results are cached in /var/cache/egresstrator-test/ so a re-import is fast.
#
# Environment overrides (all optional):
#   EGRESSTRATOR_TOOLS_DIR       where consul/ and consul-apt/ live (default <repo>/.tools)
#   EGRESSTRATOR_TEST_CACHE_DIR  image build cache (default /var/cache/egresstrator-test)
#   EGRESSTRATOR_DEBIAN_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   EGRESSTRATOR_DOCKERD_LOG     log file for a dockerd we start (default /var/log/egresstrator-test-dockerd.log)
#
# Progress and the final summary go to stderr. Exits non-zero with a message on any failure.
set -euo pipefail

BUSYBOX_IMAGE="egresstrator-test/busybox:1"
HELPER_IMAGE="egresstrator-test/helper:1"
SYSTEMD_IMAGE="egresstrator-test/systemd:2"
CONSUL_WANT_PREFIX="1.8." # Debian bullseye ships 1.8.7
BUSYBOX_APPLETS=(sh nc wget nslookup sleep httpd ping)

started_at=$SECONDS
# iptables, debootstrap, dockerd live in sbin dirs, which `su` without `-` may leave off PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
log() { printf 'test_env: %s\n' "$*" >&2; }
die() {
  printf 'test_env: ERROR: %s\n' "$*" >&2
  exit 1
}

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
tools_dir="${EGRESSTRATOR_TOOLS_DIR:-$repo_root/.tools}"
cache_dir="${EGRESSTRATOR_TEST_CACHE_DIR:-/var/cache/egresstrator-test}"
mirror="${EGRESSTRATOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
dockerd_log="${EGRESSTRATOR_DOCKERD_LOG:-/var/log/egresstrator-test-dockerd.log}"
consul_root="$tools_dir/consul"
consul_bin="$consul_root/usr/bin/consul"
consul_apt="$tools_dir/consul-apt"

summary=()
note() { summary+=("$(printf '%-12s %s' "$1" "$2")"); }

# ---------------------------------------------------------------------------------------------
# cleanup of temporary files/dirs created along the way
tmp_paths=()
created_policy_rc_d=""
cleanup() {
  local p
  if [[ -n "$created_policy_rc_d" ]]; then rm -f "$created_policy_rc_d"; fi
  for p in "${tmp_paths[@]+"${tmp_paths[@]}"}"; do
    [[ -n "$p" && -e "$p" ]] && rm -rf -- "$p"
  done
  return 0
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM

# ---------------------------------------------------------------------------------------------
if [[ "$(id -u)" -ne 0 ]]; then
  die "must be run as root (it installs packages, starts dockerd, builds images, and the tests enter network namespaces); try: sudo bash scripts/test_env.sh"
fi
command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 ||
  die "apt-get/dpkg not found: this script supports Debian 12 (bookworm) only"

mkdir -p "$cache_dir" "$tools_dir" || die "cannot create $cache_dir or $tools_dir"

# Serialise concurrent runs (two test runs starting at once must not both debootstrap/import).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_dir/.test_env.lock"
  if ! flock -n 9; then
    log "another test_env.sh is running; waiting for it"
    flock 9
  fi
fi

# =============================================================================================
# 1. Debian packages
# =============================================================================================
pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == ii* ]]
}

need_pkgs=()
for p in iptables ipset nftables conntrack busybox-static debootstrap iproute2 util-linux curl ca-certificates \
  podman containernetworking-plugins catatonit docker-compose; do
  pkg_installed "$p" || need_pkgs+=("$p")
done
# Any Docker engine will do (docker.io, docker-ce, ...); only install Debian's if none is there.
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  need_pkgs+=(docker.io)
fi
# With AppArmor enabled in the kernel, dockerd 20.10 cannot start containers without apparmor_parser.
if [[ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || true)" == Y ]] &&
  ! command -v apparmor_parser >/dev/null 2>&1; then
  need_pkgs+=(apparmor)
fi

if ((${#need_pkgs[@]} > 0)); then
  log "installing missing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd (e.g. inside a container) package maintainer scripts can't start services;
  # tell them not to try (dockerd is started by hand below).
  if [[ ! -d /run/systemd/system && ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d &&
      created_policy_rc_d=/usr/sbin/policy-rc.d
  fi
  # A fresh VM may be running unattended-upgrades: wait for the dpkg/apt locks instead of failing.
  apt_lock=(-o DPkg::Lock::Timeout=300)
  apt-get "${apt_lock[@]}" update -qq >&2 || die "apt-get update failed (is deb.debian.org reachable?)"
  apt-get "${apt_lock[@]}" install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 ||
    die "apt-get install ${need_pkgs[*]} failed"
  if [[ -n "$created_policy_rc_d" ]]; then
    rm -f "$created_policy_rc_d"
    created_policy_rc_d=""
  fi
  note "packages" "installed: ${need_pkgs[*]}"
else
  note "packages" "all present"
fi

for c in iptables ip6tables iptables-restore ip6tables-restore ipset nft ip nsenter curl debootstrap docker \
  dockerd podman docker-compose; do
  command -v "$c" >/dev/null 2>&1 || die "'$c' not found on PATH after package installation (PATH=$PATH)"
done
# The Podman tests give their private service CNI networks of their own (bridge + host-local only).
for plugin in bridge host-local; do
  [[ -x "/usr/lib/cni/$plugin" ]] || die "/usr/lib/cni/$plugin missing (package containernetworking-plugins)"
done
note "podman" "$(podman --version 2>&1 | head -n1); $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"
[[ -x /bin/busybox ]] || die "/bin/busybox missing (package busybox-static)"

# iptables and ip6tables must actually talk to the kernel.
iptables -w 10 -S >/dev/null 2>&1 || die "'iptables -S' failed: $(iptables -w 10 -S 2>&1 | tail -n1)"
ip6tables -w 10 -S >/dev/null 2>&1 || die "'ip6tables -S' failed (IPv6 netfilter unavailable?): $(ip6tables -w 10 -S 2>&1 | tail -n1)"
note "iptables" "$(iptables --version 2>&1 | head -n1); ip6tables ok"

# =============================================================================================
# 2. Consul (from Debian bullseye, extracted into .tools; never installed system-wide)
# =============================================================================================
consul_version() { "$1" version 2>/dev/null | head -n1 | sed -n 's/^Consul v//p'; }
consul_ok() {
  local v
  [[ -x "$1" ]] || return 1
  v="$(consul_version "$1")"
  [[ "$v" == "$CONSUL_WANT_PREFIX"* ]]
}

# fetch_consul_deb: sets consul_deb to a verified consul .deb, downloading it if not cached.
consul_deb=""
fetch_consul_deb() {
  local deb dl_dir
  mkdir -p "$consul_apt"
  deb="$(ls -1 "$consul_apt"/consul_*.deb 2>/dev/null | sort | tail -n1 || true)"
  if [[ -n "$deb" ]] && dpkg-deb --info "$deb" >/dev/null 2>&1; then
    log "using cached $deb"
    consul_deb="$deb"
    return 0
  fi
  [[ -n "$deb" ]] && rm -f "$consul_apt"/consul_*.deb

  log "downloading consul .deb from Debian bullseye ($mirror)"
  printf 'deb %s bullseye main\n' "$mirror" >"$consul_apt/sources.list"
  mkdir -p "$consul_apt/lists/partial" "$consul_apt/cache/archives/partial"
  # A private apt configuration: own sources, lists and caches, so the system's apt state is untouched.
  local apt_opts=(
    -o "Dir::Etc::SourceList=$consul_apt/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$consul_apt/lists"
    -o "Dir::Cache=$consul_apt/cache"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update for bullseye (consul) failed"
  dl_dir="$(mktemp -d "$consul_apt/download.XXXXXX")"
  tmp_paths+=("$dl_dir")
  (cd "$dl_dir" && apt-get "${apt_opts[@]}" -qq download consul >&2) || die "apt-get download consul (bullseye) failed"
  deb="$(ls -1 "$dl_dir"/consul_*.deb 2>/dev/null | head -n1 || true)"
  [[ -n "$deb" ]] || die "apt-get download consul produced no .deb"
  dpkg-deb --info "$deb" >/dev/null 2>&1 || die "downloaded $deb is not a valid .deb"
  mv -f "$deb" "$consul_apt/"
  rm -rf -- "$dl_dir"
  consul_deb="$consul_apt/$(basename -- "$deb")"
}

if consul_ok "$consul_bin"; then
  note "consul" "present: $consul_bin (v$(consul_version "$consul_bin"))"
else
  fetch_consul_deb
  log "extracting $(basename -- "$consul_deb") into $consul_root"
  extract_dir="$(mktemp -d "$tools_dir/consul.tmp.XXXXXX")"
  tmp_paths+=("$extract_dir")
  dpkg -x "$consul_deb" "$extract_dir" || die "dpkg -x $consul_deb failed"
  if ! consul_ok "$extract_dir/usr/bin/consul"; then
    rm -f "$consul_deb" # don't keep a cache entry that doesn't give us what we need
    die "consul from $(basename -- "$consul_deb") reports '$(consul_version "$extract_dir/usr/bin/consul")', want ${CONSUL_WANT_PREFIX}x"
  fi
  chmod 755 "$extract_dir"
  rm -rf -- "$consul_root"
  mv -- "$extract_dir" "$consul_root"
  note "consul" "installed: $consul_bin (v$(consul_version "$consul_bin"))"
fi

# =============================================================================================
# 3. dockerd
# =============================================================================================
docker_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if docker_answers; then
  note "dockerd" "already running (server $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
else
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1 &&
    systemctl cat docker.service >/dev/null 2>&1; then
    log "starting docker.service via systemd"
    systemctl start docker.service >&2 || die "systemctl start docker failed; see 'journalctl -u docker'"
    how="started via systemd"
  else
    if [[ -s /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      log "a dockerd process exists but does not answer yet; waiting for it"
      how="was starting"
    else
      log "starting dockerd in the background (log: $dockerd_log)"
      mkdir -p "$(dirname -- "$dockerd_log")"
      printf '\n==== %s test_env.sh starting dockerd ====\n' "$(date -Is)" >>"$dockerd_log"
      # 9>&-: the daemon must not inherit (and hold forever) our flock on the lock file.
      setsid nohup dockerd >>"$dockerd_log" 2>&1 </dev/null 9>&- &
      dockerd_pid=$!
      how="started by hand (pid $dockerd_pid, log $dockerd_log)"
    fi
  fi
  deadline=$((SECONDS + 30))
  until docker_answers; do
    if [[ -n "${dockerd_pid:-}" ]] && ! kill -0 "$dockerd_pid" 2>/dev/null; then
      tail -n 20 "$dockerd_log" >&2 || true
      die "dockerd exited during startup; see $dockerd_log"
    fi
    if ((SECONDS >= deadline)); then
      [[ -f "$dockerd_log" ]] && tail -n 20 "$dockerd_log" >&2
      die "dockerd did not answer 'docker version' within 30s"
    fi
    sleep 0.5
  done
  note "dockerd" "$how (server $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
fi

# =============================================================================================
# 4. Test images
# =============================================================================================
# Images carry a label naming the recipe that built them; an image with the right tag but without
# the label (built by hand / an older recipe) is rebuilt rather than trusted.
IMAGE_LABEL="org.egresstrator.test-image"
image_state() { # prints: ours | foreign | missing
  local v
  if ! v="$(docker image inspect --format "{{index .Config.Labels \"$IMAGE_LABEL\"}}" "$1" 2>/dev/null)"; then
    echo missing
  elif [[ "$v" == "$1" ]]; then
    echo ours
  else
    echo foreign
  fi
}
# drop_replaced <old image id>: remove an image we just replaced, unless something still uses it.
drop_replaced() {
  [[ -n "$1" ]] && docker image rm "$1" >/dev/null 2>&1 || true
}

build_busybox_image() {
  local rootfs applet
  log "building $BUSYBOX_IMAGE from /bin/busybox"
  if ldd /bin/busybox >/dev/null 2>&1 && ! ldd /bin/busybox 2>&1 | grep -q 'statically linked'; then
    die "/bin/busybox is dynamically linked; install busybox-static"
  fi
  rootfs="$(mktemp -d "$cache_dir/busybox-rootfs.XXXXXX")"
  tmp_paths+=("$rootfs")
  chmod 755 "$rootfs"
  mkdir -p "$rootfs"/{bin,etc,root,tmp,var/www}
  chmod 1777 "$rootfs/tmp"
  chmod 700 "$rootfs/root"
  cp -L /bin/busybox "$rootfs/bin/busybox"
  chmod 755 "$rootfs/bin/busybox"
  while IFS= read -r applet; do
    [[ -n "$applet" && "$applet" != busybox && "$applet" != */* ]] || continue
    ln -sf busybox "$rootfs/bin/$applet"
  done < <(/bin/busybox --list)
  for applet in "${BUSYBOX_APPLETS[@]}"; do
    [[ -L "$rootfs/bin/$applet" ]] || die "/bin/busybox has no '$applet' applet"
  done
  cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
  tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf - . |
    docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
      --change "LABEL $IMAGE_LABEL=$BUSYBOX_IMAGE" - "$BUSYBOX_IMAGE" >/dev/null ||
    die "docker import of $BUSYBOX_IMAGE failed"
}

verify_busybox_image() {
  local out
  if ! out="$(docker run --rm --network none "$BUSYBOX_IMAGE" sh -c \
    'for a in "$@"; do command -v "$a" >/dev/null || { echo "missing applet $a"; exit 1; }; done; echo ok' \
    sh "${BUSYBOX_APPLETS[@]}" 2>&1)" || [[ "$out" != ok ]]; then
    docker image rm -f "$BUSYBOX_IMAGE" >/dev/null 2>&1 || true
    die "$BUSYBOX_IMAGE does not work: $out"
  fi
}

helper_tarball="$cache_dir/helper-bookworm-minbase-iptables.tar.gz"

build_helper_tarball() {
  local target deb_log
  deb_log="$cache_dir/debootstrap.log"
  target="$(mktemp -d "$cache_dir/helper-rootfs.XXXXXX")"
  tmp_paths+=("$target")
  chmod 755 "$target"
  log "debootstrap bookworm (minbase + iptables) from $mirror; takes ~1 minute (log: $deb_log)"
  if ! debootstrap --variant=minbase --include=iptables bookworm "$target" "$mirror" >"$deb_log" 2>&1; then
    tail -n 20 "$deb_log" >&2 || true
    die "debootstrap failed; see $deb_log"
  fi
  rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* 2>/dev/null || true
  log "packing the helper rootfs into $helper_tarball"
  tar --numeric-owner -C "$target" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
    -cf - . | gzip -1 >"$helper_tarball.tmp" || die "packing the helper rootfs failed"
  mv -f "$helper_tarball.tmp" "$helper_tarball"
  rm -rf -- "$target"
}

import_helper_image() {
  docker import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["/bin/bash"]' \
    --change "LABEL $IMAGE_LABEL=$HELPER_IMAGE" "$helper_tarball" "$HELPER_IMAGE" >/dev/null
}

verify_helper_image() {
  local out
  if ! out="$(docker run --rm --network none --cap-add NET_ADMIN "$HELPER_IMAGE" \
    sh -c 'iptables-restore --version && ip6tables-restore --version && iptables -w 5 -S >/dev/null && ip6tables -w 5 -S >/dev/null' 2>&1)"; then
    docker image rm -f "$HELPER_IMAGE" >/dev/null 2>&1 || true
    die "$HELPER_IMAGE does not work: $out"
  fi
  if [[ "$out" != *nf_tables* ]]; then
    docker image rm -f "$HELPER_IMAGE" >/dev/null 2>&1 || true
    die "$HELPER_IMAGE: iptables-restore is not the nf_tables backend: $out"
  fi
}

state="$(image_state "$BUSYBOX_IMAGE")"
if [[ "$state" == ours ]]; then
  note "image" "$BUSYBOX_IMAGE (present)"
else
  old_id=""
  if [[ "$state" == foreign ]]; then
    log "$BUSYBOX_IMAGE exists but lacks label $IMAGE_LABEL=$BUSYBOX_IMAGE; rebuilding it"
    old_id="$(docker image inspect --format '{{.Id}}' "$BUSYBOX_IMAGE" 2>/dev/null || true)"
  fi
  build_busybox_image
  verify_busybox_image
  drop_replaced "$old_id"
  note "image" "$BUSYBOX_IMAGE (built)"
fi

state="$(image_state "$HELPER_IMAGE")"
if [[ "$state" == ours ]]; then
  note "image" "$HELPER_IMAGE (present)"
else
  old_id=""
  if [[ "$state" == foreign ]]; then
    log "$HELPER_IMAGE exists but lacks label $IMAGE_LABEL=$HELPER_IMAGE; rebuilding it"
    old_id="$(docker image inspect --format '{{.Id}}' "$HELPER_IMAGE" 2>/dev/null || true)"
  fi
  how="imported from cached $helper_tarball"
  if [[ ! -s "$helper_tarball" ]]; then
    build_helper_tarball
    how="built with debootstrap"
  fi
  log "importing $HELPER_IMAGE"
  if ! import_helper_image; then
    if [[ "$how" == imported* ]]; then
      log "import of the cached tarball failed; rebuilding it"
      rm -f "$helper_tarball"
      build_helper_tarball
      how="rebuilt with debootstrap"
      import_helper_image || die "docker import of $HELPER_IMAGE failed"
    else
      die "docker import of $HELPER_IMAGE failed"
    fi
  fi
  verify_helper_image
  drop_replaced "$old_id"
  note "image" "$HELPER_IMAGE ($how)"
fi

# The systemd image: PID 1 systemd with its own dockerd, for systemd_test.ts. Built like the helper (a
# debootstrap tarball cached under $cache_dir, then `docker import`), because there is no registry to pull
# from. Units that cannot work or are pointless in a container (timers, getty, pstore) are not enabled;
# the inner dockerd uses systemd's cgroup driver so its containers stay inside this container's cgroup.
systemd_tarball="$cache_dir/systemd-bookworm-docker-2.tar.gz"
SYSTEMD_PACKAGES="systemd,systemd-sysv,dbus,iptables,docker.io,procps,ipset,nftables,conntrack"

build_systemd_tarball() {
  local target deb_log
  deb_log="$cache_dir/debootstrap-systemd.log"
  target="$(mktemp -d "$cache_dir/systemd-rootfs.XXXXXX")"
  tmp_paths+=("$target")
  chmod 755 "$target"
  log "debootstrap bookworm (minbase + $SYSTEMD_PACKAGES) from $mirror; takes ~1 minute (log: $deb_log)"
  if ! debootstrap --variant=minbase --include="$SYSTEMD_PACKAGES" bookworm "$target" "$mirror" >"$deb_log" 2>&1; then
    tail -n 20 "$deb_log" >&2 || true
    die "debootstrap of the systemd rootfs failed; see $deb_log"
  fi
  rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* "$target"/usr/share/doc/* \
    "$target"/usr/share/man/* "$target"/usr/share/locale/* 2>/dev/null || true
  rm -f "$target"/etc/systemd/system/timers.target.wants/* "$target"/etc/systemd/system/getty.target.wants/* \
    "$target"/etc/systemd/system/sysinit.target.wants/systemd-pstore.service \
    "$target"/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service
  mkdir -p "$target/etc/docker"
  printf '{"exec-opts": ["native.cgroupdriver=systemd"]}\n' >"$target/etc/docker/daemon.json"
  # A fresh machine id per container (systemd writes one when the file is empty).
  : >"$target/etc/machine-id"
  log "packing the systemd rootfs into $systemd_tarball"
  tar --numeric-owner -C "$target" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
    -cf - . | gzip -1 >"$systemd_tarball.tmp" || die "packing the systemd rootfs failed"
  mv -f "$systemd_tarball.tmp" "$systemd_tarball"
  rm -rf -- "$target"
}

import_systemd_image() {
  docker import --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' \
    --change "LABEL $IMAGE_LABEL=$SYSTEMD_IMAGE" "$systemd_tarball" "$SYSTEMD_IMAGE" >/dev/null
}

# The image must have what the test uses: systemd as init, dockerd, iptables, sha256sum for install.sh.
verify_systemd_image() {
  local out
  if ! out="$(docker run --rm --network none --entrypoint /bin/sh "$SYSTEMD_IMAGE" -c \
    'test -x /lib/systemd/systemd && command -v dockerd containerd runc iptables-restore nsenter sha256sum journalctl >/dev/null && echo ok' 2>&1)" ||
    [[ "$out" != ok ]]; then
    docker image rm -f "$SYSTEMD_IMAGE" >/dev/null 2>&1 || true
    die "$SYSTEMD_IMAGE does not work: $out"
  fi
}

state="$(image_state "$SYSTEMD_IMAGE")"
if [[ "$state" == ours ]]; then
  note "image" "$SYSTEMD_IMAGE (present)"
else
  old_id=""
  if [[ "$state" == foreign ]]; then
    log "$SYSTEMD_IMAGE exists but lacks label $IMAGE_LABEL=$SYSTEMD_IMAGE; rebuilding it"
    old_id="$(docker image inspect --format '{{.Id}}' "$SYSTEMD_IMAGE" 2>/dev/null || true)"
  fi
  how="imported from cached $systemd_tarball"
  if [[ ! -s "$systemd_tarball" ]]; then
    build_systemd_tarball
    how="built with debootstrap"
  fi
  log "importing $SYSTEMD_IMAGE"
  if ! import_systemd_image; then
    if [[ "$how" == imported* ]]; then
      log "import of the cached tarball failed; rebuilding it"
      rm -f "$systemd_tarball"
      build_systemd_tarball
      how="rebuilt with debootstrap"
      import_systemd_image || die "docker import of $SYSTEMD_IMAGE failed"
    else
      die "docker import of $SYSTEMD_IMAGE failed"
    fi
  fi
  verify_systemd_image
  drop_replaced "$old_id"
  note "image" "$SYSTEMD_IMAGE ($how)"
fi

# =============================================================================================
log "ready in $((SECONDS - started_at))s:"
for line in "${summary[@]}"; do
  printf '  %s\n' "$line" >&2
done
