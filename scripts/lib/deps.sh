# Installs what the build, the demo and the tests need, when it is missing (Debian; run as root).
# Usage: source scripts/lib/deps.sh; ensure_deps [extra Debian packages...]

ensure_deps() {
    local wanted=(libevent-dev libssl-dev pkg-config openssl ca-certificates nginx curl python3 "$@")
    local missing=()
    local pkg
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    for pkg in "${wanted[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        # Keep package scripts from starting services (nginx would try to take port 80). A policy-rc.d that is
        # already there (Debian container images ship one) is kept and put back as it was.
        local saved=""
        if [ -e /usr/sbin/policy-rc.d ]; then
            saved=$(mktemp)
            $sudo cp -p /usr/sbin/policy-rc.d "$saved"
        fi
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        if [ -n "$saved" ]; then
            $sudo cp -p "$saved" /usr/sbin/policy-rc.d
            $sudo rm -f "$saved"
        else
            $sudo rm -f /usr/sbin/policy-rc.d
        fi
    fi
    if ! python3 -c 'import requests' 2>/dev/null; then
        echo "installing: python requests"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-requests >/dev/null 2>&1 || true
        python3 -c 'import requests' 2>/dev/null || python3 -m pip install -q requests
    fi
    if ! python3 -c 'import yaml' 2>/dev/null; then
        echo "installing: python yaml"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-yaml >/dev/null 2>&1 || true
        python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
    fi
    # The iCalendar parser that checks `mtls-proxy certs --ics` (the icalendar package, as on PyPI).
    if ! python3 -c 'import icalendar' 2>/dev/null; then
        echo "installing: python icalendar"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-icalendar >/dev/null 2>&1 || true
        python3 -c 'import icalendar' 2>/dev/null || python3 -m pip install -q icalendar 2>/dev/null \
            || python3 -m pip install -q --break-system-packages icalendar || true
    fi
    command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain first" >&2; return 1; }
}

# The clients of the client matrix (Tests/e2e/test_clients.py), best effort: a client that cannot be installed is
# skipped by the suite, by name. Debian: wget, git, Node's undici (with busboy; Debian's node is installed only when
# there is no node at all), Go (about half a minute the first time). PyPI (or Debian): httpx, aiohttp (about 20 s). A JDK is not
# installed (large); Java is tested when one is present.
ensure_client_deps() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local wanted=(wget git node-undici node-busboy golang-go)
    command -v node >/dev/null || wanted+=(nodejs)
    local missing=() pkg
    for pkg in "${wanted[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing test clients: ${missing[*]}"
        $sudo apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || echo "could not install all of: ${missing[*]} (the client matrix skips what is missing)"
    fi
    local py=()
    python3 -c 'import httpx' 2>/dev/null || py+=(httpx)
    python3 -c 'import aiohttp' 2>/dev/null || py+=(aiohttp)
    # pip first: it fails at once where Debian manages the interpreter (PEP 668), and Debian's packages would not
    # reach an interpreter of another origin.
    for pkg in "${py[@]+"${py[@]}"}"; do
        echo "installing python $pkg"
        python3 -m pip install -q "$pkg" >/dev/null 2>&1 \
            || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "python3-$pkg" >/dev/null 2>&1 || true
        python3 -c "import $pkg" 2>/dev/null || echo "could not install python $pkg (the client matrix skips it)"
    done
    return 0
}
