#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's chromium (+ chromedriver) for the
# headless-browser tests of `medtune web` and `medtune studio` (tests/test_web.py, tests/test_studio_browser.py;
# playwright drives /usr/bin/chromium, so no browser download is needed). Idempotent; setup.sh --test runs it.
# Without root or apt it prints a note and exits 0 (the browser tests then skip with a reason).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "note: cannot install chromium (needs root + apt-get); the web browser test will be skipped"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "installed: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
