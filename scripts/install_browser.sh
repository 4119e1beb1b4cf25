#!/usr/bin/env bash
# Installs Debian's Chromium and its chromedriver for the browser end-to-end test
# (tests/test_web_browser.py). Idempotent: does nothing when /usr/bin/chromium already exists.
# Needs root (or passwordless sudo) and access to the Debian package mirrors; no browser
# downloads from anywhere else. Exit status 0 when chromium is there afterwards.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "install_browser.sh: need root to apt-get install chromium" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: apt-get not found (not a Debian-based system)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core \
  >/dev/null
test -x /usr/bin/chromium
echo "install_browser.sh: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)"
