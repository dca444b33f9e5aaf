#!/usr/bin/env python3
"""End-to-end: trusting the upstream on purpose. TLS policy per route (versions, ciphers) against real Python TLS
servers, SPKI pins (a key change with and without the backup pin, report-only, pin-only to a self-signed service),
and revocation from CRL files made with `openssl ca -gencrl` (revoked, missing, stale). Each refusal reaches the
client as a 502 with its own Proxy-Status, and nothing is shared between routes with different settings.
Everything on loopback."""
import base64, hashlib, os, re, socket, subprocess, sys, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ENV = {}


def sh(*commands, cwd=None):
    harness.pki_shell(*commands, cwd=cwd)


def pin_of(pem_path):
    """The RFC 7469 pin of the first certificate in `pem_path`, computed by openssl (not by the proxy)."""
    spki = subprocess.run(f"openssl x509 -in '{pem_path}' -pubkey -noout | openssl pkey -pubin -outform der",
                          shell=True, check=True, capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def serial_of(pem_path):
    out = subprocess.run(["openssl", "x509", "-in", pem_path, "-noout", "-serial"], check=True, capture_output=True, text=True).stdout
    return out.strip().split("=", 1)[1].upper()


def ca_config(pki, name):
    """An `openssl ca` database for CA `name` of `pki` (for -revoke and -gencrl); returns the config path."""
    db = f"{pki}/.db-{name}"
    os.makedirs(f"{db}/new", exist_ok=True)
    if not os.path.exists(f"{db}/index.txt"):
        open(f"{db}/index.txt", "w").close()
        with open(f"{db}/serial", "w") as f:
            f.write("1000\n")
        with open(f"{db}/crlnumber", "w") as f:
            f.write("1000\n")
    cnf = f"{db}/ca.cnf"
    with open(cnf, "w") as f:
        f.write(f"""[ca]
default_ca = test
[test]
database = {db}/index.txt
new_certs_dir = {db}/new
certificate = {pki}/{name}.pem
private_key = {pki}/{name}.key
serial = {db}/serial
crlnumber = {db}/crlnumber
default_md = sha256
default_crl_days = 1
policy = anything
unique_subject = no
[anything]
O = optional
CN = supplied
[server]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:*.mygreatbank.test
""")
    return cnf


def make_fixtures(d):
    pki = f"{d}/pki"
    cnf = ca_config(pki, "ca")
    rogue_cnf = ca_config(pki, "rogue-ca")
    # A server certificate issued by the test CA through `openssl ca`, then revoked; a new key for the service
    # (the key change); a self-signed service; the usual server certificate with the CA after it in its chain.
    sh(f"openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out revoked.key",
       f"openssl req -new -key revoked.key -subj '/O=mtls-proxy test/CN=revoked.mygreatbank.test' -out revoked.csr",
       f"openssl ca -batch -config '{cnf}' -extensions server -notext -days 30 -in revoked.csr -out revoked.pem 2>/dev/null",
       f"openssl ca -config '{cnf}' -revoke revoked.pem -crl_reason keyCompromise 2>/dev/null",
       f"openssl ca -config '{cnf}' -gencrl -out crl.pem 2>/dev/null",
       f"openssl ca -config '{cnf}' -gencrl -crl_lastupdate $(utc_in -7200) -crl_nextupdate $(utc_in -3600) -out stale-crl.pem 2>/dev/null",
       f"openssl ca -config '{rogue_cnf}' -gencrl -out rogue-crl.pem 2>/dev/null",
       "openssl ca -config '%s' -gencrl -out crl.der 2>/dev/null && openssl crl -in crl.der -outform der -out crl.der" % cnf,
       f"pki_cert . server2 api.mygreatbank.test ca 'DNS:*.mygreatbank.test' serverAuth",
       "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout self.key -out self.pem "
       "-days 30 -subj '/CN=selfsigned service' -addext 'subjectAltName=DNS:selfsigned.internal' 2>/dev/null",
       "cat server.pem ca.pem > server-with-ca.pem && cp server.key server-with-ca.key",
       "printf 'this is not a CRL\\n' > garbage-crl.pem",
       cwd=pki)
    return pki


def setUpModule():
    d = harness.folder_with_pki("mtls-proxy-trust-")
    pki = make_fixtures(d)
    procs = harness.Processes()
    ports = {n: harness.free_port() for n in ("proxy", "admin", "std", "tls12", "newkey", "self", "withca", "revoked")}
    try:
        harness.start_python_upstream(procs, pki, ports["std"])
        harness.start_python_upstream(procs, pki, ports["tls12"], max_tls="1.2")
        harness.start_python_upstream(procs, pki, ports["newkey"], cert="server2")
        harness.start_python_upstream(procs, pki, ports["self"], cert="self")
        harness.start_python_upstream(procs, pki, ports["withca"], cert="server-with-ca")
        harness.start_python_upstream(procs, pki, ports["revoked"], cert="revoked")
        pins = {name: pin_of(f"{pki}/{name}.pem") for name in ("server", "server2", "self", "ca", "fusion-us")}

        def route(host, port, extra="", path=None):
            p = f'path = "{path}"\n' if path else ""
            return f'[[route]]\nhost = "{host}.mygreatbank.test"\n{p}action = "tls"\nconnect = "127.0.0.1:{ports[port]}"\n{extra}\n'

        config = f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 1

[admin]
listen = "127.0.0.1:{ports['admin']}"

[upstream]
ca_file = "pki/ca.pem"

[log]
format = "json"

{route("policy13", "tls12", 'tls_min_version = "1.3"')}
{route("policy12", "std", 'tls_max_version = "1.2"' + chr(10) + 'tls_ciphers = ["ECDHE-ECDSA-AES256-GCM-SHA384"]')}
{route("rsaonly", "std", 'tls_max_version = "1.2"' + chr(10) + 'tls_ciphers = ["ECDHE-RSA-AES128-GCM-SHA256"]')}
{route("pinned", "std", f'pin_spki_sha256 = ["{pins["server"]}"]')}
{route("pinned-ca", "std", f'pin_spki_sha256 = ["{pins["ca"]}"]')}
{route("rotate-backup", "newkey", f'pin_spki_sha256 = ["{pins["server"]}", "{pins["server2"]}"]')}
{route("rotate-nobackup", "newkey", f'pin_spki_sha256 = ["{pins["server"]}"]')}
{route("report-only", "newkey", f'pin_spki_sha256 = ["{pins["server"]}"]' + chr(10) + 'pin_report_only = true')}
{route("selfsigned", "self", f'verify = "pin-only"' + chr(10) + f'pin_spki_sha256 = ["{pins["self"]}"]')}
{route("selfsigned-chain", "self")}
{route("selfsigned-wrong", "self", f'verify = "pin-only"' + chr(10) + f'pin_spki_sha256 = ["{pins["server"]}"]')}
{route("pinonly-ca", "withca", f'verify = "pin-only"' + chr(10) + f'pin_spki_sha256 = ["{pins["ca"]}"]')}
{route("shared", "std", f'pin_spki_sha256 = ["{pins["fusion-us"]}"]', path="/bad/")}
{route("shared", "std", f'pin_spki_sha256 = ["{pins["server"]}"]')}
{route("revoked", "revoked", 'crl_files = ["pki/crl.pem"]' + chr(10) + 'revocation = "hard"')}
{route("revoked-soft", "revoked", 'crl_files = ["pki/crl.pem"]' + chr(10) + 'revocation = "soft"')}
{route("revoked-unchecked", "revoked")}
{route("crl-good", "std", 'crl_files = ["pki/crl.pem"]' + chr(10) + 'revocation = "hard"')}
{route("crl-der", "std", 'crl_files = ["pki/crl.der"]' + chr(10) + 'revocation = "hard"')}
{route("crl-missing-hard", "std", 'crl_files = ["pki/rogue-crl.pem"]' + chr(10) + 'revocation = "hard"')}
{route("crl-missing-soft", "std", 'crl_files = ["pki/rogue-crl.pem"]' + chr(10) + 'revocation = "soft"')}
{route("crl-stale-hard", "std", 'crl_files = ["pki/stale-crl.pem"]' + chr(10) + 'revocation = "hard"')}
"""
        conf = harness.write_file(f"{d}/proxy.conf", config)
        log = f"{d}/proxy.log"
        harness.start_proxy(procs, conf, log, ports["proxy"])
        harness.wait_for_port(ports["admin"])
    except BaseException:
        procs.stop_all()
        raise
    ENV.update(dir=d, pki=pki, procs=procs, ports=ports, pins=pins, conf=conf, log=log)


def tearDownModule():
    if "procs" in ENV:
        ENV["procs"].stop_all()


def get(host, path="/whoami", keep_alive=False):
    """One GET through the proxy for https://HOST.mygreatbank.test (the route's upstream); (status, headers, body)."""
    name = f"{host}.mygreatbank.test"
    with socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10) as s:
        s.sendall(f"GET http://{name}{path} HTTP/1.1\r\nHost: {name}\r\n{'' if keep_alive else 'Connection: close'}\r\n\r\n".encode())
        head, body = harness.read_response(s)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    return int(lines[0].split()[1]), headers, body.decode("latin-1")


def scrape():
    return harness.http_get(ENV["ports"]["admin"], "/metrics")[1]


class TLSPolicy(unittest.TestCase):
    def test_a_minimum_the_upstream_cannot_meet_is_a_502_naming_the_version(self):
        status, headers, body = get("policy13")
        self.assertEqual(status, 502, body)
        ps = headers["proxy-status"]
        self.assertRegex(ps, r"error=tls_(alert_received|protocol_error)")
        self.assertRegex(ps + body, r"protocol.version|unsupported protocol")
        self.assertIn("tls_min_version", body)

    def test_a_tls12_cipher_list_is_what_the_handshake_uses(self):
        status, _, body = get("policy12")
        self.assertEqual(status, 200, body)
        records = harness.wait_until(lambda: [r for r in harness.json_log_lines(ENV["log"]) if r.get("host") == "policy12.mygreatbank.test"], 5, 0.1)
        self.assertTrue(records, "no access record for policy12")
        self.assertEqual(records[-1].get("tls_version"), "TLSv1.2")
        self.assertEqual(records[-1].get("cipher"), "ECDHE-ECDSA-AES256-GCM-SHA384")

    def test_no_shared_cipher_is_a_502(self):
        # The service has an ECDSA key; the route allows only an RSA cipher suite with TLS 1.2.
        status, headers, body = get("rsaonly")
        self.assertEqual(status, 502, body)
        self.assertIn("handshake_failure", headers["proxy-status"] + body)

    def test_check_names_the_key_of_a_cipher_typo(self):
        conf = harness.write_file(f"{ENV['dir']}/typo.conf", f"""
[upstream]
ca_file = "pki/ca.pem"
tls_groups = ["X25519", "P-265"]

[[route]]
host = "a.example.com"
action = "tls"
tls_ciphers = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA265"]
""")
        r = harness.run_cli("check", "--config", conf, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        out = r.stdout + r.stderr
        self.assertIn("route[1].tls_ciphers[2]", out)
        self.assertIn("ECDHE-ECDSA-AES128-GCM-SHA265", out)
        self.assertIn("upstream.tls_groups[2]", out)

    def test_min_above_max_is_a_config_error(self):
        conf = harness.write_file(f"{ENV['dir']}/minmax.conf", '[upstream]\ntls_min_version = "1.3"\ntls_max_version = "1.2"\n')
        r = harness.run_cli("check", "--config", conf, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("upstream.tls_max_version", r.stdout + r.stderr)


class Pinning(unittest.TestCase):
    def test_the_pinned_key_is_accepted(self):
        self.assertEqual(get("pinned")[0], 200)

    def test_a_pin_of_the_issuing_ca_accepts_its_leaves(self):
        self.assertEqual(get("pinned-ca")[0], 200)

    def test_key_change_with_the_backup_pin_listed_is_served(self):
        self.assertEqual(get("rotate-backup")[0], 200)

    def test_key_change_without_the_backup_pin_is_refused_naming_the_new_pin(self):
        status, headers, body = get("rotate-nobackup")
        self.assertEqual(status, 502, body)
        ps = headers["proxy-status"]
        self.assertIn("error=tls_certificate_error", ps)
        self.assertIn(ENV["pins"]["server2"], ps)
        self.assertIn("matches no pin", ps)
        self.assertTrue(harness.wait_until(lambda: ENV["pins"]["server2"] in harness.read(ENV["log"]), 5, 0.1),
                        "the presented pin is not in the proxy's log")

    def test_report_only_serves_and_counts_the_mismatch(self):
        before = harness.metric(scrape(), "mtls_proxy_upstream_trust_decisions_total", 0, decision="pin_mismatch_reported")
        self.assertEqual(get("report-only")[0], 200)
        after = harness.metric(scrape(), "mtls_proxy_upstream_trust_decisions_total", 0, decision="pin_mismatch_reported")
        self.assertGreaterEqual(after, before + 1)
        self.assertTrue(harness.wait_until(lambda: "pin_report_only" in harness.read(ENV["log"]), 5, 0.1))

    def test_pin_only_reaches_a_self_signed_service(self):
        self.assertEqual(get("selfsigned")[0], 200)
        # Without pin-only the same service fails chain verification.
        status, headers, _ = get("selfsigned-chain")
        self.assertEqual(status, 502)
        self.assertIn("error=tls_certificate_error", headers["proxy-status"])

    def test_pin_only_with_another_key_is_refused(self):
        status, headers, body = get("selfsigned-wrong")
        self.assertEqual(status, 502, body)
        self.assertIn(ENV["pins"]["self"], headers["proxy-status"])

    def test_pin_only_does_not_accept_a_pinned_ca_sent_along_with_any_leaf(self):
        # Anyone can send a public CA certificate after their own leaf: pin-only must check the leaf's key.
        status, headers, body = get("pinonly-ca")
        self.assertEqual(status, 502, body)
        self.assertIn(ENV["pins"]["server"], headers["proxy-status"])

    def test_routes_to_one_upstream_with_different_pins_share_nothing(self):
        for _ in range(3):
            self.assertEqual(get("shared", "/whoami", keep_alive=True)[0], 200)
            status, headers, _ = get("shared", "/bad/whoami", keep_alive=True)
            self.assertEqual(status, 502, "the refused route was served over the other route's pooled connection")
            self.assertIn(ENV["pins"]["server"], headers["proxy-status"])

    def test_pins_command_prints_what_openssl_computes(self):
        r = harness.run_cli("pins", "--pem", f"{ENV['pki']}/server-with-ca.pem", timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(ENV["pins"]["server"], r.stdout)
        self.assertIn(ENV["pins"]["ca"], r.stdout)

    def test_pins_command_connects_the_way_the_route_does(self):
        r = harness.run_cli("pins", "--config", ENV["conf"], "https://pinned.mygreatbank.test", timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(ENV["pins"]["server"], r.stdout)
        self.assertIn("accepts", r.stdout)
        # The route would refuse the new key: the command says so, and shows the key to pin.
        r = harness.run_cli("pins", "--config", ENV["conf"], "https://rotate-nobackup.mygreatbank.test", timeout=30)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(ENV["pins"]["server2"], r.stdout)
        self.assertIn("refuse", r.stdout)
        # A self-signed service fails chain verification, and its pin is printed all the same.
        r = harness.run_cli("pins", "--config", ENV["conf"], "https://selfsigned-chain.mygreatbank.test", timeout=30)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(ENV["pins"]["self"], r.stdout)
        self.assertIn("verification failed", r.stdout)

    def test_bad_pins_are_config_errors(self):
        conf = harness.write_file(f"{ENV['dir']}/badpin.conf", """
[[route]]
host = "a.example.com"
action = "tls"
pin_spki_sha256 = ["not-base64!"]

[[route]]
host = "b.example.com"
action = "tls"
verify = "pin-only"
""")
        r = harness.run_cli("check", "--config", conf, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        out = r.stdout + r.stderr
        self.assertIn("route[1].pin_spki_sha256[1]", out)
        self.assertIn("route[2].verify", out)


class Revocation(unittest.TestCase):
    def test_a_revoked_certificate_is_refused_naming_subject_and_serial(self):
        for host in ("revoked", "revoked-soft"):
            with self.subTest(host=host):
                status, headers, body = get(host)
                self.assertEqual(status, 502, body)
                ps = headers["proxy-status"]
                self.assertIn("error=tls_certificate_error", ps)
                self.assertIn("revoked", ps)
                self.assertIn("revoked.mygreatbank.test", ps)
                self.assertIn(serial_of(f"{ENV['pki']}/revoked.pem"), ps)
        self.assertGreaterEqual(harness.metric(scrape(), "mtls_proxy_upstream_trust_decisions_total", 0, decision="revoked"), 2)

    def test_without_crls_the_revoked_certificate_is_not_checked(self):
        self.assertEqual(get("revoked-unchecked")[0], 200)

    def test_a_certificate_the_crl_does_not_list_is_served(self):
        self.assertEqual(get("crl-good")[0], 200)
        self.assertEqual(get("crl-der")[0], 200)

    def test_hard_mode_refuses_when_no_crl_covers_the_issuer(self):
        status, headers, body = get("crl-missing-hard")
        self.assertEqual(status, 502, body)
        self.assertIn("CRL unavailable", headers["proxy-status"])
        self.assertNotIn("is revoked", headers["proxy-status"])

    def test_soft_mode_allows_and_counts_a_missing_crl(self):
        before = harness.metric(scrape(), "mtls_proxy_upstream_trust_decisions_total", 0, decision="crl_unavailable_allowed")
        self.assertEqual(get("crl-missing-soft")[0], 200)
        after = harness.metric(scrape(), "mtls_proxy_upstream_trust_decisions_total", 0, decision="crl_unavailable_allowed")
        self.assertGreaterEqual(after, before + 1)

    def test_hard_mode_refuses_a_stale_crl(self):
        status, headers, body = get("crl-stale-hard")
        self.assertEqual(status, 502, body)
        self.assertIn("CRL unavailable", headers["proxy-status"])
        self.assertIn("expired", headers["proxy-status"])

    def test_crl_metrics_name_the_issuer_and_next_update(self):
        text = scrape()
        self.assertIsNotNone(harness.metric(text, "mtls_proxy_crl_next_update_timestamp_seconds", None,
                                            issuer="CN=mtls-proxy test CA,O=mtls-proxy test"), text[-2000:])

    def test_a_new_crl_file_refuses_a_server_already_pooled_and_resumable(self):
        pki, d = ENV["pki"], ENV["dir"]
        cnf = ca_config(pki, "ca")
        sh("openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out later.key",
           "openssl req -new -key later.key -subj '/O=mtls-proxy test/CN=later.mygreatbank.test' -out later.csr",
           f"openssl ca -batch -config '{cnf}' -extensions server -notext -days 30 -in later.csr -out later.pem 2>/dev/null",
           f"openssl ca -config '{cnf}' -gencrl -out later-crl.pem 2>/dev/null", cwd=pki)
        procs = harness.Processes()
        up, port = harness.free_port(), harness.free_port()
        try:
            harness.start_python_upstream(procs, pki, up, cert="later")
            conf = harness.write_file(f"{d}/later.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 1
[upstream]
ca_file = "pki/ca.pem"
[[route]]
host = "later.mygreatbank.test"
action = "tls"
connect = "127.0.0.1:{up}"
crl_files = ["pki/later-crl.pem"]
revocation = "hard"
""")
            harness.start_proxy(procs, conf, f"{d}/later.log", port)
            saved = ENV["ports"]["proxy"]
            ENV["ports"]["proxy"] = port
            try:
                self.assertEqual(get("later", keep_alive=True)[0], 200)  # pooled, and a session to resume
                sh(f"openssl ca -config '{cnf}' -revoke later.pem 2>/dev/null",
                   f"openssl ca -config '{cnf}' -gencrl -out later-crl.tmp 2>/dev/null && mv later-crl.tmp later-crl.pem", cwd=pki)
                self.assertTrue(harness.wait_until(lambda: "reloaded" in harness.read(f"{d}/later.log"), 10, 0.1),
                                harness.read(f"{d}/later.log"))
                status, headers, body = get("later")
                self.assertEqual(status, 502, body)
                self.assertIn("revoked", headers["proxy-status"])
                self.assertIn(serial_of(f"{pki}/later.pem"), headers["proxy-status"])
            finally:
                ENV["ports"]["proxy"] = saved
        finally:
            procs.stop_all()

    def test_check_and_readyz_show_each_routes_revocation_state(self):
        r = harness.run_cli("check", "--config", ENV["conf"], timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout
        self.assertRegex(out, r"route\[15\] revoked\.mygreatbank\.test.*\n  revocation: hard")
        self.assertRegex(out, r"CRL .*stale-crl\.pem: issuer CN=mtls-proxy test CA,O=mtls-proxy test, 1 revoked, STALE")
        self.assertRegex(out, r"CRL .*/crl\.pem: issuer CN=mtls-proxy test CA,O=mtls-proxy test, 1 revoked, next update")
        self.assertRegex(out, r"selfsigned\.mygreatbank\.test.*\n  PIN-ONLY")
        status, body = harness.http_get(ENV["ports"]["admin"], "/readyz?verbose")
        self.assertEqual(status, 200)
        self.assertIn("route=route[15] revocation=hard crls=1 stale=0 next_update=", body)
        self.assertIn("revocation=hard crls=1 stale=1", body)
        self.assertIn("route=route[20] revocation=hard crls=1 stale=0", body)  # crl-missing-hard: its CRL is the rogue CA's

    def test_a_garbage_crl_file_is_a_config_error_naming_the_key(self):
        conf = harness.write_file(f"{ENV['dir']}/garbage.conf", """
[upstream]
ca_file = "pki/ca.pem"

[[route]]
host = "a.example.com"
action = "tls"
crl_files = ["pki/crl.pem", "pki/garbage-crl.pem"]
""")
        r = harness.run_cli("check", "--config", conf, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("route[1].crl_files[2]", r.stdout + r.stderr)

    def test_explain_shows_the_policy(self):
        r = harness.run_cli("explain", "--config", ENV["conf"], "http://revoked.mygreatbank.test/", timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hard", r.stdout)
        self.assertIn("CRL", r.stdout)
        r = harness.run_cli("explain", "--config", ENV["conf"], "http://selfsigned.mygreatbank.test/", timeout=30)
        self.assertIn("pin-only", r.stdout)


if __name__ == "__main__":
    harness.run_suite()
