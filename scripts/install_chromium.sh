#!/usr/bin/env bash
# The browser the dashboard's tests drive: Debian's Chromium, installed if missing (as root
# with apt-get), or any Chromium or Chrome named by SWEEP_CHROMIUM. Never a downloaded browser.
set -euo pipefail
if [[ -n "${SWEEP_CHROMIUM:-}" ]] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
    exit 0
fi
echo "error: the dashboard's browser tests need Chromium: install it (Debian: sudo apt-get install chromium) or set SWEEP_CHROMIUM to a Chromium or Chrome binary" >&2
exit 1
