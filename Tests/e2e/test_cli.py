#!/usr/bin/env python3
"""The command line: `check` on good and broken configs, and what it says about each mistake."""
import os, re, shutil, subprocess, sys, tempfile, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, tear_down  # noqa: E402

STATUS_403 = re.compile(r"\b403\b")

ENV = {}


def setUpModule():
    ENV.update(Fixture("mtls-proxy-cli-").env())


def tearDownModule():
    tear_down(ENV, remove=True)


def write_config(name, text):
    return harness.write_file(f"{ENV['dir']}/{name}", text)


def run(*args, **kw):
    return harness.run_cli(*args, timeout=30, **kw)


GOOD = harness.US_API_CONFIG


class Check(unittest.TestCase):
    def test_good_config_prints_each_identity(self):
        r = run("check", "--config", write_config("good.conf", GOOD), "--wide")
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
        self.assertRegex(r.stderr, r"mismatch\.conf:\d+: identities\.us: the private key in")
        self.assertIn("does not belong to the certificate", r.stderr)

    def test_missing_certificate_file(self):
        r = run("check", "--config", write_config("missing.conf", GOOD.replace("fusion-us.pem", "nope.pem")))
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"missing\.conf:\d+: identities\.us\.cert: cannot read")
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
        self.assertRegex(r.stderr, r"ca\.conf:\d+: upstream\.ca_file: cannot load CA bundle")
        self.assertEqual(r.stderr.count("cannot load CA bundle"), 1, r.stderr)  # said once, where it is set

    def test_missing_config_file(self):
        r = run("check", "--config", f"{ENV['dir']}/does-not-exist.conf")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read the config file", r.stderr)

    def test_run_refuses_a_bad_config_and_does_not_start(self):
        r = run("run", "--config", write_config("bad-run.conf", "[proxy]\nlisten = \"0.0.0.0:0\"\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad-run.conf:2: proxy.listen: 0.0.0.0:0 is not a loopback address", r.stderr)


class NewUserMistakes(unittest.TestCase):
    """What a first-time user runs into when following the README: each message says what to do."""

    def test_unquoted_duration_is_explained_not_only_a_toml_syntax_error(self):
        r = run("check", "--config", write_config("bare-duration.conf", "[upstream]\nconnect_timeout = 5s\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("bare-duration.conf: line 2", r.stderr)
        self.assertIn('bare-duration.conf:2: connect_timeout: durations are strings with a unit: '
                      'write connect_timeout = "5s"', r.stderr)

    def test_unquoted_string_value_is_explained(self):
        for value, expected in (("api.mygreatbank.test", 'write host = "api.mygreatbank.test"'),
                                ("deny   # no network", 'write action = "deny"'),
                                ("127.0.0.1:8443", 'write connect = "127.0.0.1:8443"')):
            key = expected.split()[1]
            r = run("check", "--config", write_config("bare-string.conf", f"[[route]]\n{key} = {value}\n"))
            self.assertEqual(r.returncode, 1)
            self.assertIn(f"bare-string.conf:2: {key}: text values are quoted in TOML: {expected}", r.stderr)

    def test_a_real_syntax_error_gets_no_made_up_hint(self):
        r = run("check", "--config", write_config("bracket.conf", GOOD + "\n[[route]\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("bracket.conf: line 11", r.stderr)
        self.assertNotIn("write ", r.stderr)
        r = run("check", "--config", write_config("number.conf", "[proxy]\nworkers = 2x\n"))
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("write ", r.stderr)

    def test_ca_init_makes_the_folder_of_the_local_ca(self):
        config = write_config("intercept.conf", GOOD + '[intercept]\nca_cert = "state-new/ca/local-ca.pem"\n'
                              'ca_key = "state-new/ca/local-ca.key"\n')
        r = run("ca", "init", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        folder = f"{ENV['dir']}/state-new/ca"
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(f"{folder}/local-ca.key").st_mode & 0o777, 0o600)
        r = run("check", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run("ca", "init", "--config", config)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"mtls-proxy: {folder}/local-ca.pem already exists: the local CA is made once", r.stderr)
        self.assertIn("mtls-proxy ca --config", r.stderr)
        self.assertNotIn("TLS context", r.stderr)

    def test_certs_says_expired_for_an_expired_certificate(self):
        pki = f"{ENV['dir']}/pki"
        subprocess.run(["bash", "-c", f"source '{harness.ROOT}/scripts/lib/pki.sh' && "
                        f"pki_cert_dated '{pki}' old-us fusion-us 20200101000000Z 20210101000000Z"], check=True)
        config = write_config("expired.conf", GOOD.replace('cert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"',
                              '[[identities.us.certificates]]\ncert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"\n'
                              '[[identities.us.certificates]]\ncert = "pki/old-us.pem"\nkey = "pki/old-us.key"'))
        r = run("certs", "--all", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2021-01-01 00:00 UTC (expired)", r.stdout)
        self.assertNotIn("expired days left", r.stdout)
        self.assertRegex(r.stdout, r"\(36[45] days left\)")

    def test_csr_out_with_a_trailing_slash_prints_clean_paths(self):
        r = run("csr", "us", "--config", write_config("csr.conf", GOOD), "--out", f"{ENV['dir']}/renewal-slash/")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("//", r.stdout)
        self.assertIn(f"{ENV['dir']}/renewal-slash/us-", r.stdout)

    def test_explain_a_sidecar_address_says_what_the_proxy_answers(self):
        config = write_config("own.conf", GOOD + '[[listener]]\nlisten = "127.0.0.1:29401"\n'
                              'upstream = "https://api.mygreatbank.test"\n[[route]]\nhost = "*"\naction = "deny"\n')
        r = run("explain", "http://127.0.0.1:29401/v1/x", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("127.0.0.1:29401 is this proxy's own address (listener[1], the sidecar listener for "
                      "https://api.mygreatbank.test)", r.stdout)
        self.assertIn("NO_PROXY", r.stdout)
        self.assertNotIn("route[2] *", r.stdout)
        r = run("explain", "http://localhost:29401/", "--config", config)
        self.assertIn("own address", r.stdout)
        r = run("explain", "http://127.0.0.1:29402/", "--config", config)
        self.assertNotIn("own address", r.stdout)
        self.assertIn("route[2] *", r.stdout)

    def test_explain_an_https_url_points_at_the_tunnel_most_clients_open(self):
        r = run("explain", "https://api.mygreatbank.test/v1/x", "--config", write_config("https.conf", GOOD))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("mutual TLS presenting identity us", r.stdout)
        self.assertIn("HTTPS_PROXY: CONNECT api.mygreatbank.test:443", r.stdout)
        r = run("explain", "http://api.mygreatbank.test/v1/x", "--config", write_config("https.conf", GOOD))
        self.assertNotIn("CONNECT", r.stdout)

    def test_health_without_an_answer_names_where_the_address_came_from(self):
        port = harness.free_port()
        config = write_config("health.conf", GOOD + f'[admin]\nlisten = "127.0.0.1:{port}"\n')
        r = run("health", "--config", config)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"no answer from http://127.0.0.1:{port}/healthz ([admin] listen in {config})", r.stderr)
        self.assertIn("is the proxy running", r.stderr)
        r = run("health", "--admin", f"127.0.0.1:{port}")
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"no answer from http://127.0.0.1:{port}/healthz (--admin)", r.stderr)

    def test_a_negative_warn_days_is_refused_like_the_config_refuses_it(self):
        r = run("check", "--config", write_config("warn.conf", GOOD), "--warn-days=-5")
        self.assertEqual(r.returncode, 64)
        self.assertIn("--warn-days takes 0 to 3650 days, not -5", r.stderr)
        r = run("check", "--config", write_config("warn.conf", GOOD), "--warn-days", "400")
        self.assertEqual(r.returncode, 2)

    def test_a_mistyped_subcommand_is_named_not_taken_for_an_argument_of_run(self):
        r = run("chek", "--config", "proxy.conf")
        self.assertEqual(r.returncode, 64)
        self.assertIn("mtls-proxy: unknown subcommand 'chek'; did you mean 'check'?", r.stderr)
        self.assertNotIn("Usage: mtls-proxy run", r.stderr)
        r = run("serve")
        self.assertEqual(r.returncode, 64)
        self.assertIn("unknown subcommand 'serve'", r.stderr)
        self.assertIn("run, check, certs, explain, health, ca, csr, pins, version", r.stderr)
        r = run("help", "check")
        self.assertEqual(r.returncode, 0)
        self.assertIn("Validate the config", r.stdout)


class EveryFileMistakeAtOnce(unittest.TestCase):
    """Files the config names (keys, certificates, bundles, the local CA) are all read before `check` reports:
    every missing or broken one is named at once, each with its line and key."""

    def test_every_missing_file_is_named_with_its_line(self):
        path = write_config("many-missing.conf", """[upstream]
ca_file = "pki/ca.pem"
[identities.us]
cert = "pki/missing-us.pem"
key = "pki/fusion-us.key"
[identities.eu]
cert = "pki/fusion-us.pem"
key = "pki/missing-eu.key"
[identities.az]
p12 = "pki/missing-az.p12"
[intercept]
ca_cert = "state/missing-ca.pem"
ca_key = "state/missing-ca.key"
[[route]]
host = "us.test"
identity = "us"
[[route]]
host = "eu.test"
identity = "eu"
[[route]]
host = "az.test"
identity = "az"
""")
        r = run("check", "--config", path)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"many-missing\.conf:4: identities\.us\.cert: .*missing-us\.pem")
        self.assertRegex(r.stderr, r"many-missing\.conf:8: identities\.eu\.key: .*missing-eu\.key")
        self.assertRegex(r.stderr, r"many-missing\.conf:10: identities\.az\.p12: .*missing-az\.p12")
        self.assertRegex(r.stderr, r"many-missing\.conf:1[23]: intercept\.ca_(cert|key): .*mtls-proxy ca init")



class ExplainHTTPS(unittest.TestCase):
    """`explain https://...`: what a client with HTTPS_PROXY gets (it sends CONNECT host:443) and what the same
    URL spelled http:// through HTTP_PROXY gets; each part apart, so neither is taken for the other."""

    # The status as a word: a certificate's random serial in the same output may hold the digits "403".
    def explain(self, config, url):
        r = run("explain", url, "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        tunnel, found, forward = r.stdout.partition("HTTP_PROXY: GET http://")
        self.assertTrue(found, r.stdout)
        return tunnel, forward, r.stdout

    def test_an_mtls_route_without_interception_is_a_403_for_connect_and_mtls_for_http(self):
        tunnel, forward, out = self.explain(write_config("https.conf", GOOD), "https://api.mygreatbank.test/v1/x")
        self.assertIn("HTTPS_PROXY: CONNECT api.mygreatbank.test:443", tunnel)
        self.assertRegex(tunnel, STATUS_403)
        self.assertIn("a blind tunnel cannot add its client certificate", tunnel)
        self.assertNotIn("mutual TLS presenting identity us", tunnel)
        self.assertTrue(forward.startswith("api.mygreatbank.test/v1/x"), out)
        self.assertIn("mutual TLS presenting identity us", forward)
        self.assertNotRegex(forward, STATUS_403)

    def test_interception_on_says_the_tunnel_is_intercepted(self):
        config = write_config("https-intercept.conf", GOOD + '[intercept]\nca_cert = "state-x/ca.pem"\nca_key = "state-x/ca.key"\n')
        self.assertEqual(run("ca", "init", "--config", config).returncode, 0)
        tunnel, forward, _ = self.explain(config, "https://api.mygreatbank.test/v1/x")
        self.assertIn("intercepted", tunnel)
        self.assertIn("identity us", tunnel)
        self.assertNotRegex(tunnel, STATUS_403)
        self.assertIn("mutual TLS presenting identity us", forward)

    def test_a_tls_route_is_a_blind_tunnel(self):
        config = write_config("https-tls.conf", GOOD + '[[route]]\nhost = "public.example"\naction = "tls"\n')
        tunnel, forward, _ = self.explain(config, "https://public.example/")
        self.assertIn("blind tunnel", tunnel)
        self.assertIn("TLS without a client certificate", forward)

    def test_a_port_no_route_names_is_refused_for_connect(self):
        tunnel, forward, _ = self.explain(write_config("https-port.conf", GOOD), "https://api.mygreatbank.test:8443/v1")
        self.assertIn("CONNECT api.mygreatbank.test:8443", tunnel)
        self.assertIn("tunnels to port 8443 are refused unless a route names the port", tunnel)
        self.assertTrue(forward.startswith("api.mygreatbank.test:8443/v1"), forward)


class NoPINInAnyError(unittest.TestCase):
    """A token key URI with a misspelled scheme was read as a file path and echoed, PIN included, by `check` and
    by `run` ("cannot read ..."). Whatever the spelling, the PIN appears in no output; the error names the file
    and key and says what is expected."""

    PIN = "8361"

    def test_check_and_run_name_the_key_without_the_pin(self):
        for i, value in enumerate((f"pkcs1:token=x;object=y?pin-value={self.PIN}", f"pkcs11x:object=y;pin-value={self.PIN}",
                                   f"keys/us.key?pin-value={self.PIN}")):
            config = write_config(f"pin-{i}.conf", GOOD.replace('key = "pki/fusion-us.key"', f'key = "{value}"'))
            self.assertIn(value, harness.read(config))
            r = run("check", "--config", config)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertNotIn(self.PIN, r.stdout + r.stderr)
            self.assertIn(f"pin-{i}.conf", r.stdout + r.stderr)
            self.assertIn("identities.us.key", r.stdout + r.stderr)
            r = run("run", "--config", config, env=harness.clean_env(SWIFT_BACKTRACE="enable=no"))
            self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn(self.PIN, r.stdout + r.stderr)
            self.assertIn("identities.us.key", r.stdout + r.stderr)


class ExplainRefusesWhatTheListenerRefuses(unittest.TestCase):
    """A request line's target is visible ASCII only: the listener answers 400 to a space (or a tab, a control
    character, a byte beyond ASCII) in it, so `explain` must not describe such a URL as if it were routed."""

    def test_a_space_or_a_non_ascii_byte_in_the_path_is_a_clear_error(self):
        config = write_config("explain-space.conf", GOOD)
        for url in ("http://api.mygreatbank.test/v1/a b", "https://api.mygreatbank.test/v1/a b", "http://api.mygreatbank.test/v1/\tx",
                    "http://api.mygreatbank.test/caf\u00e9", "http://api.mygreatbank.test/v1/x?q=a b"):
            r = run("explain", url, "--config", config)
            self.assertEqual(r.returncode, 2, f"{url!r}: {r.stdout}{r.stderr}")
            self.assertNotIn("outcome", r.stdout, url)
            self.assertIn("only visible ASCII characters are allowed", r.stderr, url)
            self.assertIn("%20", r.stderr, url)
        r = run("explain", "http://api.mygreatbank.test/v1/a%20b", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("mutual TLS presenting identity us", r.stdout)


class CheckNamesUnusedIdentities(unittest.TestCase):
    CONFIG = GOOD + '[identities.eu]\ncert = "pki/fusion-eu.pem"\nkey = "pki/fusion-eu.key"\n'

    def test_an_identity_no_route_uses_is_a_warning_that_keeps_the_exit_code(self):
        r = run("check", "--config", write_config("unused.conf", self.CONFIG))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("warning: identity eu is used by no route", r.stdout)
        self.assertNotIn("identity us is used by no route", r.stdout)
        r = run("check", "--config", write_config("unused.conf", self.CONFIG), "--format", "json")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        import json
        report = json.loads(r.stdout)
        self.assertEqual(report["unused_identities"], ["eu"])
        self.assertTrue(any("identity eu is used by no route" in w for w in report["warnings"]), report["warnings"])
        report = json.loads(run("check", "--config", write_config("used.conf", GOOD), "--format", "json").stdout)
        self.assertEqual(report["unused_identities"], [])


class CheckFitsTheTerminal(unittest.TestCase):
    """The certificate table folds to 80 columns; --wide prints it whole, one row per certificate."""

    def test_the_table_folds_to_80_columns_and_wide_prints_every_column(self):
        long_cn = "payments-" + "x" * 55  # 64 characters, the most a CN may have
        harness.pki_shell(f"pki_cert_dated '{ENV['dir']}/pki' long-cn {long_cn} 20200101000000Z 20991231000000Z")
        config = write_config("fold.conf", GOOD + f'[identities.long]\ncert = "pki/long-cn.pem"\nkey = "pki/long-cn.key"\n'
                              '[[route]]\nhost = "long.example"\nidentity = "long"\n')
        r = run("check", "--config", config)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for line in r.stdout.splitlines():
            self.assertLessEqual(len(line), 80, line)
        fingerprint = subprocess.run(["openssl", "x509", "-in", f"{ENV['dir']}/pki/long-cn.pem", "-noout", "-fingerprint", "-sha256"],
                                     capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        joined = "".join(line.strip() for line in r.stdout.splitlines())
        self.assertIn(f"CN={long_cn},O=mtls-proxy test", joined)
        self.assertIn(fingerprint, joined)
        self.assertRegex(r.stdout, r"long\s+#1\s+active\s+2099-12-31")
        wide = run("check", "--config", config, "--wide")
        self.assertEqual(wide.returncode, 0, wide.stderr)
        self.assertTrue(any(len(line) > 80 for line in wide.stdout.splitlines()))
        row = [line for line in wide.stdout.splitlines() if line.startswith("long ")][0]
        self.assertIn(f"CN={long_cn},O=mtls-proxy test", row)
        self.assertIn(fingerprint, row)
        for column in ["IDENTITY", "STATE", "NOT BEFORE", "NOT AFTER", "DAYS LEFT", "SERIAL", "SUBJECT", "ISSUER", "SHA-256"]:
            self.assertIn(column, wide.stdout)

    def test_wide_is_for_the_table(self):
        r = run("check", "--config", write_config("wide-json.conf", GOOD), "--wide", "--format", "json")
        self.assertEqual(r.returncode, 64)
        self.assertIn("--wide is for the text table", r.stderr)

    def test_paths_are_printed_normalised(self):
        # conf/norm.conf names ../pki/...: printed pki/... (relative, as the config was named), never conf/../pki.
        os.makedirs(f"{ENV['dir']}/conf", exist_ok=True)
        text = GOOD.replace('"pki/', '"../pki/') + '[intercept]\nca_cert = "../state-n/ca.pem"\nca_key = "../state-n/ca.key"\n'
        write_config("conf/norm.conf", text)
        r = run("ca", "init", "--config", "conf/norm.conf", cwd=ENV["dir"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("made local CA state-n/ca.pem (key state-n/ca.key, mode 600)", r.stdout)
        r = run("check", "--config", "conf/norm.conf", cwd=ENV["dir"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("..", r.stdout)
        self.assertRegex(r.stdout, r"(?m)^ +file +pki/fusion-us\.pem$")
        self.assertIn("local CA state-n/ca.pem: valid until", r.stdout)
        self.assertRegex(run("check", "--config", "conf/norm.conf", "--wide", cwd=ENV["dir"]).stdout, r"(?m)  pki/fusion-us\.pem$")
        r = run("certs", "--config", "conf/norm.conf", cwd=ENV["dir"])
        self.assertIn("      file pki/fusion-us.pem\n", r.stdout)
        # JSON keeps the absolute path the proxy opens, spelled the short way too.
        import json
        report = json.loads(run("check", "--config", "conf/norm.conf", "--format", "json", cwd=ENV["dir"]).stdout)
        self.assertEqual(report["identities"][0]["certificates"][0]["file"], f"{ENV['dir']}/pki/fusion-us.pem")
        # Given absolute, the config's paths are printed absolute.
        r = run("check", "--config", f"{ENV['dir']}/conf/norm.conf", cwd="/")
        self.assertRegex(r.stdout, rf"(?m)^ +file +{re.escape(ENV['dir'])}/pki/fusion-us\.pem$")
        write_config("conf/norm-missing.conf", text.replace("../pki/fusion-us.pem", "../pki/./nope.pem"))
        r = run("check", "--config", "conf/norm-missing.conf", cwd=ENV["dir"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read pki/nope.pem", r.stderr)
        self.assertNotIn("..", r.stderr.replace("...", ""))

    def test_a_folder_reached_through_a_symlink_keeps_its_parent(self):
        # conf-link -> real/conf: conf-link/../x is real/x for the kernel, so the path is not shortened to x.
        real = f"{ENV['dir']}/real"
        os.makedirs(f"{real}/conf", exist_ok=True)
        shutil.copytree(f"{ENV['dir']}/pki", f"{real}/pki-real", dirs_exist_ok=True)
        if not os.path.islink(f"{ENV['dir']}/conf-link"):
            os.symlink(f"{real}/conf", f"{ENV['dir']}/conf-link")
        harness.write_file(f"{real}/conf/link.conf", GOOD.replace('"pki/', '"../pki-real/'))
        r = run("check", "--config", "conf-link/link.conf", cwd=ENV["dir"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class UnknownKeysFirst(unittest.TestCase):
    def test_a_misspelled_key_is_reported_before_what_it_causes_and_routes_go_by_name(self):
        config = write_config("typo.conf", GOOD + '[identities.eu]\ncert = "pki/fusion-eu.pem"\nkey = "pki/fusion-eu.key"\n'
                              '[[route]]\nname = "payments-eu"\nhost = "eu.example"\nidentiy = "eu"\n')
        r = run("check", "--config", config)
        self.assertEqual(r.returncode, 1)
        lines = [line for line in r.stderr.splitlines() if line.startswith(f"mtls-proxy: {config}:")]
        self.assertEqual(len(lines), 2, r.stderr)
        self.assertIn('route "payments-eu" (route[2]).identiy: unknown key; did you mean `identity`?', lines[0])
        self.assertIn('route "payments-eu" (route[2]).identity: missing', lines[1])
        # JSON keeps the key path scripts match on.
        import json
        report = json.loads(run("check", "--config", config, "--format", "json").stdout)
        self.assertEqual([e["key"] for e in report["errors"]], ["route[2].identiy", "route[2].identity"])


class CAInitHint(unittest.TestCase):
    def test_the_hint_names_the_config(self):
        config = write_config("hint.conf", GOOD + '[intercept]\nca_cert = "state-hint/ca.pem"\nca_key = "state-hint/ca.key"\n')
        r = run("ca", "init", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"mtls-proxy ca --config {config} --pem > mtls-proxy-ca.pem", r.stdout)


if __name__ == "__main__":
    harness.run_suite()
