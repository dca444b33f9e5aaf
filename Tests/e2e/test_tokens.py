#!/usr/bin/env python3
"""Identities whose private keys never leave a PKCS#11 token: a real SoftHSM2 token (keys generated on it with
pkcs11-tool, certificates signed by the test CA from CSRs made with the token keys), used through OpenSSL's
pkcs11 engine (libp11) by the proxy with 2 workers, against nginx requiring the client certificate; certificates
read from the token, staged ones taking over at notBefore. Faults: wrong PIN, missing module, pin-value in the
config, the token removed and put back while running (recovery), a slow token (a module that sleeps in C_Sign)
beside a file identity on one worker."""
import os, shutil, signal, socket, ssl, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import (Fixture, SubjectUpstream, concurrently, get as proxy_get, proxy_section, route, table, tear_down,  # noqa: E402
                     upstream_section)

ENV = {}
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
PIN = "84736251"
WRONG_PIN = "99887766"
TOKEN_OBJECT = "pkcs11:token=fusion;object=us-ec;type=private"
STAGE_IN = 20  # seconds from set-up until the second staged token certificate is valid


def missing_tools():
    missing = [n for n, p in (("softhsm2 (libsofthsm2.so)", MODULE), ("libengine-pkcs11-openssl", ENGINE)) if not os.path.exists(p)]
    missing += [t for t in ("softhsm2-util", "pkcs11-tool") if not shutil.which(t)]
    return missing


def token_uri(d, label, pin_file="pin", module=MODULE):
    return f"pkcs11:token=fusion;object={label};type=private?module-path={module}&pin-source=file:{d}/{pin_file}"


def make_tokens(d):
    """The SoftHSM2 token in `d`/tokens with its keys and certificates (see the module's doc), the CSRs' certificates
    and the PIN files; returns when the second staged certificate becomes valid (a Unix time)."""
    os.makedirs(f"{d}/tokens")
    harness.write_file(f"{d}/softhsm2.conf", f"directories.tokendir = {d}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = f"{d}/softhsm2.conf"  # the proxy and the tools find the token here
    # The openssl CLI makes the CSRs with the token keys through the same engine and module.
    harness.write_file(f"{d}/openssl.cnf", f"""openssl_conf = conf
[conf]
engines = engines
[engines]
pkcs11 = pkcs11
[pkcs11]
dynamic_path = {ENGINE}
MODULE_PATH = {MODULE}
PIN = {PIN}
init = 0
""")
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, cwd=d)
    run("softhsm2-util", "--init-token", "--free", "--label", "fusion", "--pin", PIN, "--so-pin", "12345678")
    for label, key_type, key_id in (("us-ec", "EC:prime256v1", "01"), ("us-rsa", "rsa:2048", "02")):
        run("pkcs11-tool", "--module", MODULE, "--token-label", "fusion", "--login", "--pin", PIN,
            "--keypairgen", "--key-type", key_type, "--label", label, "--id", key_id)
        subprocess.run(["openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine",
                        "-key", f"pkcs11:token=fusion;object={label};type=private",
                        "-subj", f"/O=mtls-proxy test/CN=fusion-{label}-hsm", "-out", f"{label}.csr"],
                       check=True, capture_output=True, cwd=d, env=dict(os.environ, OPENSSL_CONF=f"{d}/openssl.cnf"))
        harness.write_file(f"{d}/client.ext", "extendedKeyUsage=clientAuth\n")
        run("openssl", "x509", "-req", "-in", f"{label}.csr", "-CA", "pki/ca.pem", "-CAkey", "pki/ca.key",
            "-CAcreateserial", "-days", "90", "-sha256", "-extfile", "client.ext", "-out", f"{label}.pem")
    # Certificates on the token too: us-ec's beside its key, and two staged ones (the second valid from
    # STAGE_IN seconds after set-up, signed with `openssl ca` for its start date), each with its own token key.
    harness.write_file(f"{d}/ca.cnf", f"""[ca]
default_ca = test
[test]
database = {d}/ca-index.txt
new_certs_dir = {d}
certificate = {d}/pki/ca.pem
private_key = {d}/pki/ca.key
serial = {d}/ca-serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
O = optional
CN = supplied
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
""")
    harness.write_file(f"{d}/ca-index.txt", "")
    harness.write_file(f"{d}/ca-serial", "5001\n")
    stage_at = int(time.time()) + STAGE_IN
    for label, key_id, start in (("st-1", "11", int(time.time()) - 3600), ("st-2", "12", stage_at)):
        run("pkcs11-tool", "--module", MODULE, "--token-label", "fusion", "--login", "--pin", PIN,
            "--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", key_id)
        subprocess.run(["openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine",
                        "-key", f"pkcs11:token=fusion;object={label};type=private",
                        "-subj", f"/O=mtls-proxy test/CN=fusion-{label}-hsm", "-out", f"{label}.csr"],
                       check=True, capture_output=True, cwd=d, env=dict(os.environ, OPENSSL_CONF=f"{d}/openssl.cnf"))
        utc = lambda t: time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))
        run("openssl", "ca", "-batch", "-config", "ca.cnf", "-extensions", "client", "-notext",
            "-startdate", utc(start), "-enddate", utc(start + 90 * 86400), "-in", f"{label}.csr", "-out", f"{label}.pem")
    for label, key_id in (("us-ec", "01"), ("st-1", "11"), ("st-2", "12")):
        run("openssl", "x509", "-in", f"{label}.pem", "-outform", "DER", "-out", f"{label}.der")
        run("pkcs11-tool", "--module", MODULE, "--token-label", "fusion", "--login", "--pin", PIN,
            "--write-object", f"{label}.der", "--type", "cert", "--label", label, "--id", key_id)
    harness.write_file(f"{d}/pin", PIN + "\n", mode=0o600)
    harness.write_file(f"{d}/wrong.pin", WRONG_PIN + "\n", mode=0o600)
    return stage_at


def setUpModule():
    missing = missing_tools()
    if missing:
        raise unittest.SkipTest(f"not installed: {', '.join(missing)} (scripts/lib/deps.sh installs softhsm2, opensc, libengine-pkcs11-openssl)")
    with Fixture("mtls-proxy-tokens-", ports=("proxy", "admin", "mtls", "tls")) as fx:
        d, ports = fx.dir, fx.ports
        stage_at = make_tokens(d)
        fx.nginx(mtls="mtls", tls="tls")
        ports["tls13"] = fx.server(SubjectUpstream(fx.pki, minimum=ssl.TLSVersion.TLSv1_3)).port
        proxy = fx.proxy("proxy", f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 2
[admin]
listen = "127.0.0.1:{ports['admin']}"
[upstream]
ca_file = "pki/ca.pem"
max_idle_per_host = 0
[identities.hsm]
cert = "us-ec.pem"
key = "{token_uri(d, 'us-ec')}"
[identities.hsmrsa]
cert = "us-rsa.pem"
key = "{token_uri(d, 'us-rsa')}"

[identities.tokencert]
cert = "pkcs11:token=fusion;object=us-ec;type=cert"
key = "{token_uri(d, 'us-ec')}"
[[identities.staged.certificates]]
cert = "pkcs11:token=fusion;object=st-1;type=cert"
key = "{token_uri(d, 'st-1')}"
[[identities.staged.certificates]]
cert = "pkcs11:token=fusion;object=st-2;type=cert"
key = "{token_uri(d, 'st-2')}"

[[route]]
host = "api.mygreatbank.test"
identity = "hsm"
connect = "127.0.0.1:{ports['mtls']}"

[[route]]
host = "tokencert13.mygreatbank.test"
identity = "tokencert"
connect = "127.0.0.1:{ports['tls13']}"

[[route]]
host = "staged13.mygreatbank.test"
identity = "staged"
connect = "127.0.0.1:{ports['tls13']}"

[[route]]
host = "rsa.mygreatbank.test"
identity = "hsmrsa"
connect = "127.0.0.1:{ports['mtls']}"

[[route]]
host = "rsa13.mygreatbank.test"
identity = "hsmrsa"
connect = "127.0.0.1:{ports['tls13']}"

[[route]]
host = "ec13.mygreatbank.test"
identity = "hsm"
connect = "127.0.0.1:{ports['tls13']}"
""")
        ENV.update(ports=ports)
        # Before the switch: the first certificate is presented, and certs shows (and exports) the staged one.
        staged_views = [harness.run_cli("certs", "--config", f"{d}/proxy.conf", "staged", *extra, timeout=60)
                        for extra in (("--all",), ("--pem", "--staged"))]
        before_stage = (get("staged13.mygreatbank.test"), staged_views, time.time() < stage_at)
    ENV.update(fx.env(proxy=proxy, stage_at=stage_at, before_stage=before_stage))


def tearDownModule():
    tear_down(ENV)


def get(host, port=None):
    """(status, headers, body) of a GET http://HOST/ through the suite's proxy, or the one on `port`."""
    return proxy_get(port or ENV["ports"]["proxy"], host)


def own_proxy(test, name, body, workers=1, env=None, **upstream):
    """A proxy of `test`'s own (stopped when the test ends), `name`.conf: its [proxy] with `workers` (None: the
    default), [admin], [upstream] trusting the test CA with `upstream` settings, then `body` (identities and
    routes); `env` is added to its environment. Returns (its ports: proxy, admin; the process)."""
    own = ENV["fixture"].beside(test, ports=("proxy", "admin"))
    config = proxy_section(own.ports["proxy"], workers=workers, admin=own.ports["admin"]) + upstream_section(**upstream) + body
    return own.ports, own.proxy(name, config, port="proxy", env=env)


# A PKCS#11 module that is SoftHSM2 with a slow C_Sign: it forwards every call to the module named by
# SLOW_PKCS11_MODULE and sleeps SLOW_PKCS11_MS before each signature (a token that takes its time, like a network
# HSM or a smart card). The function list is PKCS#11 v2's: C_Sign is its 44th entry.
SLOW_MODULE_C = r"""
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
typedef unsigned long rv_t;
typedef struct { unsigned char major, minor; } version_t;
typedef struct { version_t version; void *f[68]; } function_list_t;
typedef rv_t (*sign_t)(unsigned long, unsigned char *, unsigned long, unsigned char *, unsigned long *);
static function_list_t slow;
static function_list_t *real;
static rv_t slow_sign(unsigned long s, unsigned char *data, unsigned long n, unsigned char *sig, unsigned long *len) {
    const char *ms = getenv("SLOW_PKCS11_MS");
    if (sig != NULL) usleep((ms ? atoi(ms) : 300) * 1000);
    return ((sign_t)real->f[43])(s, data, n, sig, len);
}
rv_t C_GetFunctionList(function_list_t **out) {
    void *h = dlopen(getenv("SLOW_PKCS11_MODULE"), RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) return 5;
    rv_t (*get)(function_list_t **) = (rv_t (*)(function_list_t **))dlsym(h, "C_GetFunctionList");
    if (get == NULL || get(&real) != 0) return 5;
    memcpy(&slow, real, sizeof slow);
    slow.f[43] = (void *)slow_sign;
    *out = &slow;
    return 0;
}
"""


def slow_module(d):
    """The slow module built in `d` with the system's C compiler, or None when there is none."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    harness.write_file(f"{d}/slow_pkcs11.c", SLOW_MODULE_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", f"{d}/slow_pkcs11.so", f"{d}/slow_pkcs11.c", "-ldl"], check=True)
    return f"{d}/slow_pkcs11.so"


def slow_token_proxy(test, name, sign_ms, impatient_timeout, extra=""):
    """A proxy of `test`'s own on one worker whose identity "slow" signs with the token's us-ec key through the slow
    module (`sign_ms` per signature), routing slow13 and impatient13 (connect_timeout `impatient_timeout`) to the
    TLS 1.3 upstream, and `extra` (more identities and routes). Skips the test when there is no C compiler to
    build the module. Returns (its ports: proxy, admin; the process)."""
    d, tls13 = ENV["dir"], ENV["ports"]["tls13"]
    module = slow_module(d)
    if module is None:
        test.skipTest("no C compiler (cc, gcc or clang) to build the slow PKCS#11 module")
    uri = f"pkcs11:token=fusion;object=us-ec;type=private?module-path={module}&pin-source=file:{d}/pin"
    config = (table("[identities.slow]", cert="us-ec.pem", key=uri) + extra
              + route("slow13.mygreatbank.test", identity="slow", connect=tls13)
              + route("impatient13.mygreatbank.test", identity="slow", connect=tls13, connect_timeout=impatient_timeout))
    return own_proxy(test, name, config, max_idle_per_host=0, env=dict(SLOW_PKCS11_MODULE=MODULE, SLOW_PKCS11_MS=str(sign_ms)))


def timed_get(host, port):
    start = time.monotonic()
    status = get(host, port)[0]
    return status, time.monotonic() - start


def check(config_text):
    d = tempfile.mkdtemp(prefix="mtls-proxy-tokens-check-")
    harness.write_file(f"{d}/proxy.conf", config_text)
    return harness.run_cli("check", "--config", f"{d}/proxy.conf", timeout=60)


class TokenKeys(unittest.TestCase):
    def test_ecdsa_token_key_is_presented_to_a_service_requiring_it(self):
        status, headers, body = get("api.mygreatbank.test")
        self.assertEqual(status, 200, body)
        self.assertIn("CN=fusion-us-ec-hsm", headers.get("x-client-subject", ""))
        self.assertEqual(headers.get("x-client-verify"), "SUCCESS")

    def test_rsa_token_key_signs_tls12_and_tls13_handshakes(self):
        status, headers, body = get("rsa.mygreatbank.test")  # nginx (Debian 12: TLS 1.2), PKCS#1 v1.5
        self.assertEqual(status, 200, body)
        self.assertIn("CN=fusion-us-rsa-hsm", headers.get("x-client-subject", ""))
        for host, cn in (("rsa13.mygreatbank.test", "fusion-us-rsa-hsm"), ("ec13.mygreatbank.test", "fusion-us-ec-hsm")):
            status, _, body = get(host)  # TLS 1.3 only: RSA-PSS (or ECDSA) signed on the token
            self.assertEqual(status, 200, body)
            self.assertEqual(body, f"TLSv1.3 organizationName=mtls-proxy test,commonName={cn}")

    def test_concurrent_handshakes_on_two_workers(self):
        hosts = ["api.mygreatbank.test", "rsa.mygreatbank.test", "rsa13.mygreatbank.test", "ec13.mygreatbank.test"] * 6
        self.assertEqual(concurrently(lambda host: get(host)[0], hosts), [200] * 24)

    def test_pins_command_completes_the_handshake_with_a_token_key(self):
        """`pins` connects the way the route does: with a token identity against servers that ask for the client
        certificate (TLS 1.2 nginx, TLS 1.3 Python), the token signs and the handshake completes."""
        for host in ("api.mygreatbank.test", "ec13.mygreatbank.test", "rsa13.mygreatbank.test"):
            r = harness.run_cli("pins", "--config", f"{ENV['dir']}/proxy.conf", f"https://{host}", timeout=60)
            text = r.stdout + r.stderr
            self.assertEqual(r.returncode, 0, text)
            self.assertIn("the route accepts this server", text)
            self.assertNotIn(PIN, text)

    def test_pin_is_never_logged(self):
        self.assertNotIn(PIN, harness.read(f"{ENV['dir']}/proxy.log"))

    def test_check_accepts_the_token_identity(self):
        r = harness.run_cli("check", "--config", f"{ENV['dir']}/proxy.conf", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn(PIN, r.stdout + r.stderr)

    def test_csr_from_the_token_key_renews_without_the_key_leaving_it(self):
        d = ENV["dir"]
        out = tempfile.mkdtemp(prefix="mtls-proxy-tokens-csr-")
        r = harness.run_cli("csr", "--config", f"{d}/proxy.conf", "hsm", "--out", out, "--key-uri", token_uri(d, "us-ec"), timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn(PIN, r.stdout + r.stderr)
        files = os.listdir(out)
        self.assertEqual(len(files), 1, files)  # the request only: no key file
        self.assertTrue(files[0].endswith(".csr"))
        csr = os.path.join(out, files[0])
        verify = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-verify", "-subject"], capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stderr)
        self.assertIn("CN = fusion-us-ec-hsm", verify.stdout)
        pub = lambda *a: subprocess.run(["openssl", *a, "-noout", "-pubkey"], capture_output=True, text=True, check=True).stdout
        self.assertEqual(pub("req", "-in", csr), pub("x509", "-in", f"{d}/us-ec.pem"))
        self.assertIn('key = "pkcs11:token=fusion;object=us-ec', r.stdout)

    def test_reload_loads_the_token_keys_again(self):
        d = ENV["dir"]
        before = harness.read(f"{d}/proxy.log").count("reloaded (")
        ENV["proxy"].send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: harness.read(f"{d}/proxy.log").count("reloaded (") > before, timeout=10, step=0.2),
                        "no reload after SIGHUP")
        for host in ("ec13.mygreatbank.test", "rsa13.mygreatbank.test", "api.mygreatbank.test"):
            status, _, body = get(host)
            self.assertEqual(status, 200, body)
        self.assertNotIn(PIN, harness.read(f"{d}/proxy.log"))

    def test_reload_with_a_wrong_pin_is_refused_and_the_running_keys_keep_signing(self):
        """The PIN file now holds a wrong PIN: the reload fails like `check` does (naming the identity, the token
        refusing the PIN, never the PIN) and the previous config serves on, its key still signing."""
        d, ports = ENV["dir"], ENV["ports"]
        harness.write_file(f"{d}/reload.pin", PIN + "\n", mode=0o600)
        config = f"""
[identities.pinned]
cert = "us-ec.pem"
key = "{token_uri(d, 'us-ec', pin_file='reload.pin')}"
[[route]]
host = "ec13.mygreatbank.test"
identity = "pinned"
connect = "127.0.0.1:{ports['tls13']}"
"""
        log = f"{d}/reload.log"
        own, proxy = own_proxy(self, "reload", config, max_idle_per_host=0)
        self.assertEqual(get("ec13.mygreatbank.test", own["proxy"])[0], 200)
        harness.write_file(f"{d}/reload.pin", WRONG_PIN + "\n", mode=0o600)
        proxy.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: "reload (" in harness.read(log) or "reloaded (" in harness.read(log),
                                           timeout=15, step=0.2), "no reload after SIGHUP")
        text = harness.read(log)
        self.assertNotIn("reloaded (", text, "a reload with a wrong PIN was taken")
        self.assertIn("identities.pinned", text)
        self.assertIn("refused the PIN", text)
        self.assertEqual(get("ec13.mygreatbank.test", own["proxy"])[0], 200)  # the previous config serves on
        _, metrics = harness.http_get(own["admin"], "/metrics")
        self.assertEqual(harness.metric(metrics, "mtls_proxy_config_last_reload_success"), 0.0)
        self.assertNotIn(WRONG_PIN, harness.read(log) + metrics)
        self.assertNotIn(PIN, harness.read(log) + metrics)
        # The right PIN back: the reload is taken (the token is asked with it) and the key signs.
        harness.write_file(f"{d}/reload.pin", PIN + "\n", mode=0o600)
        proxy.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(lambda: "reloaded (" in harness.read(log), timeout=15, step=0.2),
                        "the reload with the right PIN was not taken")
        self.assertEqual(get("ec13.mygreatbank.test", own["proxy"])[0], 200)
        self.assertNotIn(PIN, harness.read(log))

    def test_token_removed_while_running_is_named_others_keep_working_and_it_recovers(self):
        d, ports = ENV["dir"], ENV["ports"]
        config = f"""
[identities.hsm]
cert = "us-ec.pem"
key = "{token_uri(d, 'us-ec')}"
[identities.filed]
cert = "pki/fusion-us.pem"
key = "pki/fusion-us.key"
[[route]]
host = "ec13.mygreatbank.test"
identity = "hsm"
connect = "127.0.0.1:{ports['tls13']}"
[[route]]
host = "file13.mygreatbank.test"
identity = "filed"
connect = "127.0.0.1:{ports['tls13']}"
"""
        token_dir = os.path.join(d, "tokens", os.listdir(f"{d}/tokens")[0])
        own, _ = own_proxy(self, "removal", config, workers=2, max_idle_per_host=0)
        try:
            self.assertEqual(get("ec13.mygreatbank.test", own["proxy"])[0], 200)
            os.rename(token_dir, f"{d}/token-away")
            status, headers, body = get("ec13.mygreatbank.test", own["proxy"])
            self.assertEqual(status, 502, body)
            ps = headers.get("proxy-status", "")
            self.assertIn("identity hsm", ps)
            self.assertIn("pkcs11:token=fusion;object=us-ec;type=private", ps)
            self.assertIn("error=proxy_configuration_error", ps)
            self.assertNotIn(PIN, body)
            # Another identity keeps working meanwhile.
            status, _, body = get("file13.mygreatbank.test", own["proxy"])
            self.assertEqual(status, 200, body)
            self.assertIn("fusion-us", body)
            _, metrics = harness.http_get(own["admin"], "/metrics")
            self.assertEqual(harness.metric(metrics, "mtls_proxy_upstream_connections_total", result="failed", reason="token_signing"), 1.0)
            available_while_away = harness.metric(metrics, "mtls_proxy_token_key_available", key=TOKEN_OBJECT)
            self.assertNotIn(PIN, metrics)
            _, ready = harness.http_get(own["admin"], "/readyz?verbose")
            self.assertIn(f"key={TOKEN_OBJECT} token=unavailable", ready)
            _, page = harness.http_get(own["admin"], "/")
            self.assertIn('data-token="unavailable"', page)
            self.assertNotIn(PIN, page)
            # Within the back-off the token is not asked again: the answer is immediate and says so.
            status, headers, body = get("ec13.mygreatbank.test", own["proxy"])
            self.assertEqual(status, 502, body)
            self.assertIn("the token is unavailable", headers.get("proxy-status", ""))
            # The token comes back: the identity recovers by itself (no restart, no reload), within the back-off.
            os.rename(f"{d}/token-away", token_dir)
            recovered = harness.wait_until(lambda: get("ec13.mygreatbank.test", own["proxy"])[0] == 200, timeout=20, step=0.5)
            self.assertTrue(recovered, "the identity did not recover after the token came back")
            status, _, body = get("ec13.mygreatbank.test", own["proxy"])
            self.assertEqual((status, body), (200, "TLSv1.3 organizationName=mtls-proxy test,commonName=fusion-us-ec-hsm"))
            _, metrics = harness.http_get(own["admin"], "/metrics")
            self.assertEqual(available_while_away, 0.0, "mtls_proxy_token_key_available while the token was away")
            self.assertEqual(harness.metric(metrics, "mtls_proxy_token_key_available", key=TOKEN_OBJECT), 1.0)
            _, ready = harness.http_get(own["admin"], "/readyz?verbose")
            self.assertIn(f"key={TOKEN_OBJECT} token=available", ready)
            time.sleep(1.1)  # the status page is rendered at most once a second
            _, page = harness.http_get(own["admin"], "/")
            self.assertIn('data-token="available"', page)
            self.assertNotIn('data-token="unavailable"', page)
            # The file identity never stopped working.
            self.assertEqual(get("file13.mygreatbank.test", own["proxy"])[0], 200)
            self.assertNotIn(PIN, harness.read(f"{d}/removal.log"))
        finally:
            if os.path.exists(f"{d}/token-away"):
                os.rename(f"{d}/token-away", token_dir)

    def test_readyz_status_page_and_metrics_show_the_token_never_the_pin(self):
        d, ports = ENV["dir"], ENV["ports"]
        env_uri = f"pkcs11:token=fusion;object=us-rsa;type=private?module-path={MODULE}&pin-source=env:HSM_STATUS_PIN"
        config = f"""
[identities.hsm]
cert = "us-ec.pem"
key = "{token_uri(d, 'us-ec')}"
[identities.hsmenv]
cert = "us-rsa.pem"
key = "{env_uri}"
[[route]]
host = "ec13.mygreatbank.test"
identity = "hsm"
connect = "127.0.0.1:{ports['tls13']}"
[[route]]
host = "rsa13.mygreatbank.test"
identity = "hsmenv"
connect = "127.0.0.1:{ports['tls13']}"
"""
        own, _ = own_proxy(self, "status", config, workers=None, env={"HSM_STATUS_PIN": PIN})
        for host in ("ec13.mygreatbank.test", "rsa13.mygreatbank.test"):
            self.assertEqual(get(host, own["proxy"])[0], 200)
        status, ready = harness.http_get(own["admin"], "/readyz?verbose")
        self.assertEqual(status, 200, ready)
        lines = {l.split()[0]: l for l in ready.splitlines() if l.startswith("identity=")}
        self.assertIn(f"key={TOKEN_OBJECT} token=available", lines["identity=hsm"])
        self.assertIn("key=pkcs11:token=fusion;object=us-rsa;type=private token=available", lines["identity=hsmenv"])
        _, page = harness.http_get(own["admin"], "/")
        self.assertIn("pkcs11:token=fusion;object=us-ec;type=private", page)
        self.assertIn("pkcs11:token=fusion;object=us-rsa;type=private", page)
        self.assertEqual(page.count('data-token="available"'), 2)
        _, metrics = harness.http_get(own["admin"], "/metrics")
        for text in (ready, page, metrics, harness.read(f"{d}/status.log")):
            self.assertNotIn(PIN, text)  # neither the pin-source file's content nor the variable's value
            self.assertNotIn("pin-source", text)
            self.assertNotIn("HSM_STATUS_PIN", text)

    def test_certificate_read_from_the_token_is_presented_shown_and_exported(self):
        d = ENV["dir"]
        status, _, body = get("tokencert13.mygreatbank.test")
        self.assertEqual((status, body), (200, "TLSv1.3 organizationName=mtls-proxy test,commonName=fusion-us-ec-hsm"))
        r = harness.run_cli("certs", "--config", f"{d}/proxy.conf", "tokencert", "--pem", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.strip(), harness.read(f"{d}/us-ec.pem").strip())  # exported exactly like a file's
        r = harness.run_cli("check", "--config", f"{d}/proxy.conf", "--wide", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("pkcs11:token=fusion;object=us-ec;type=cert", r.stdout)
        self.assertIn("CN=fusion-us-ec-hsm", r.stdout)
        self.assertNotIn(PIN, r.stdout + r.stderr)
        r = harness.run_cli("explain", "--config", f"{d}/proxy.conf", "http://tokencert13.mygreatbank.test/", timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"certificate .*CN=fusion-us-ec-hsm.*pkcs11:token=fusion;object=us-ec;type=cert")

    def test_staged_token_certificate_with_its_own_token_key_takes_over_at_not_before(self):
        d = ENV["dir"]
        (status, _, body), (summary, pem), before = ENV["before_stage"]
        self.assertTrue(before, "set-up took longer than STAGE_IN: the first request came after the switch")
        self.assertEqual((status, body), (200, "TLSv1.3 organizationName=mtls-proxy test,commonName=fusion-st-1-hsm"))
        self.assertEqual(summary.returncode, 0, summary.stdout + summary.stderr)
        self.assertRegex(summary.stdout, r"#2 staged, takes over .*CN=fusion-st-2-hsm")
        self.assertIn("pkcs11:token=fusion;object=st-2;type=cert", summary.stdout)
        self.assertEqual(pem.stdout.strip(), harness.read(f"{d}/st-2.pem").strip())
        time.sleep(max(0, ENV["stage_at"] + 1.5 - time.time()))
        status, _, body = get("staged13.mygreatbank.test")
        self.assertEqual((status, body), (200, "TLSv1.3 organizationName=mtls-proxy test,commonName=fusion-st-2-hsm"))

    def test_a_certificate_uri_of_another_type_or_missing_from_the_token_fails_check(self):
        d = ENV["dir"]
        r = check(f'[identities.hsm]\ncert = "pkcs11:token=fusion;object=us-ec;type=private"\nkey = "{token_uri(d, "us-ec")}"\n'
                  '[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n')
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("identities.hsm.cert", r.stdout + r.stderr)
        self.assertIn("type=cert", r.stdout + r.stderr)
        r = check(f'[identities.hsm]\ncert = "pkcs11:token=fusion;object=nothing-here;type=cert"\nkey = "{token_uri(d, "us-ec")}"\n'
                  '[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n')
        text = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, text)
        self.assertIn("identities.hsm", text)
        self.assertIn("no such certificate on the token", text)
        self.assertIn("object=nothing-here", text)
        self.assertNotIn(PIN, text)

    def test_slow_signing_does_not_stall_other_connections_on_the_same_worker(self):
        """One worker; a token that takes SIGN_MS per signature. While a handshake of the token identity waits for
        its signature, a request of a file identity on a new connection (a full handshake of its own) is answered
        in about the time it takes on its own, not after the token's signature."""
        sign_ms = 600
        own, proxy = slow_token_proxy(self, "slow", sign_ms, "200ms",
                                      extra=table("[identities.filed]", cert="pki/fusion-us.pem", key="pki/fusion-us.key")
                                      + route("file13.mygreatbank.test", identity="filed", connect=ENV["ports"]["tls13"]))
        open_fds = lambda: len(os.listdir(f"/proc/{proxy.pid}/fd"))
        alone = min(timed_get("file13.mygreatbank.test", own["proxy"])[1] for _ in range(3))
        status, slow_alone = timed_get("slow13.mygreatbank.test", own["proxy"])
        self.assertEqual(status, 200)
        self.assertGreater(slow_alone, sign_ms / 1000)  # the module really is slow
        results = {}
        t = threading.Thread(target=lambda: results.update(slow=timed_get("slow13.mygreatbank.test", own["proxy"])))
        t.start()
        time.sleep(0.15)  # the token handshake is waiting for its signature now
        status, during = timed_get("file13.mygreatbank.test", own["proxy"])
        t.join()
        self.assertEqual(status, 200)
        self.assertEqual(results["slow"][0], 200)
        print(f"\n  file identity alone {alone * 1000:.0f} ms, during a {sign_ms} ms token signature "
              f"{during * 1000:.0f} ms; token request {results['slow'][1] * 1000:.0f} ms", file=sys.stderr)
        self.assertLess(during, alone + 0.25, "the file identity's request waited for the token's signature")
        # A connection given up while its signature is being made (connect_timeout, or the client leaving):
        # the paused handshake is dropped, the signature lands nowhere, and the next ones work.
        fds_before = open_fds()
        for _ in range(3):
            status, headers, _ = get("impatient13.mygreatbank.test", own["proxy"])
            self.assertEqual(status, 504, headers)
        s = socket.create_connection(("127.0.0.1", own["proxy"]), timeout=5)
        s.sendall(b"GET http://slow13.mygreatbank.test/ HTTP/1.1\r\nHost: slow13.mygreatbank.test\r\n\r\n")
        time.sleep(0.1)
        s.close()
        time.sleep(sign_ms / 1000 + 0.2)
        self.assertEqual(get("slow13.mygreatbank.test", own["proxy"])[0], 200)
        self.assertEqual(get("file13.mygreatbank.test", own["proxy"])[0], 200)
        _, metrics = harness.http_get(own["admin"], "/metrics")
        self.assertEqual(harness.metric(metrics, "mtls_proxy_token_key_available", identity="slow"), 1.0)
        self.assertTrue(harness.wait_until(lambda: open_fds() <= fds_before, timeout=5, step=0.2),
                        f"{open_fds()} fds open, {fds_before} before the abandoned signatures")

    def test_signatures_of_handshakes_given_up_are_not_made_ahead_of_new_ones(self):
        """A slow token (SIGN_MS a signature, two signing threads): 12 handshakes given up at their connect
        timeout while queued must not keep the token busy for them; a new request after them waits for at most
        the signatures already under way, not for 12 more."""
        sign_ms = 500
        own, _ = slow_token_proxy(self, "queue", sign_ms, "150ms")
        self.assertEqual(get("slow13.mygreatbank.test", own["proxy"])[0], 200)
        statuses = concurrently(lambda _: get("impatient13.mygreatbank.test", own["proxy"])[0], range(12))
        self.assertEqual(statuses, [504] * 12)
        status, took = timed_get("slow13.mygreatbank.test", own["proxy"])
        self.assertEqual(status, 200)
        print(f"\n  a new token request after 12 given-up handshakes: {took * 1000:.0f} ms", file=sys.stderr)
        self.assertLess(took, 3 * sign_ms / 1000, "the new handshake waited for the given-up handshakes' signatures")

    def test_wrong_pin_fails_check_naming_identity_and_uri_without_the_pin(self):
        d = ENV["dir"]
        r = check(f'[identities.hsm]\ncert = "{d}/us-ec.pem"\nkey = "{token_uri(d, "us-ec", pin_file="wrong.pin")}"\n'
                  '[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n')
        text = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, text)
        self.assertIn("identities.hsm", text)
        self.assertIn("pkcs11:token=fusion;object=us-ec", text)
        self.assertIn("refused the PIN", text)
        self.assertNotIn(WRONG_PIN, text)
        self.assertNotIn(PIN, text)

    def test_missing_module_fails_check_clearly(self):
        d = ENV["dir"]
        r = check(f'[identities.hsm]\ncert = "{d}/us-ec.pem"\nkey = "{token_uri(d, "us-ec", module="/nonexistent/libpkcs11-missing.so")}"\n'
                  '[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n')
        text = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, text)
        self.assertIn("identities.hsm", text)
        self.assertIn("cannot read the PKCS#11 module /nonexistent/libpkcs11-missing.so", text)

    def test_a_library_that_is_not_pkcs11_fails_check_clearly(self):
        d = ENV["dir"]
        libz = next((p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1") if os.path.exists(p)), None)
        if libz is None:
            self.skipTest("no libz.so.1 to stand in for a library that is not PKCS#11")
        r = check(f'[identities.hsm]\ncert = "{d}/us-ec.pem"\nkey = "{token_uri(d, "us-ec", module=libz)}"\n'
                  '[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n')
        text = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, text)
        self.assertIn(f"cannot load the PKCS#11 module {libz}", text)

    def test_pin_from_the_environment(self):
        d = ENV["dir"]
        uri = f"pkcs11:token=fusion;object=us-ec;type=private?module-path={MODULE}&pin-source=env:HSM_TEST_PIN"
        config = f'[identities.hsm]\ncert = "{d}/us-ec.pem"\nkey = "{uri}"\n[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n'
        r = check(config)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("HSM_TEST_PIN is not set", r.stdout + r.stderr)
        cd = tempfile.mkdtemp(prefix="mtls-proxy-tokens-check-")
        harness.write_file(f"{cd}/proxy.conf", config)
        r = harness.run_cli("check", "--config", f"{cd}/proxy.conf", timeout=60, env=dict(os.environ, HSM_TEST_PIN=PIN))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("CN=fusion-us-ec-hsm", r.stdout)
        self.assertNotIn(PIN, r.stdout + r.stderr)

    def test_pin_value_in_the_config_is_refused(self):
        d = ENV["dir"]
        r = check(f'[identities.hsm]\ncert = "{d}/us-ec.pem"\nkey = "pkcs11:token=fusion;object=us-ec;type=private;pin-value={PIN}"\n'
                  '[[route]]\nhost = "api.mygreatbank.test"\nidentity = "hsm"\n')
        text = r.stdout + r.stderr
        self.assertNotEqual(r.returncode, 0, text)
        self.assertIn("pin-value", text)
        self.assertIn("identities.hsm.key", text)


if __name__ == "__main__":
    harness.run_suite()
