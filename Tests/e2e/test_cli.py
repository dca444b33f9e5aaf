#!/usr/bin/env python3
"""The command line: `check` on good and broken configs, and what it says about each mistake."""
import os, shutil, subprocess, sys, tempfile, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ENV = {}


def setUpModule():
    ENV["dir"] = harness.folder_with_pki("mtls-proxy-cli-")


def tearDownModule():
    shutil.rmtree(ENV["dir"], ignore_errors=True)


def write_config(name, text):
    return harness.write_file(f"{ENV['dir']}/{name}", text)


def run(*args):
    return harness.run_cli(*args, timeout=30)


GOOD = harness.US_API_CONFIG


class Check(unittest.TestCase):
    def test_good_config_prints_each_identity(self):
        r = run("check", "--config", write_config("good.conf", GOOD))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"us\s+#1\s+active\s+")
        self.assertIn("  CN=fusion-us,O=mtls-proxy test  ", r.stdout)
        self.assertIn("  CN=mtls-proxy test CA,O=mtls-proxy test  ", r.stdout)
        self.assertRegex(r.stdout, r"us: presents #1 \(serial [0-9A-F]+\), 36[45] days left")
        fingerprint = subprocess.run(["openssl", "x509", "-in", f"{ENV['dir']}/pki/fusion-us.pem", "-noout", "-fingerprint", "-sha256"],
                                     capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        self.assertIn(fingerprint, r.stdout)

    def test_key_that_does_not_belong_to_the_certificate(self):
        r = run("check", "--config", write_config("mismatch.conf", GOOD.replace("fusion-us.key", "fusion-eu.key")))
        self.assertEqual(r.returncode, 1)
        self.assertIn("mismatch.conf: identities.us: the private key in", r.stderr)
        self.assertIn("does not belong to the certificate", r.stderr)

    def test_missing_certificate_file(self):
        r = run("check", "--config", write_config("missing.conf", GOOD.replace("fusion-us.pem", "nope.pem")))
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.conf: identities.us.cert: cannot read", r.stderr)
        self.assertIn("nope.pem", r.stderr)

    def test_unknown_identity(self):
        r = run("check", "--config", write_config("unknown.conf", GOOD.replace('identity = "us"', 'identity = "eu"')))
        self.assertEqual(r.returncode, 1)
        self.assertIn('unknown.conf:9: route[1].identity: unknown identity "eu"; defined: us', r.stderr)

    def test_toml_syntax_error(self):
        r = run("check", "--config", write_config("syntax.conf", GOOD + "\n[[route]\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("syntax.conf: line 11", r.stderr)

    def test_untrusted_ca_file(self):
        r = run("check", "--config", write_config("ca.conf", GOOD.replace("pki/ca.pem", "pki/missing-ca.pem")))
        self.assertEqual(r.returncode, 1)
        self.assertIn("ca.conf: upstream.ca_file: cannot load CA bundle", r.stderr)

    def test_missing_config_file(self):
        r = run("check", "--config", f"{ENV['dir']}/does-not-exist.conf")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read the config file", r.stderr)

    def test_run_refuses_a_bad_config_and_does_not_start(self):
        r = run("run", "--config", write_config("bad-run.conf", "[proxy]\nlisten = \"0.0.0.0:0\"\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad-run.conf:2: proxy.listen: 0.0.0.0:0 is not a loopback address", r.stderr)


if __name__ == "__main__":
    harness.run_suite()
