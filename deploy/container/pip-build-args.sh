#!/usr/bin/env bash
# Print one `--build-arg=NAME=VALUE` per line carrying this machine's pip network settings into
# `podman build`, read from `pip config list` at run time (nothing is written down here):
#
#   mapfile -t pip_args < <(bash deploy/container/pip-build-args.sh)
#
# Only http(s) indexes, trusted hosts, the timeout and explicit proxies pass: local wheel
# directories, file:// indexes, constraint files and certificate paths do not exist inside the
# build (the base image trusts the host's CAs). With no network index configured, nothing is
# printed for it and pip in the build uses its default index.
set -euo pipefail

if command -v pip >/dev/null; then pip=(pip); else pip=(python3 -m pip); fi
config="$("${pip[@]}" config list 2>/dev/null || true)"

# The value of a pip option: environment first, then the install section, then global.
option() {
  local section value
  for section in ':env:' install global; do
    value="$(awk -v key="$section.$1" 'index($0, key "=") == 1 { sub(/^[^=]*=/, ""); print; exit }' <<<"$config")"
    if [[ -n "$value" ]]; then
      value="${value#\'}"
      printf '%s' "${value%\'}"
      return
    fi
  done
}

# The http(s) URLs of a space-separated list.
network_urls() {
  local url urls=()
  for url in $1; do
    if [[ "$url" =~ ^https?:// ]]; then urls+=("$url"); fi
  done
  printf '%s' "${urls[*]}"
}

index="$(network_urls "$(option index-url)")"
extra="$(network_urls "$(option extra-index-url)")"
trusted="$(option trusted-host)"
timeout="$(option default-timeout)"
[[ -n "$timeout" ]] || timeout="$(option timeout)"

[[ -z "$index" ]] || echo "--build-arg=PIP_INDEX_URL=$index"
[[ -z "$extra" ]] || echo "--build-arg=PIP_EXTRA_INDEX_URL=$extra"
[[ -z "$trusted" ]] || echo "--build-arg=PIP_TRUSTED_HOST=$trusted"
[[ -z "$timeout" ]] || echo "--build-arg=PIP_DEFAULT_TIMEOUT=$timeout"
for name in HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy; do
  [[ -z "${!name:-}" ]] || echo "--build-arg=$name=${!name}"
done
