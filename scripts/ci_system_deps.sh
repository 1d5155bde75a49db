#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's chromium (+ chromedriver) for the
# headless-browser test of `medtune web`. Idempotent; call it from .ci/run before the tests.
# Without root or apt it prints a note and exits 0 (the browser test then skips with a reason).
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
