#!/usr/bin/env bash
# Set up this checkout for development and CI. Idempotent: run it as often as you like.
#
#  1. system packages, only what is missing (needs root or sudo): PostgreSQL 15, Maven,
#     a JRE (only if there is no `java`), Python 3.11 with venv, Go if there is none, and
#     Chromium with its WebDriver (the verification page's tests drive it headless);
#  2. .venv with Python 3.11: pip install -c constraints.txt -e '.[test,stack]'
#     (redone only when pyproject.toml or constraints.txt changed);
#  3. `ledger stack install`: Kafka's classpath (Maven), OpenBao (from the venv), and the
#     Go builds of Rekor v1/Trillian, Rekor v2 (rekor-tiles) and the RFC 3161 timestamp
#     authority (several minutes the first time), cached in $LEDGER_CACHE_DIR (default
#     ~/.cache/ledger).
#
# Environment: PYTHON (default python3.11), LEDGER_SKIP_APT=1 (never call apt-get),
# LEDGER_SKIP_STACK_INSTALL=1 (stop after the venv).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3.11}
VENV="$ROOT/.venv"

log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- 1. system packages ---------------------------------------------------------------------

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
want_pkg() { have_pkg "$1" || missing+=("$1"); }

[ -x /usr/lib/postgresql/15/bin/postgres ] || want_pkg postgresql-15
command -v mvn >/dev/null 2>&1 || want_pkg maven
command -v java >/dev/null 2>&1 || want_pkg openjdk-17-jre-headless
command -v "$PYTHON" >/dev/null 2>&1 || want_pkg python3.11
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then want_pkg python3.11-venv; fi
# Go builds rekor-server and Trillian (deploy/local/rekor.py), rekor-tiles' posix server
# (deploy/local/rekor_v2.py) and the timestamp authority's wrapper module
# (deploy/local/tsa-server, built in module mode from its committed go.mod/go.sum). The
# newest minimum is Go >= 1.25.11; the stack sets GOTOOLCHAIN=go1.25.11+auto (and the like)
# when the local Go is older, and the go command then fetches that toolchain through the Go
# module proxy. Toolchain switching needs
# Go >= 1.21 (see the check below). Any `go` on PATH, /usr/local/go/bin/go or
# /usr/lib/go/bin/go is used.
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ] && [ ! -x /usr/lib/go/bin/go ]; then
    want_pkg golang-go
fi

# The verification page (services/ingest/verify.html) is tested in a real browser: Debian's
# Chromium (recent enough for Ed25519 in WebCrypto) and the matching chromedriver, which
# Selenium is pointed at by path (tests/support/browser.py).
[ -x /usr/bin/chromium ] || want_pkg chromium
[ -x /usr/bin/chromedriver ] || want_pkg chromium-driver

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "${LEDGER_SKIP_APT:-0}" = 1 ]; then
        log "missing system packages: ${missing[*]} (LEDGER_SKIP_APT=1: not installing)"
    elif [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "missing system packages: ${missing[*]}; run this script as root (or with sudo)"
        exit 1
    else
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
else
    log "system packages present (postgresql-15, maven, java, $PYTHON, go, chromium)"
fi

GO=$(command -v go || true)
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; } || true
[ -n "$GO" ] || { [ -x /usr/lib/go/bin/go ] && GO=/usr/lib/go/bin/go; } || true
if [ -n "$GO" ]; then
    go_version=$("$GO" env GOVERSION 2>/dev/null || "$GO" version | awk '{print $3}')
    minor=$(printf '%s' "$go_version" | sed -E 's/^go1\.([0-9]+).*/\1/')
    if [ "${minor:-0}" -lt 21 ] 2>/dev/null; then
        # HOOK: Go older than 1.21 cannot switch toolchains by itself (e.g. Debian 12's
        # golang-go is 1.19). Install a newer Go (Debian backports: golang-1.2x-go, then put
        # /usr/lib/go-1.2x/bin first on PATH) and run this script again.
        log "WARNING: $go_version is too old to build Rekor (needs >= 1.21 to fetch 1.25.11)"
    else
        log "Go: $go_version (the stack selects GOTOOLCHAIN itself when needed)"
    fi
else
    log "WARNING: no Go toolchain; \`ledger stack install\` cannot build Rekor v1, Rekor v2 or the timestamp authority"
fi

# --- 2. the virtualenv ------------------------------------------------------------------------

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.ledger-install-stamp"
want=$(cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import ledger.cli' 2>/dev/null; then
    log "pip install -c constraints.txt -e '.[test,stack]'"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    constraints=()
    [ -f constraints.txt ] && constraints=(-c constraints.txt)
    "$VENV/bin/python" -m pip install -q "${constraints[@]}" -e '.[test,stack]'
    printf '%s\n' "$want" > "$stamp"
else
    log "virtualenv up to date"
fi

# --- 3. the local stack's programs ------------------------------------------------------------

if [ "${LEDGER_SKIP_STACK_INSTALL:-0}" != 1 ]; then
    "$VENV/bin/ledger" stack install
fi
log "done"
