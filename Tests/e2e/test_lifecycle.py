#!/usr/bin/env python3
"""Certificate lifecycle: a staged certificate takes over at its notBefore without a restart, an identity with
no valid certificate answers 502, `check` shows expiry with documented exit codes, `certs --pem` exports what
to upload, and keys come encrypted or in PKCS#12 bundles. Certificates with past, present and future validity
are made now with openssl; nothing fakes the clock."""
import os, re, shutil, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, certificates, identity, proxy_section, route, table, tear_down, upstream_section  # noqa: E402
import requests  # noqa: E402

ENV = {}
SWITCH_IN = 25  # seconds from set-up until the staged certificate becomes valid (the suite's other tests, run
#                 first under AddressSanitizer on a busy machine, took more than 8)


def pki(*commands):
    harness.pki_shell(*commands, cwd=ENV["pki"])


def setUpModule():
    fx = Fixture("mtls-proxy-lifecycle-", ports=("proxy", "up"))
    proxy_port, up = fx.ports["proxy"], fx.ports["up"]
    ENV.update(fx.env(proxy_port=proxy_port, url=f"http://127.0.0.1:{proxy_port}"))
    day = 86400
    fx.dated_certificates(("us-next", "fusion-us-next", SWITCH_IN, 400 * day), ("us-old", "fusion-us-old", -400 * day, -day),
                          ("eu-short", "fusion-eu-short", -day, 5 * day), ("eu-long", "fusion-eu-long", -3600, 300 * day))
    # An encrypted key, and a PKCS#12 bundle, both with passwords kept outside the config.
    pki(f"openssl pkey -in fusion-eu.key -aes256 -passout pass:pem-secret -out fusion-eu-encrypted.key",
        f"echo pem-secret > pem-password.txt",
        f"openssl pkcs12 -export -in fusion-us.pem -inkey fusion-us.key -certfile ca.pem -passout pass:p12-secret -out fusion-us.p12",
        f"echo p12-secret > p12-password.txt")
    with fx:
        fx.python_upstream("up", ca="ca", require=True)
        config = ("\n" + proxy_section(proxy_port, workers=2) + upstream_section()
                  # Staged: this year's certificate now, next year's from its notBefore a few seconds ahead.
                  + certificates("us", "pki/us-next", "pki/fusion-us")
                  + identity("expired", "pki/us-old")
                  + table("[identities.oldest]", prefer="oldest") + certificates("oldest", "pki/eu-long", "pki/eu-short")
                  + table("[identities.encrypted]", cert="pki/fusion-eu.pem", key="pki/fusion-eu-encrypted.key",
                          key_password_file="pki/pem-password.txt")
                  + table("[identities.bundle]", p12="pki/fusion-us.p12", p12_password_env="TEST_P12_PASSWORD")
                  + "".join(route(f"{host}.mygreatbank.test", identity=name, connect=up)
                            for host, name in [("api", "us"), ("expired", "expired"), ("oldest", "oldest"),
                                               ("encrypted", "encrypted"), ("bundle", "bundle")]))
        fx.write("proxy.conf", config)
        os.environ["TEST_P12_PASSWORD"] = "p12-secret"
        ENV["started"] = time.time()
        ENV["proxy"] = fx.proxy("proxy")


def tearDownModule():
    tear_down(ENV)


def subject(host, path="/whoami"):
    r = requests.get(f"http://{host}{path}", proxies={"http": ENV["url"]}, timeout=10)
    return r.status_code, r.headers.get("X-Client-Subject"), r


def cli(*args, config=None):
    return harness.run_cli(*args, "--config", config or f"{ENV['dir']}/proxy.conf", timeout=30)


def write_config(name, text):
    return harness.write_file(f"{ENV['dir']}/{name}", text)


class StagedRotation(unittest.TestCase):
    def test_next_certificate_takes_over_at_its_not_before_without_restart(self):
        status, cn, _ = subject("api.mygreatbank.test")
        self.assertEqual((status, cn), (200, "fusion-us"))
        # Keep a pooled connection warm with the old certificate until the boundary.
        s = requests.Session()
        s.get("http://api.mygreatbank.test/whoami", proxies={"http": ENV["url"]}, timeout=10)
        wait = ENV["started"] + SWITCH_IN + 1.5 - time.time()
        if wait > 0:
            time.sleep(wait)
        r = s.get("http://api.mygreatbank.test/whoami", proxies={"http": ENV["url"]}, timeout=10)
        self.assertEqual(r.headers["X-Client-Subject"], "fusion-us-next")
        self.assertEqual(subject("api.mygreatbank.test")[1], "fusion-us-next")
        # The switch is logged a moment after it happens: poll for the line rather than sleep a fixed time.
        logged = harness.wait_until(lambda: "identity us: now presents serial" in harness.read(f"{ENV['dir']}/proxy.log"), 5, 0.1)
        self.assertTrue(logged, harness.read(f"{ENV['dir']}/proxy.log")[-2000:])

    def test_prefer_oldest_keeps_the_older_valid_certificate(self):
        self.assertEqual(subject("oldest.mygreatbank.test")[1], "fusion-eu-short")

    def test_identity_without_a_valid_certificate_answers_502(self):
        status, _, r = subject("expired.mygreatbank.test")
        self.assertEqual(status, 502)
        self.assertIn("error=proxy_configuration_error", r.headers["Proxy-Status"])
        self.assertIn("identity expired has no currently valid certificate", r.headers["Proxy-Status"])
        self.assertIn("expired at", r.text)

    def test_encrypted_pem_key_with_password_file(self):
        self.assertEqual(subject("encrypted.mygreatbank.test")[:2], (200, "fusion-eu"))

    def test_pkcs12_bundle_with_password_from_the_environment(self):
        self.assertEqual(subject("bundle.mygreatbank.test")[:2], (200, "fusion-us"))


class CheckCommand(unittest.TestCase):
    def test_table_and_exit_code_3_when_an_identity_has_no_valid_certificate(self):
        r = cli("check", "--wide")
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        for column in ["IDENTITY", "STATE", "NOT BEFORE", "NOT AFTER", "DAYS LEFT", "SERIAL", "SUBJECT", "ISSUER", "SHA-256"]:
            self.assertIn(column, r.stdout)
        self.assertIn("expired: NO VALID CERTIFICATE", r.stdout)
        self.assertRegex(r.stdout, r"oldest\s+#2\s+active")

    def test_exit_code_2_for_an_expiring_certificate_without_successor(self):
        text = harness.read(f"{ENV['dir']}/proxy.conf")
        text = text.split("[identities.expired]")[0]  # keep only us (staged, healthy)
        text += '[identities.short]\ncert = "pki/eu-short.pem"\nkey = "pki/eu-short.key"\n'
        path = write_config("short.conf", text.replace('listen = "127.0.0.1', 'listen = "127.0.0.2'))
        r = cli("check", config=path)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("short: WARNING", r.stdout)
        self.assertIn("no successor is staged", r.stdout)
        self.assertEqual(cli("check", "--warn-days", "3", config=path).returncode, 0)

    def test_staged_successor_is_shown_with_its_start(self):
        if time.time() > ENV["started"] + SWITCH_IN - 1:
            self.skipTest("the staged certificate is already active")
        r = cli("check")
        self.assertRegex(r.stdout, r"us: presents #2 .*\n\s+#1 takes over at \d{4}-\d\d-\d\d")
        self.assertRegex(cli("check", "--wide").stdout, r"us: presents #2 .*; #1 takes over at \d{4}-\d\d-\d\d")

    def test_group_readable_key_is_warned_about(self):
        os.chmod(f"{ENV['pki']}/fusion-eu.pem", 0o644)
        os.chmod(f"{ENV['pki']}/fusion-eu-encrypted.key", 0o644)
        try:
            r = cli("check")
        finally:
            os.chmod(f"{ENV['pki']}/fusion-eu-encrypted.key", 0o600)
        self.assertIn("fusion-eu-encrypted.key is readable by everyone (mode 644); chmod 600 it", r.stdout)


class CertsCommand(unittest.TestCase):
    def test_pem_is_the_active_certificate_chain_and_never_a_key(self):
        r = cli("certs", "encrypted", "--pem")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, harness.read(f"{ENV['pki']}/fusion-eu.pem"))
        self.assertNotIn("PRIVATE KEY", r.stdout)

    def test_all_exports_every_staged_certificate(self):
        r = cli("certs", "oldest", "--pem", "--all")
        self.assertEqual(r.stdout.count("BEGIN CERTIFICATE"), 2)
        self.assertEqual(r.stdout, harness.read(f"{ENV['pki']}/eu-long.pem") + harness.read(f"{ENV['pki']}/eu-short.pem"))

    def test_pem_of_an_identity_without_a_valid_certificate_fails(self):
        r = cli("certs", "expired", "--pem")
        self.assertEqual(r.returncode, 3)
        self.assertIn("no currently valid certificate", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_summary(self):
        r = cli("certs", "oldest")
        self.assertIn("#2 active  CN=fusion-eu-short", r.stdout)
        self.assertIn("sha256 ", r.stdout)

    def test_unknown_identity(self):
        r = cli("certs", "nope", "--pem")
        self.assertEqual(r.returncode, 1)
        self.assertIn('no identity "nope"', r.stderr)


class KeyErrors(unittest.TestCase):
    def test_wrong_and_missing_passwords_are_named(self):
        base = harness.read(f"{ENV['dir']}/proxy.conf")
        wrong = write_config("wrong.conf", base.replace('key_password_file = "pki/pem-password.txt"', 'key_password_file = "pki/p12-password.txt"'))
        r = cli("check", config=wrong)
        self.assertEqual(r.returncode, 1)
        self.assertIn("identities.encrypted.key", r.stderr)
        self.assertIn("wrong password", r.stderr)
        missing = write_config("nopass.conf", base.replace('key_password_file = "pki/pem-password.txt"\n', ""))
        r = cli("check", config=missing)
        self.assertIn("the key is encrypted and no password was given", r.stderr)
        env_missing = subprocess.run([harness.proxy_binary(), "check", "--config", f"{ENV['dir']}/proxy.conf"],
                                     capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "TEST_P12_PASSWORD"})
        self.assertEqual(env_missing.returncode, 1)
        self.assertIn("TEST_P12_PASSWORD is not set", env_missing.stderr)


if __name__ == "__main__":
    harness.run_suite()
