#!/usr/bin/env bash
# Headless Chromium for tests/test_demo.py: Debian's chromium + chromium-driver (apt) and the Playwright
# Python package, which drives that system Chromium (never `playwright install`: no browser download).
# Idempotent: does nothing but two checks when both are already there. Runs in the active Python env.
set -euo pipefail

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    "$PYTHON" -m pip install -q --disable-pip-version-check "playwright>=1.40"
fi

chromium --version 2>/dev/null  # (the Debian wrapper prints a harmless shell warning on stderr)
