#!/usr/bin/env bash
# Podman for building and running the image on this kind of machine (Debian bookworm, root, no
# Docker engine). Idempotent: installs only the missing packages, rewrites a config file only when
# its content changes.
#
#   bash deploy/container/podman-setup.sh
#   . .podman/env.sh       # exports CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
#
# Everything Podman writes stays in the project's .podman/ (git-ignored): containers.conf,
# storage.conf, env.sh, and the image storage itself (.podman/storage).
#
# Why the settings: crun (Debian's default runtime) fails on hybrid cgroups (v1 controllers plus a
# unified mount), so runc; Podman's default ulimits (nofile=1048576) exceed the hard limits here
# and make `podman run` fail ("error setting rlimits"), so they are capped at `ulimit -H`; Debian
# ships a CNI config without CNI plugins, so netavark is named explicitly.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PODMAN_DIR="$REPO/.podman"

log() { printf '[podman-setup] %s\n' "$*" >&2; }

# Packages -----------------------------------------------------------------------
# debootstrap and the keyring build the local base image (base-image.sh); catatonit is the
# minimal init behind `podman run --init`.
packages=(podman runc conmon catatonit netavark aardvark-dns iptables slirp4netns
          debootstrap debian-archive-keyring ca-certificates)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -qx 'install ok installed' \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Storage: native kernel overlay when it mounts here, else vfs (slower, copies every layer). -----
# Podman refuses to switch drivers over existing images: delete .podman/storage to change it.
mkdir -p "$PODMAN_DIR"
driver=vfs
probe="$(mktemp -d)"
mkdir -p "$probe"/{lower,upper,work,merged}
if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
     "$probe/merged" 2>/dev/null; then
  umount "$probe/merged"
  driver=overlay
fi
rm -rf "$probe"

# Write $1 from standard input unless it already has exactly that content.
write_if_changed() {
  local target="$1" new
  new="$(cat)"
  if [[ ! -f "$target" || "$(cat "$target")" != "$new" ]]; then
    printf '%s\n' "$new" > "$target"
    log "wrote $target"
  fi
}

{
  printf '# written by deploy/container/podman-setup.sh\n[storage]\n'
  printf 'driver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' \
    "$driver" "$PODMAN_DIR/storage" "$PODMAN_DIR/run"
  if [[ "$driver" == overlay ]]; then
    printf '\n[storage.options.overlay]\nmountopt = "nodev"\n'
  fi
} | write_if_changed "$PODMAN_DIR/storage.conf"

nofile="$(ulimit -Hn)"
[[ "$nofile" == unlimited ]] && nofile=1048576
nproc=32768
hard_nproc="$(ulimit -Hu)"
[[ "$hard_nproc" != unlimited && "$hard_nproc" -lt "$nproc" ]] && nproc="$hard_nproc"

write_if_changed "$PODMAN_DIR/containers.conf" <<CONF
# written by deploy/container/podman-setup.sh
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
# No systemd on this machine: plain files for logs and events, cgroupfs for cgroups.
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$PODMAN_DIR/tmp"

[network]
network_backend = "netavark"
CONF

write_if_changed "$PODMAN_DIR/env.sh" <<ENV
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
ENV

# shellcheck source=/dev/null
. "$PODMAN_DIR/env.sh"
podman info --format \
  'podman {{.Version.Version}}: runtime {{.Host.OCIRuntime.Name}}, storage {{.Store.GraphDriverName}}, network {{.Host.NetworkBackend}}' >&2
