#!/usr/bin/env bash
# The local base image for `make image` when no container registry is reachable:
# debootstrap (minbase) -> `podman import` -> Dockerfile.base (python3, python3-venv,
# ca-certificates). Idempotent: does nothing when the base image exists; FORCE=1 rebuilds it.
#
#   bash deploy/container/base-image.sh      (after podman-setup.sh)
#
# No mirror or index is named here: the Debian mirror, apt's Acquire options and the CA
# certificates are taken from this machine's own configuration at run time.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SUITE=bookworm
ROOTFS_IMAGE="localhost/coffee-payments-rootfs:$SUITE"
BASE_IMAGE="${BASE_IMAGE:-localhost/coffee-payments-base:$SUITE}"
WORK="$REPO/.podman/work"

log() { printf '[base-image] %s\n' "$*" >&2; }
fail() { log "$1"; [[ -f "${2:-}" ]] && tail -n 30 "$2" >&2; exit 1; }

# shellcheck source=/dev/null
. "$REPO/.podman/env.sh" 2>/dev/null || fail "run deploy/container/podman-setup.sh first"

if [[ "${FORCE:-0}" != 1 ]] && podman image exists "$BASE_IMAGE"; then
  log "$BASE_IMAGE exists (FORCE=1 rebuilds it)"
  exit 0
fi
mkdir -p "$WORK"

# The host's active apt source files (apt ignores other extensions, e.g. *.disabled).
source_files() {
  [[ -f /etc/apt/sources.list ]] && echo /etc/apt/sources.list
  compgen -G '/etc/apt/sources.list.d/*.list' || true
  compgen -G '/etc/apt/sources.list.d/*.sources' || true
}

# The first URI serving the plain suite (not -updates/-security) with component main.
discover_mirror() {
  local file
  for file in $(source_files); do
    case "$file" in
      *.sources)
        awk -v suite="$SUITE" '
          function flush() {
            if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main /) {
              split(uris, u, " "); print u[1]; found = 1; exit
            }
            types = uris = suites = comps = ""
          }
          /^[[:space:]]*$/ { flush(); next }
          /^[[:space:]]*#/ { next }
          tolower($1) == "types:"      { $1 = ""; types = $0 }
          tolower($1) == "uris:"       { $1 = ""; uris = $0 }
          tolower($1) == "suites:"     { $1 = ""; suites = $0 }
          tolower($1) == "components:" { $1 = ""; comps = $0 }
          END { if (!found) flush() }' "$file" ;;
      *)
        awk -v suite="$SUITE" '
          $1 == "deb" {
            i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit }
          }' "$file" ;;
    esac
  done | sed 's/^[[:space:]]*//' | head -n 1
}

# Rootfs image -----------------------------------------------------------------------
if [[ "${FORCE:-0}" == 1 ]] || ! podman image exists "$ROOTFS_IMAGE"; then
  mirror="$(discover_mirror)"
  [[ -n "$mirror" ]] || fail "no apt source for suite $SUITE with component main in /etc/apt"
  rootfs="$WORK/rootfs-$SUITE"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  SECONDS=0
  # debootstrap honours http_proxy/https_proxy when the host sets them.
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || fail "debootstrap failed" "$WORK/debootstrap.log"
  log "debootstrap: ${SECONDS}s"

  # The host's CA trust: the whole bundle now (TLS works before ca-certificates is installed)
  # and the local CAs, so update-ca-certificates keeps them when the base installs it.
  mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -a /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
  fi
  cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"

  # The host's sources for the suite (with -updates and -security) where their keyring exists
  # in the rootfs; debootstrap's own sources.list stays otherwise.
  copied=0
  for file in $(source_files); do
    grep -Eq "(^|[[:space:]])$SUITE(-[a-z]+)?([[:space:]]|$)" "$file" || continue
    keyrings_present=1
    while read -r keyring; do
      [[ -e "$rootfs$keyring" ]] || keyrings_present=0
    done < <(grep -Eio 'signed-by[:=][[:space:]]*[^] ]+' "$file" | sed -E 's/^[^:=]+[:=][[:space:]]*//')
    if ((keyrings_present)); then
      mkdir -p "$rootfs$(dirname "$file")"
      cp "$file" "$rootfs$file"
      copied=1
    else
      log "skipping $file: its keyring is not in the rootfs"
    fi
  done
  if ((copied)) && [[ ! -f /etc/apt/sources.list ]]; then
    rm -f "$rootfs/etc/apt/sources.list"
  fi
  # apt options that matter behind a proxy or a dated snapshot mirror.
  for key in Acquire::Check-Valid-Until Acquire::Check-Date Acquire::http::Proxy \
             Acquire::https::Proxy Acquire::Retries Acquire::http::Timeout; do
    value="$(apt-config shell V "$key" | sed -E "s/^V='(.*)'$/\1/")"
    if [[ -n "$value" ]]; then printf '%s "%s";\n' "$key" "$value"; fi
  done > "$rootfs/etc/apt/apt.conf.d/99host-acquire"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$rootfs/etc/apt/apt.conf.d/99no-recommends"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

  SECONDS=0
  podman rmi --force "$ROOTFS_IMAGE" >/dev/null 2>&1 || true
  tar -C "$rootfs" --numeric-owner -c . \
    | podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "podman import: ${SECONDS}s"
fi

# Base image ---------------------------------------------------------------------------
SECONDS=0
podman build --pull=never --layers=false --build-arg ROOTFS_IMAGE="$ROOTFS_IMAGE" \
  --tag "$BASE_IMAGE" --file "$HERE/Dockerfile.base" "$HERE" >"$WORK/base-build.log" 2>&1 \
  || fail "building $BASE_IMAGE failed" "$WORK/base-build.log"
log "built $BASE_IMAGE: ${SECONDS}s"
