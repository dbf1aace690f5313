#!/usr/bin/env bash
# `make test` setup: Debian's chromium for the two browser tests (the status page, Swagger UI).
# Installed once where apt-get can (as root); elsewhere the tests skip and say why.
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "no chromium: installing Debian's chromium for the browser tests" >&2
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2; then
        exit 0
    fi
fi
echo "chromium could not be installed: the two browser tests will skip" >&2
exit 0
