#!/usr/bin/env bash
# Run a command with a Redis answering at $DICOM_INBOX_REDIS_URL (a private one if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis_url.sh
cleanup() { [ -n "$PRIVATE_REDIS_PID" ] && kill "$PRIVATE_REDIS_PID" 2>/dev/null || true; }
trap cleanup EXIT
"$@"
