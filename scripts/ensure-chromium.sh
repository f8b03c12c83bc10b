#!/usr/bin/env bash
# Make sure a headless Chromium is available for the HTML report tests (tests/core/test_report.py).
# - already on PATH (chromium, chromium-browser or google-chrome): print its path, exit 0;
# - running as root with apt-get: install the Debian package `chromium` quietly, exit 0;
# - otherwise: print how to install it and exit 1.
set -euo pipefail

for name in chromium chromium-browser google-chrome; do
    if path="$(command -v "$name" 2>/dev/null)"; then
        echo "chromium: $path"
        exit 0
    fi
done

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium: not found, installing the Debian package 'chromium' with apt-get ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    echo "chromium: $(command -v chromium)"
    exit 0
fi

cat >&2 <<'MSG'
chromium: not found. The HTML report tests need a headless Chromium. Install it with
    sudo apt-get install -y chromium          (Debian/Ubuntu)
or put chromium / chromium-browser / google-chrome on PATH, then run `make test` again.
MSG
exit 1
