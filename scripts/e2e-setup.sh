#!/usr/bin/env bash
# Installs a real VS Code for the end-to-end tests: code-server 4.100.3 (VS
# Code 1.100.3, the newest that runs on Node 20) from the npm registry, into
# ~/.cache/cellfinder-retrain/code-server (kept between runs), plus the Debian
# packages it builds against and Chromium to drive it. Nothing is fetched from
# outside npm and apt: ripgrep's download is answered from Debian's rg.
set -euo pipefail
VERSION=4.100.3
DIR="${CELLFINDER_E2E_CODE_SERVER_DIR:-$HOME/.cache/cellfinder-retrain/code-server}"
[ -f "$DIR/ready-$VERSION" ] && exit 0

bash "$(dirname "$0")/apt-packages.sh" build-essential python3 pkg-config libkrb5-dev libxkbfile-dev libsecret-1-dev libx11-dev ripgrep chromium

# @vscode/ripgrep's postinstall downloads rg from GitHub unless it finds this archive.
cache="${TMPDIR:-/tmp}/vscode-ripgrep-cache-1.15.11"
mkdir -p "$cache"
tmp=$(mktemp -d)
cp /usr/bin/rg "$tmp/rg"
tar -czf "$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$tmp" rg
rm -rf "$tmp"

mkdir -p "$DIR"
cd "$DIR"
# npm runs dependencies' install scripts only when allowed: code-server's
# postinstall installs VS Code's own modules, argon2 builds its addon.
cat > package.json <<JSON
{ "private": true, "dependencies": { "code-server": "$VERSION" }, "allowScripts": { "code-server": true, "argon2": true } }
JSON
echo "Installing code-server $VERSION into $DIR (about a minute)..."
# node-gyp (argon2's build) would download Node's headers from nodejs.org on a
# machine where it has none cached: point it at the headers this Node ships.
nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
[ -f "$nodedir/include/node/node.h" ] && export npm_config_nodedir="$nodedir"
# code-server's postinstall refuses to run as root without unsafe-perm; node-pty's runs `npx node-gyp`.
npm_config_unsafe_perm=true npm_config_yes=true npm install --no-audit --no-fund >install.log 2>&1 || { tail -30 install.log; exit 1; }
test -f node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg || { echo "code-server's install did not complete (see $DIR/install.log)"; exit 1; }
touch "ready-$VERSION"
