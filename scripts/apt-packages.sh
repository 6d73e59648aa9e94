#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet
# (apt-get, from Debian's own archive only). Used by the test commands, so that
# `npm test` and `npm run test:all` work on a fresh machine as the README says:
# the page tests drive Debian's chromium, the engine is compiled with g++.
# As root it installs; otherwise through sudo when there is one, else it
# stops and names the command to run.
set -euo pipefail
missing=()
for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
[ ${#missing[@]} -eq 0 ] && exit 0
install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "These Debian packages are needed and missing: ${missing[*]}. Install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]} (one time)..." >&2
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" "${install[@]}" >/dev/null
