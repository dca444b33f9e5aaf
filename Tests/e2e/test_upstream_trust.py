#!/usr/bin/env python3
"""End-to-end: trusting the upstream on purpose. TLS policy per route (versions, ciphers) against real Python TLS
servers, SPKI pins (a key change with and without the backup pin, report-only, pin-only to a self-signed service),
and revocation from CRL files made with `openssl ca -gencrl` (revoked, missing, stale). Each refusal reaches the
client as a 502 with its own Proxy-Status, and nothing is shared between routes with different settings.
Everything on loopback."""
import base64, hashlib, http.server, json, os, re, signal, socket, ssl, subprocess, sys, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import fixture  # noqa: E402
from fixture import Fixture, proxy_section, route, table, tear_down, upstream_section  # noqa: E402

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
    upstreams = {"std": {}, "tls12": dict(max_tls="1.2"), "newkey": dict(cert="server2"), "self": dict(cert="self"),
                 "withca": dict(cert="server-with-ca"), "revoked": dict(cert="revoked")}
    with Fixture("mtls-proxy-trust-", ports=("proxy", "admin", *upstreams)) as fx:
        pki = make_fixtures(fx.dir)
        for name, options in upstreams.items():
            fx.python_upstream(name, **options)
        pins = {name: pin_of(f"{pki}/{name}.pem") for name in ("server", "server2", "self", "ca", "fusion-us")}

        def to(host, up, **keys):
            return tls_route(host, fx.ports[up], **keys)
        hard, soft = dict(revocation="hard"), dict(revocation="soft")
        routes = "".join([
            to("policy13", "tls12", tls_min_version="1.3"),
            to("policy12", "std", tls_max_version="1.2", tls_ciphers=["ECDHE-ECDSA-AES256-GCM-SHA384"]),
            to("rsaonly", "std", tls_max_version="1.2", tls_ciphers=["ECDHE-RSA-AES128-GCM-SHA256"]),
            to("pinned", "std", pin_spki_sha256=[pins["server"]]),
            to("pinned-ca", "std", pin_spki_sha256=[pins["ca"]]),
            to("rotate-backup", "newkey", pin_spki_sha256=[pins["server"], pins["server2"]]),
            to("rotate-nobackup", "newkey", pin_spki_sha256=[pins["server"]]),
            to("report-only", "newkey", pin_spki_sha256=[pins["server"]], pin_report_only=True),
            to("selfsigned", "self", verify="pin-only", pin_spki_sha256=[pins["self"]]),
            to("selfsigned-chain", "self"),
            to("selfsigned-wrong", "self", verify="pin-only", pin_spki_sha256=[pins["server"]]),
            to("pinonly-ca", "withca", verify="pin-only", pin_spki_sha256=[pins["ca"]]),
            to("shared", "std", path="/bad/", pin_spki_sha256=[pins["fusion-us"]]),
            to("shared", "std", pin_spki_sha256=[pins["server"]]),
            to("revoked", "revoked", crl_files=["pki/crl.pem"], **hard),
            to("revoked-soft", "revoked", crl_files=["pki/crl.pem"], **soft),
            to("revoked-unchecked", "revoked"),
            to("crl-good", "std", crl_files=["pki/crl.pem"], **hard),
            to("crl-der", "std", crl_files=["pki/crl.der"], **hard),
            to("crl-missing-hard", "std", crl_files=["pki/rogue-crl.pem"], **hard),
            to("crl-missing-soft", "std", crl_files=["pki/rogue-crl.pem"], **soft),
            to("crl-stale-hard", "std", crl_files=["pki/stale-crl.pem"], **hard),
        ])
        conf, log = start(fx, "proxy", routes, admin="admin", log_json=True)
    ENV.update(fx.env(pins=pins, conf=conf, log=log))


def tearDownModule():
    tear_down(ENV)


def tls_route(host, port, **keys):
    """A `tls` route for HOST.mygreatbank.test to the upstream on loopback `port`, with `keys`."""
    return route(f"{host}.mygreatbank.test", action="tls", connect=port, **keys)


def start(fx, name, routes, port="proxy", workers=1, admin=None, log_json=False, env=None, **upstream):
    """Starts proxy `name` of fixture `fx`, listening on its port `port` with `workers` ([admin] on port `admin`
    if named, JSON logs if asked), [upstream] trusting the test CA (or `ca_file`) with `upstream` settings, then
    `routes`; `env` is added to its environment. Returns (its config's path, its log's path)."""
    text = proxy_section(fx.ports[port], workers=workers, admin=fx.ports[admin] if admin else None)
    text += (table("[log]", format="json") if log_json else "") + upstream_section(**upstream) + routes
    fx.proxy(name, text, port=port, env=env)
    return fx.path(f"{name}.conf"), fx.path(f"{name}.log")


def own(test, *upstreams, ports=("proxy",)):
    """A fixture of `test`'s own in the module's folder (stopped when the test ends) with the ports `ports`, and
    upstream.py serving each certificate named in `upstreams` on a port of that name."""
    fx = ENV["fixture"].beside(test, ports=(*ports, *upstreams))
    for cert in upstreams:
        fx.python_upstream(cert, cert=cert)
    return fx


def get(host, path="/whoami", keep_alive=False, port=None):
    """One GET through the proxy on `port` (the module's by default) for https://HOST.mygreatbank.test (the route's
    upstream); (status, headers, body)."""
    return fixture.get(port or ENV["ports"]["proxy"], f"{host}.mygreatbank.test", path, close=not keep_alive, timeout=10)


def get_until(test, port, host, predicate, timeout=8):
    """GETs through the proxy on `port` until `predicate(status, proxy_status)` holds (the first may find the CRL
    still being fetched); [status, proxy_status]."""
    return fixture.get_until(test, port, f"{host}.mygreatbank.test", predicate, timeout, path="/whoami")


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

    def test_a_connect_to_a_pinned_tls_route_is_not_a_blind_tunnel(self):
        # A blind tunnel would let the client's own TLS through unchecked: the pins would not apply.
        for host in ("pinned", "revoked", "selfsigned"):
            with self.subTest(host=host), socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10) as s:
                name = f"{host}.mygreatbank.test:443"
                s.sendall(f"CONNECT {name} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
                head = s.recv(65536).decode("latin-1")
                self.assertTrue(head.startswith("HTTP/1.1 403"), head[:200])
                self.assertIn("blind tunnel cannot apply", head)

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

    def test_a_crl_whose_signature_does_not_verify_revokes_nothing(self):
        # A CRL in the test CA's name that lists the server, signed by another key: not the CA's CRL (a hostile
        # distribution point, or a man in the middle of an http:// one, could serve it). Soft mode allows a CRL it
        # cannot use, so it must not take that CRL's word that the server is revoked; hard mode refuses it as
        # unusable, not as a revocation.
        pki, d = ENV["pki"], ENV["dir"]
        sh("openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out forged-ca.key",
           "openssl x509 -in ca.pem -signkey forged-ca.key -out forged-ca.pem 2>/dev/null", cwd=pki)
        cnf = ca_config(pki, "forged-ca")
        sh(f"cp .db-ca/index.txt .db-forged-ca/index.txt",
           f"openssl ca -config '{cnf}' -gencrl -out forged.crl 2>/dev/null", cwd=pki)
        fx = own(self)
        port = fx.ports["proxy"]
        start(fx, "forged", "".join(tls_route(f"forged-{mode}", ENV["ports"]["revoked"], crl_files=["pki/forged.crl"], revocation=mode)
                                    for mode in ("soft", "hard")))
        status, headers, body = get("forged-soft", port=port)
        self.assertEqual(status, 200, headers.get("proxy-status", body))
        allowed = lambda: re.findall(r"forged-soft[^\n]*CRL unavailable[^\n]*CRL signature failure[^\n]*allowed", harness.read(f"{d}/forged.log"))
        self.assertTrue(harness.wait_until(allowed, 5, 0.1), harness.read(f"{d}/forged.log")[-2000:])
        self.assertEqual(len(allowed()), 1, "one unusable CRL, logged (and counted) twice")
        status, headers, body = get("forged-hard", port=port)
        self.assertEqual(status, 502, body)
        self.assertIn("CRL unavailable", headers["proxy-status"])
        self.assertNotIn("presented a revoked", headers["proxy-status"])

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
        fx = own(self, "later")
        port = fx.ports["proxy"]
        start(fx, "later", tls_route("later", fx.ports["later"], crl_files=["pki/later-crl.pem"], revocation="hard"))
        self.assertEqual(get("later", keep_alive=True, port=port)[0], 200)  # pooled, and a session to resume
        sh(f"openssl ca -config '{cnf}' -revoke later.pem 2>/dev/null",
           f"openssl ca -config '{cnf}' -gencrl -out later-crl.tmp 2>/dev/null && mv later-crl.tmp later-crl.pem", cwd=pki)
        self.assertTrue(harness.wait_until(lambda: "reloaded" in harness.read(f"{d}/later.log"), 10, 0.1),
                        harness.read(f"{d}/later.log"))
        status, headers, body = get("later", port=port)
        self.assertEqual(status, 502, body)
        self.assertIn("revoked", headers["proxy-status"])
        self.assertIn(serial_of(f"{pki}/later.pem"), headers["proxy-status"])

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

    def test_check_json_shows_each_routes_trust_settings(self):
        r = harness.run_cli("check", "--config", ENV["conf"], "--format", "json", timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        routes = {route["host"]: route for route in json.loads(r.stdout)["routes"]}
        revoked = routes["revoked.mygreatbank.test"]["trust"]
        self.assertEqual(revoked["revocation"], "hard")
        self.assertEqual(revoked["verify"], "chain")
        self.assertTrue(revoked["crl_files"][0].endswith("pki/crl.pem"))
        self.assertEqual(revoked["crls"][0]["issuer"], "CN=mtls-proxy test CA,O=mtls-proxy test")
        self.assertEqual(revoked["crls"][0]["revoked"], 1)
        self.assertFalse(revoked["crls"][0]["stale"])
        self.assertEqual(revoked["ocsp_staple"], "requested")
        self.assertTrue(routes["crl-stale-hard.mygreatbank.test"]["trust"]["crls"][0]["stale"])
        self.assertEqual(routes["selfsigned.mygreatbank.test"]["trust"]["verify"], "pin-only")
        self.assertEqual(routes["selfsigned.mygreatbank.test"]["trust"]["pins"], [ENV["pins"]["self"]])
        self.assertTrue(routes["report-only.mygreatbank.test"]["trust"]["pin_report_only"])
        policy = routes["policy12.mygreatbank.test"]["trust"]["tls_policy"]
        self.assertEqual((policy["min_version"], policy["max_version"]), ("1.2", "1.2"))
        self.assertEqual(policy["ciphers"], ["ECDHE-ECDSA-AES256-GCM-SHA384"])
        self.assertEqual(routes["policy13.mygreatbank.test"]["trust"]["tls_policy"]["min_version"], "1.3")
        self.assertFalse(routes["pinned.mygreatbank.test"]["trust"]["require_ocsp_staple"])

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


def access_lines(log, host, count):
    """The access-log lines of the proxy writing `log` for `host`, once there are `count` of them (the log is
    written a moment after each request) or after 5 s."""
    lines = []

    def enough():
        lines[:] = [l for l in harness.json_log_lines(log) if l.get("host") == host and "status" in l]
        return len(lines) >= count
    harness.wait_until(enough, 5, 0.1)
    return lines


class CRLServer(http.server.ThreadingHTTPServer):
    """A CRL distribution point on loopback: path -> bytes (anything else is 404); counts what it served. `delays`
    (path -> seconds) makes it wait before answering; `tls` (cert, key) serves it over https."""
    daemon_threads = True

    def __init__(self, files, delays=None, tls=None):
        self.files, self.hits, self.delays, self.tls = files, [], delays or {}, tls
        self.handshake_failures = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(h):
                self.hits.append(h.path)
                time.sleep(self.delays.get(h.path, 0))
                body = self.files.get(h.path)
                if body is None:
                    h.send_response(404)
                    h.send_header("Content-Length", "0")
                    h.end_headers()
                    return
                h.send_response(200)
                h.send_header("Content-Type", "application/pkix-crl")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def finish_request(self, request, client_address):
        if self.tls:
            try:
                request.settimeout(5)
                request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                self.handshake_failures.append(str(e))
                return
        super().finish_request(request, client_address)

    @property
    def base(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"


class CRLFetch(unittest.TestCase):
    """crl_fetch = true: CRLs from the leaf's distribution points, fetched over HTTP by the proxy off the request
    path (here from a loopback server, allowed by [upstream] allow_private), cached until nextUpdate."""

    @classmethod
    def setUpClass(cls):
        pki, d = ENV["pki"], ENV["dir"]
        cnf = ca_config(pki, "ca")
        cls.dp = CRLServer({})
        dp = f"http://127.0.0.1:{cls.dp.server_address[1]}"
        gone = f"http://127.0.0.1:{harness.free_port()}/gone.crl"
        points = {"good": f"{dp}/good.crl", "revoked": f"{dp}/good.crl", "gone": gone, "garbage": f"{dp}/garbage.crl",
                  "stale": f"{dp}/stale.crl", "rogue": f"{dp}/rogue.crl"}
        rogue_cnf = ca_config(pki, "rogue-ca")
        cmds = []
        for name, url in points.items():
            with open(f"{pki}/dp-{name}.ext", "w") as f:
                f.write(f"basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n"
                        f"subjectAltName = DNS:*.mygreatbank.test\ncrlDistributionPoints = URI:{url}\n")
            cmds += [f"openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out dp-{name}.key",
                     f"openssl req -new -key dp-{name}.key -subj '/O=mtls-proxy test/CN=dp-{name}.mygreatbank.test' -out dp-{name}.csr",
                     f"openssl ca -batch -config '{rogue_cnf if name == 'rogue' else cnf}' -extfile dp-{name}.ext -notext -days 30 -in dp-{name}.csr -out dp-{name}.pem 2>/dev/null"]
        cmds += [f"openssl ca -config '{cnf}' -revoke dp-revoked.pem 2>/dev/null",
                 f"openssl ca -config '{cnf}' -gencrl -out dp-good.crl 2>/dev/null && openssl crl -in dp-good.crl -outform der -out dp-good.der",
                 f"openssl ca -config '{cnf}' -gencrl -crl_lastupdate $(utc_in -7200) -crl_nextupdate $(utc_in -3600) -out dp-stale.crl 2>/dev/null"]
        sh(*cmds, cwd=pki)
        cls.dp.files.update({"/good.crl": open(f"{pki}/dp-good.der", "rb").read(),
                             "/stale.crl": open(f"{pki}/dp-stale.crl", "rb").read(),
                             "/garbage.crl": b"<html>not a CRL</html>"})
        with ENV["fixture"].beside(ports=("proxy", "admin", "guarded", *points)) as fx:
            for name in points:
                fx.python_upstream(name, cert=f"dp-{name}")

            def fetching(host, up, mode="hard"):
                return tls_route(host, fx.ports[up], crl_fetch=True, revocation=mode)
            routes = "".join([fetching("fetch-good", "good"), fetching("fetch-revoked", "revoked"),
                              fetching("fetch-revoked-soft", "revoked", "soft"), fetching("fetch-gone", "gone"),
                              fetching("fetch-gone-soft", "gone", "soft"), fetching("fetch-garbage", "garbage"),
                              fetching("fetch-stale", "stale"), fetching("fetch-rogue", "rogue")])
            start(fx, "fetch", routes, workers=2, admin="admin", allow_private=True, connect_timeout="1s", response_timeout="2s")
            # The same, without allow_private: the guard refuses the loopback distribution point.
            start(fx, "guarded", fetching("fetch-guarded", "good"), port="guarded")
        cls.fx, cls.ports = fx, fx.ports

    @classmethod
    def tearDownClass(cls):
        cls.fx.close()
        cls.dp.shutdown()
        cls.dp.server_close()

    def get_until(self, host, predicate, proxy="proxy"):
        """Requests until `predicate(status, proxy_status)` holds (the first may find the CRL still being fetched)."""
        return get_until(self, self.ports[proxy], host, predicate)

    def test_a_certificate_the_fetched_crl_does_not_list_is_served(self):
        self.get_until("fetch-good", lambda s, ps: s == 200)
        self.assertIn("/good.crl", self.dp.hits)
        text = harness.http_get(self.ports["admin"], "/metrics")[1]
        url = f"http://127.0.0.1:{self.dp.server_address[1]}/good.crl"
        self.assertIsNotNone(harness.metric(text, "mtls_proxy_crl_last_fetch_success_timestamp_seconds", None, file=url), text[-1500:])
        self.assertIsNotNone(harness.metric(text, "mtls_proxy_crl_next_update_timestamp_seconds", None, file=url))

    def test_a_certificate_the_fetched_crl_revokes_is_refused_in_both_modes(self):
        serial = serial_of(f"{ENV['pki']}/dp-revoked.pem")
        for host in ("fetch-revoked", "fetch-revoked-soft"):
            _, ps = self.get_until(host, lambda s, ps: s == 502 and "revoked" in ps and "CRL unavailable" not in ps)
            self.assertIn(serial, ps)
            self.assertIn("dp-revoked.mygreatbank.test", ps)

    def test_a_distribution_point_that_is_gone_refuses_in_hard_mode_only(self):
        _, ps = self.get_until("fetch-gone", lambda s, ps: s == 502 and "cannot connect" in ps)
        self.assertIn("CRL unavailable", ps)
        self.get_until("fetch-gone-soft", lambda s, ps: s == 200)

    def test_the_advice_for_an_unavailable_crl_names_what_the_route_uses(self):
        # A fetched CRL that is unavailable: the advice is about the distribution point (crl_fetch), not crl_files,
        # which the route does not set; a route with crl_files is told to update them.
        self.get_until("fetch-gone", lambda s, ps: s == 502 and "cannot connect" in ps)
        status, _, body = get("fetch-gone", port=self.ports["proxy"])
        self.assertEqual(status, 502, body)
        self.assertIn("crl_fetch", body)
        self.assertIn("distribution point", body)
        self.assertNotIn("crl_files", body)
        status, _, body = get("crl-missing-hard")
        self.assertEqual(status, 502, body)
        self.assertIn("crl_files", body)
        self.assertNotIn("crl_fetch", body)

    def test_garbage_from_the_distribution_point_is_no_crl(self):
        _, ps = self.get_until("fetch-garbage", lambda s, ps: s == 502 and "not a CRL" in ps)
        self.assertIn("CRL unavailable", ps)

    def test_a_stale_fetched_crl_is_unavailable_in_hard_mode(self):
        _, ps = self.get_until("fetch-stale", lambda s, ps: s == 502 and "expired" in ps)
        self.assertIn("CRL unavailable", ps)

    def answer_once_a_revoking_crl_is_fetched(self, name, upstream, first, routes=lambda up: ""):
        """The server dp-NAME names /NAME.crl as its distribution point; that CRL first does not list it (and is
        due again in 4 seconds), then revokes it. A proxy of the test's own with one hard crl_fetch route NAME
        (`routes(port)`: its table, given the upstream's port) to the server that `upstream(fixture)` starts on
        port "up" is asked until `first(status, proxy_status)` holds; once the new CRL is fetched, the answer to
        the next request: (status, headers, body)."""
        pki = ENV["pki"]
        cnf = ca_config(pki, "ca")
        leaf_with_dp(pki, f"dp-{name}", f"{self.dp.base}/{name}.crl")
        sh(f"openssl ca -config '{cnf}' -gencrl -crlsec 4 -out {name}-before.crl 2>/dev/null",
           f"openssl ca -config '{cnf}' -revoke dp-{name}.pem 2>/dev/null",
           f"openssl ca -config '{cnf}' -gencrl -out {name}-after.crl 2>/dev/null", cwd=pki)
        self.dp.files[f"/{name}.crl"] = open(f"{pki}/{name}-before.crl", "rb").read()
        fx = own(self, ports=("proxy", "up"))
        upstream(fx)
        start(fx, name, routes(fx.ports["up"]), allow_private=True)
        get_until(self, fx.ports["proxy"], name, first)  # verified against the first CRL; pooled
        self.dp.files[f"/{name}.crl"] = open(f"{pki}/{name}-after.crl", "rb").read()
        fetched = self.dp.hits.count(f"/{name}.crl")
        self.assertTrue(harness.wait_until(lambda: self.dp.hits.count(f"/{name}.crl") > fetched, 10, 0.1),
                        "the CRL was not fetched again ahead of its nextUpdate")
        time.sleep(0.5)  # the fetcher stores what it got
        return get(name, port=fx.ports["proxy"])

    def test_a_newly_fetched_crl_retires_pooled_connections_and_sessions(self):
        status, headers, body = self.answer_once_a_revoking_crl_is_fetched(
            "rot", lambda fx: fx.python_upstream("up", cert="dp-rot"), lambda s, ps: s == 200,
            lambda up: tls_route("rot", up, crl_fetch=True, revocation="hard"))
        self.assertEqual(status, 502, "served over a connection verified before the new CRL")
        self.assertIn("revoked", headers["proxy-status"])

    def test_a_newly_fetched_crl_retires_pooled_http2_connections(self):
        # As above with protocol = "h2": an HTTP/2 connection verified before the new CRL must take no new stream.
        try:
            import h2  # noqa: F401
        except ImportError:
            self.skipTest("python h2 library not installed (scripts/lib/deps.sh ensure_h2_deps)")
        status, headers, body = self.answer_once_a_revoking_crl_is_fetched(
            "rot2", lambda fx: fx.tls_script("h2hostile.py", "up", cert="dp-rot2", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            lambda s, ps: s != 502,
            lambda up: fixture.US_KEYS + route("rot2.mygreatbank.test", identity="us", protocol="h2", connect=up,
                                               crl_fetch=True, revocation="hard"))
        self.assertEqual(status, 502, "served over an HTTP/2 connection verified before the new CRL")
        self.assertIn("revoked", headers["proxy-status"])

    def test_a_crl_already_in_its_refresh_window_is_not_fetched_again_every_second(self):
        # A CA that publishes its next CRL only at nextUpdate: the CRL fetched is already inside the window in which
        # the proxy refreshes it (a fifth of its validity before nextUpdate, at most an hour). Fetching it again
        # every second until the next one appears hammers the CA's server, and each fetch retired every pooled
        # connection of the route.
        pki = ENV["pki"]
        cnf = ca_config(pki, "ca")
        url = f"http://127.0.0.1:{self.dp.server_address[1]}/late.crl"
        leaf_with_dp(pki, "dp-late", url)
        sh(f"openssl ca -config '{cnf}' -gencrl -crl_lastupdate $(utc_in -3600) -crl_nextupdate $(utc_in 120) -out late.crl 2>/dev/null", cwd=pki)
        self.dp.files["/late.crl"] = open(f"{pki}/late.crl", "rb").read()
        fx = own(self, "dp-late")
        port = fx.ports["proxy"]
        _, log = start(fx, "late", tls_route("late", fx.ports["dp-late"], crl_fetch=True, revocation="hard"), log_json=True,
                       allow_private=True)
        get_until(self, port, "late", lambda s, ps: s == 200)
        fetched = self.dp.hits.count("/late.crl")
        time.sleep(3.5)
        self.assertEqual(get("late", port=port)[0], 200)
        self.assertLessEqual(self.dp.hits.count("/late.crl") - fetched, 1, "the same CRL was fetched again every second")
        requests = access_lines(log, "late.mygreatbank.test", 2)
        self.assertTrue(requests and requests[-1].get("reused"), "the pooled connection was retired without a new CRL")

    def test_an_untrusted_certificate_does_not_send_the_proxy_to_its_distribution_point(self):
        # A server whose certificate no trusted CA issued names a distribution point: it is refused for its chain,
        # and the proxy fetches nothing on its say-so.
        for _ in range(3):
            status, headers, _ = get("fetch-rogue", port=self.ports["proxy"])
            self.assertEqual(status, 502)
            self.assertIn("error=tls_certificate_error", headers["proxy-status"])
            self.assertNotIn("CRL", headers["proxy-status"])
        time.sleep(1)
        self.assertNotIn("/rogue.crl", self.dp.hits)

    def test_the_ssrf_guard_applies_to_distribution_points(self):
        _, ps = self.get_until("fetch-guarded", lambda s, ps: s == 502 and "allow_private is off" in ps, proxy="guarded")
        self.assertIn("CRL unavailable", ps)


class OCSPStapling(unittest.TestCase):
    """Stapled OCSP responses from `openssl s_server -status_file`, made by `openssl ocsp` as the responder over the
    index of `openssl ca`. With require_ocsp_staple = true, a missing, foreign or revoked staple is refused."""

    @classmethod
    def setUpClass(cls):
        pki, d = ENV["pki"], ENV["dir"]
        cnf = ca_config(pki, "ca")
        index = f"{pki}/.db-ca/index.txt"

        def respond(cert, out):
            return (f"openssl ocsp -issuer ca.pem -cert {cert}.pem -no_nonce -reqout {out}.req 2>/dev/null && "
                    f"openssl ocsp -index '{index}' -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin {out}.req "
                    f"-respout {out}.resp -ndays 1 2>/dev/null")
        sh("openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out ocsp-good.key",
           "openssl req -new -key ocsp-good.key -subj '/O=mtls-proxy test/CN=ocsp-good.mygreatbank.test' -out ocsp-good.csr",
           f"openssl ca -batch -config '{cnf}' -extensions server -notext -days 30 -in ocsp-good.csr -out ocsp-good.pem 2>/dev/null",
           respond("ocsp-good", "good"), respond("revoked", "revoked"),
           # A "good" answer for the good certificate, signed by a responder no trusted CA vouches for.
           f"openssl ocsp -index '{index}' -rsigner rogue-ca.pem -rkey rogue-ca.key -CA ca.pem -reqin good.req "
           f"-respout forged.resp -ndays 1 2>/dev/null", cwd=pki)
        servers = {"good": ("ocsp-good", "good.resp"), "revoked": ("revoked", "revoked.resp"),
                   "missing": ("ocsp-good", None), "foreign": ("revoked", "good.resp"), "forged": ("ocsp-good", "forged.resp")}
        with ENV["fixture"].beside(ports=("proxy", *servers)) as fx:
            ports = fx.ports
            for name, (cert, resp) in servers.items():
                args = ["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{ports[name]}", "-cert", f"{pki}/{cert}.pem",
                        "-key", f"{pki}/{cert}.key", "-www"]
                if resp:
                    args += ["-status_file", f"{pki}/{resp}"]
                fx.procs.start(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                harness.wait_for_port(ports[name])
            routes = "".join(tls_route(f"ocsp-{name}", ports[name], require_ocsp_staple=True) for name in servers)
            start(fx, "ocsp", routes + tls_route("ocsp-optional", ports["missing"], crl_files=["pki/crl.pem"]))
        cls.fx, cls.ports = fx, fx.ports

    @classmethod
    def tearDownClass(cls):
        cls.fx.close()

    def status(self, host):
        """(status, Proxy-Status) of a GET / (s_server -www answers a page and closes)."""
        with socket.create_connection(("127.0.0.1", self.ports["proxy"]), timeout=10) as s:
            s.sendall(f"GET http://{host}.mygreatbank.test/ HTTP/1.1\r\nHost: {host}.mygreatbank.test\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        status = int(head.split()[1]) if head.startswith("HTTP/") else 0
        ps = next((l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("proxy-status:")), "")
        return status, ps

    def test_a_good_staple_is_accepted(self):
        self.assertEqual(self.status("ocsp-good"), (200, ""))

    def test_a_staple_saying_revoked_is_refused_naming_the_certificate(self):
        status, ps = self.status("ocsp-revoked")
        self.assertEqual(status, 502)
        self.assertIn("revoked", ps)
        self.assertIn(serial_of(f"{ENV['pki']}/revoked.pem"), ps)

    def test_no_staple_is_refused_when_required(self):
        status, ps = self.status("ocsp-missing")
        self.assertEqual(status, 502)
        self.assertIn("no OCSP response stapled", ps)

    def test_a_staple_for_another_certificate_is_refused(self):
        status, ps = self.status("ocsp-foreign")
        self.assertEqual(status, 502)
        self.assertIn("says nothing about this certificate", ps)

    def test_a_staple_signed_by_an_untrusted_responder_is_refused(self):
        status, ps = self.status("ocsp-forged")
        self.assertEqual(status, 502)
        self.assertIn("signature does not verify", ps)

    def test_no_staple_is_fine_when_not_required(self):
        self.assertEqual(self.status("ocsp-optional")[0], 200)



def issue(pki, cnf, name, cn, ext):
    """Shell commands: a P-256 key and a certificate `name`.pem for CN=`cn` from the `openssl ca` config `cnf`, with
    the extensions `ext` (lines)."""
    with open(f"{pki}/{name}.ext", "w") as f:
        f.write("\n".join(ext) + "\n")
    return [f"openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out {name}.key",
            f"openssl req -new -key {name}.key -subj '/O=mtls-proxy test/CN={cn}' -out {name}.csr",
            f"openssl ca -batch -config '{cnf}' -extfile {name}.ext -notext -days 30 -in {name}.csr -out {name}.pem 2>/dev/null"]


def server_ext(dp=None):
    ext = ["basicConstraints = CA:FALSE", "keyUsage = digitalSignature", "extendedKeyUsage = serverAuth",
           "subjectAltName = DNS:*.mygreatbank.test"]
    return ext + ([f"crlDistributionPoints = URI:{dp}"] if dp else [])


def leaf_with_dp(pki, name, dp):
    """A server certificate dp-`name` from the module's test CA naming `dp` as its CRL distribution point."""
    sh(*issue(pki, ca_config(pki, "ca"), name, f"{name}.mygreatbank.test", server_ext(dp)), cwd=pki)


class ChainRevocation(unittest.TestCase):
    """Revocation of the whole chain, not only the leaf: a three-level PKI made here (root -> intermediate ->
    leaf), CRLs from `openssl ca -gencrl` for the root (which revokes one intermediate) and for each intermediate,
    as files and from the distribution points the certificates name (the intermediate's points at the root's
    CRL). A revoked intermediate fails the handshake in both modes, with a 502 naming it (subject, serial)."""

    @classmethod
    def setUpClass(cls):
        pki, d = ENV["pki"], ENV["dir"]
        cls.dp = CRLServer({})
        dp = cls.dp.base
        sh("openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out chain-root.key",
           "openssl req -x509 -new -key chain-root.key -subj '/O=mtls-proxy test/CN=chain test root' -days 30 -sha256 "
           "-addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' "
           f"-addext 'crlDistributionPoints=URI:{dp}/anchor.crl' -out chain-root.pem 2>/dev/null",
           cwd=pki)
        root_cnf = ca_config(pki, "chain-root")
        cmds = []
        # Intermediates: good, revoked by the root ("bad"), and one whose distribution point is gone ("lost").
        for name in ("good", "bad", "lost"):
            point = f"{dp}/{'lost' if name == 'lost' else 'root'}.crl"
            cmds += issue(pki, root_cnf, f"chain-int-{name}", f"chain intermediate {name}",
                          ["basicConstraints = critical,CA:TRUE,pathlen:0", "keyUsage = critical,keyCertSign,cRLSign",
                           f"crlDistributionPoints = URI:{point}"])
        sh(*cmds, cwd=pki)
        cmds = []
        leaves = {"chain-good": "good", "chain-leaf-revoked": "good", "chain-under-bad": "bad", "chain-under-lost": "lost"}
        for leaf, issuer in leaves.items():
            cmds += issue(pki, ca_config(pki, f"chain-int-{issuer}"), leaf, f"{leaf}.mygreatbank.test",
                          server_ext(f"{dp}/int-{issuer}.crl"))
        sh(*cmds, cwd=pki)
        sh(f"openssl ca -config '{ca_config(pki, 'chain-root')}' -revoke chain-int-bad.pem -crl_reason keyCompromise 2>/dev/null",
           f"openssl ca -config '{ca_config(pki, 'chain-int-good')}' -revoke chain-leaf-revoked.pem 2>/dev/null",
           f"openssl ca -config '{ca_config(pki, 'chain-root')}' -gencrl -out chain-root.crl 2>/dev/null",
           *(f"openssl ca -config '{ca_config(pki, f'chain-int-{n}')}' -gencrl -out chain-int-{n}.crl 2>/dev/null" for n in ("good", "bad", "lost")),
           # Each server sends its leaf and its intermediate; the proxy trusts the root only.
           *(f"cat {leaf}.pem chain-int-{issuer}.pem > {leaf}-chain.pem && cp {leaf}.key {leaf}-chain.key" for leaf, issuer in leaves.items()),
           cwd=pki)
        cls.dp.files.update({"/root.crl": open(f"{pki}/chain-root.crl", "rb").read(),
                             **{f"/int-{n}.crl": open(f"{pki}/chain-int-{n}.crl", "rb").read() for n in ("good", "bad", "lost")}})
        cls.serials = {n: serial_of(f"{pki}/{n}.pem") for n in ("chain-int-bad", "chain-int-lost", "chain-leaf-revoked")}
        with ENV["fixture"].beside(ports=("proxy", *leaves)) as fx:
            for leaf in leaves:
                fx.python_upstream(leaf, cert=f"{leaf}-chain")

            def to(host, up, mode, **keys):
                return tls_route(host, fx.ports[up], revocation=mode, **keys)
            both = dict(crl_files=["pki/chain-root.crl", "pki/chain-int-good.crl", "pki/chain-int-bad.crl"])
            leaf_only = dict(crl_files=["pki/chain-int-good.crl", "pki/chain-int-bad.crl"])
            fetch = dict(crl_fetch=True)
            routes = "".join([
                to("file-good", "chain-good", "hard", **both),
                to("file-leaf-revoked", "chain-leaf-revoked", "hard", **both),
                to("file-int-revoked", "chain-under-bad", "hard", **both),
                to("file-int-revoked-soft", "chain-under-bad", "soft", **both),
                to("file-int-nocrl", "chain-good", "hard", **leaf_only),
                to("file-int-nocrl-soft", "chain-good", "soft", **leaf_only),
                to("file-leaf-scope", "chain-under-bad", "hard", **leaf_only, revocation_scope="leaf"),
                to("fetch-good", "chain-good", "hard", **fetch),
                to("fetch-int-revoked", "chain-under-bad", "hard", **fetch),
                to("fetch-int-revoked-soft", "chain-under-bad", "soft", **fetch),
                to("fetch-int-lost", "chain-under-lost", "hard", **fetch),
                to("fetch-int-lost-soft", "chain-under-lost", "soft", **fetch),
            ])
            cls.conf, cls.log = start(fx, "chain", routes, ca_file="pki/chain-root.pem", allow_private=True, connect_timeout="2s")
        cls.fx, cls.port = fx, fx.ports["proxy"]

    @classmethod
    def tearDownClass(cls):
        cls.fx.close()
        cls.dp.shutdown()
        cls.dp.server_close()

    def until(self, host, predicate):
        return get_until(self, self.port, host, predicate)

    def assert_names_intermediate(self, ps, name, word):
        self.assertIn(f"chain intermediate {name}", ps)
        self.assertIn(self.serials[f"chain-int-{name}"], ps)
        self.assertIn(word, ps)
        self.assertNotIn(".mygreatbank.test certificate", ps)

    def test_a_chain_whose_crls_list_nothing_of_it_is_served(self):
        self.assertEqual(get("file-good", port=self.port)[0], 200)

    def test_a_revoked_leaf_under_an_intermediate_is_still_refused(self):
        status, headers, body = get("file-leaf-revoked", port=self.port)
        self.assertEqual(status, 502, body)
        self.assertIn(self.serials["chain-leaf-revoked"], headers["proxy-status"])

    def test_an_intermediate_revoked_by_the_roots_crl_file_is_refused_in_both_modes(self):
        for host in ("file-int-revoked", "file-int-revoked-soft"):
            with self.subTest(host=host):
                status, headers, body = get(host, port=self.port)
                self.assertEqual(status, 502, body)
                ps = headers["proxy-status"]
                self.assertIn("error=tls_certificate_error", ps)
                self.assert_names_intermediate(ps, "bad", "revoked")
                self.assertNotIn("CRL unavailable", ps)

    def test_hard_mode_refuses_an_intermediate_no_crl_covers(self):
        status, headers, body = get("file-int-nocrl", port=self.port)
        self.assertEqual(status, 502, body)
        self.assertIn("CRL unavailable", headers["proxy-status"])
        self.assertIn("chain intermediate good", headers["proxy-status"])

    def test_revocation_scope_leaf_checks_the_servers_certificate_only(self):
        # Its intermediate is revoked and no CRL of the root is given: with the leaf only in scope, it is served.
        status, headers, body = get("file-leaf-scope", port=self.port)
        self.assertEqual(status, 200, headers.get("proxy-status", body))

    def test_soft_mode_allows_an_intermediate_no_crl_covers_and_logs_it(self):
        self.assertEqual(get("file-int-nocrl-soft", port=self.port)[0], 200)
        self.assertTrue(harness.wait_until(lambda: re.search(r"CRL unavailable for [^\n]*chain intermediate good", harness.read(self.log)), 5, 0.1),
                        harness.read(self.log)[-2000:])

    def test_the_fetcher_follows_the_intermediates_distribution_point_too(self):
        self.until("fetch-good", lambda s, ps: s == 200)
        self.assertIn("/int-good.crl", self.dp.hits)
        self.assertIn("/root.crl", self.dp.hits)
        self.assertNotIn("/anchor.crl", self.dp.hits, "the trust anchor's own distribution point was followed")

    def test_an_intermediate_revoked_by_the_fetched_root_crl_is_refused_in_both_modes(self):
        for host in ("fetch-int-revoked", "fetch-int-revoked-soft"):
            with self.subTest(host=host):
                _, ps = self.until(host, lambda s, ps: s == 502 and "revoked" in ps and "CRL unavailable" not in ps)
                self.assert_names_intermediate(ps, "bad", "revoked")

    def test_an_intermediates_distribution_point_that_is_gone_refuses_in_hard_mode_only(self):
        _, ps = self.until("fetch-int-lost", lambda s, ps: s == 502 and "HTTP 404" in ps)
        self.assertIn("CRL unavailable", ps)
        self.assert_names_intermediate(ps, "lost", "CRL unavailable")
        # The advice names what the route uses: crl_fetch, not crl_files.
        status, _, body = get("fetch-int-lost", port=self.port)
        self.assertEqual(status, 502, body)
        self.assertIn("crl_fetch", body)
        self.assertNotIn("crl_files", body)
        self.until("fetch-int-lost-soft", lambda s, ps: s == 200)


class HardModeFirstConnection(unittest.TestCase):
    """revocation = "hard" with crl_fetch: the first connection to a server whose CRL is not fetched yet waits for
    that fetch (at most the route's connect_timeout), then is decided on what it brought."""

    @classmethod
    def setUpClass(cls):
        pki = ENV["pki"]
        cls.dp = CRLServer({}, delays={"/slow.crl": 1.0, "/slow404.crl": 0.5, "/hang.crl": 6.0})
        for name in ("slow", "slow404", "hang", "quick"):
            leaf_with_dp(pki, f"wait-{name}", f"{cls.dp.base}/{name}.crl")
        cnf = ca_config(pki, "ca")
        sh(f"openssl ca -config '{cnf}' -gencrl -out wait.crl 2>/dev/null", cwd=pki)
        cls.dp.files["/slow.crl"] = cls.dp.files["/hang.crl"] = cls.dp.files["/quick.crl"] = open(f"{pki}/wait.crl", "rb").read()

    @classmethod
    def tearDownClass(cls):
        cls.dp.shutdown()
        cls.dp.server_close()

    def proxy_for(self, name, connect_timeout="5s", also=()):
        """A proxy of its own (its CRL cache starts empty) with one hard crl_fetch route to the wait-`name` server
        (host wait.mygreatbank.test), and one more for each (name, connect_timeout) of `also` (host wait-NAME)."""
        servers = (("wait", name, connect_timeout), *((f"wait-{n}", n, t) for n, t in also))
        fx = own(self, ports=("proxy", *(host for host, _, _ in servers)))
        routes = ""
        for host, server, timeout in servers:
            fx.python_upstream(host, cert=f"wait-{server}")
            routes += tls_route(host, fx.ports[host], connect_timeout=timeout, crl_fetch=True, revocation="hard")
        start(fx, f"wait-{name}", routes, log_json=True, allow_private=True)
        self.proxy = fx.procs.procs[-1]
        return fx.ports["proxy"]

    def test_the_first_connection_waits_for_its_crl_and_is_served(self):
        port = self.proxy_for("slow")
        status, headers, body = get("wait", port=port)
        self.assertEqual(status, 200, headers.get("proxy-status", body))
        self.assertIn("/slow.crl", self.dp.hits)

    def test_the_connection_that_waited_for_its_crl_is_pooled_and_reused(self):
        # It was verified against the CRL it waited for: nothing newer came since, so the next request reuses it.
        port = self.proxy_for("slow")
        self.assertEqual(get("wait", port=port)[0], 200)
        self.assertEqual(get("wait", port=port)[0], 200)
        log = f"{ENV['dir']}/wait-slow.log"
        requests = access_lines(log, "wait.mygreatbank.test", 2)
        self.assertEqual([l.get("reused") for l in requests[-2:]], [False, True], requests[-2:])

    def test_clients_that_leave_during_the_wait_and_a_reload_meanwhile_leave_the_proxy_serving(self):
        # The suspended handshakes' 50 ms timers stay armed while their clients go away (at every moment of the
        # wait) and while a reload replaces the config (under AddressSanitizer in CI: no use after free).
        port = self.proxy_for("hang", connect_timeout="2s")
        proxy = self.proxy
        name = "wait.mygreatbank.test"

        def leave(after):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET http://{name}/ HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
                time.sleep(after)
        threads = [threading.Thread(target=leave, args=(i * 0.1,)) for i in range(25)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        os.kill(proxy.pid, signal.SIGHUP)
        for t in threads:
            t.join()
        log = harness.read(f"{ENV['dir']}/wait-hang.log")
        self.assertIn("reloaded", log)
        self.assertIsNone(proxy.poll(), log[-2000:])
        status, headers, body = get("wait", port=port)
        self.assertEqual(status, 502, body)
        self.assertIn("CRL unavailable", headers.get("proxy-status", ""))

    def test_the_first_connection_is_refused_naming_the_failed_fetch(self):
        port = self.proxy_for("slow404")
        status, headers, body = get("wait", port=port)
        self.assertEqual(status, 502, body)
        ps = headers["proxy-status"]
        self.assertIn("CRL unavailable", ps)
        self.assertIn("HTTP 404", ps)
        self.assertNotIn("being fetched", ps)

    def test_the_wait_ends_with_the_routes_connect_timeout(self):
        port = self.proxy_for("hang", connect_timeout="1s")
        started = time.monotonic()
        status, headers, body = get("wait", port=port)
        took = time.monotonic() - started
        self.assertEqual(status, 502, body)
        self.assertIn("CRL unavailable", headers["proxy-status"])
        self.assertIn("being fetched", headers["proxy-status"])
        self.assertLess(took, 3.5, "the first connection waited past the route's connect_timeout")
        self.assertGreater(took, 0.8, "it did not wait for the fetch at all")


    def test_a_distribution_point_that_hangs_holds_up_no_other_crl(self):
        # One route's CRL server takes 6 s to answer (it could take response_timeout, every retry); another route's
        # first connection, asked while that fetch is under way, gets its own CRL from a prompt server in time.
        port = self.proxy_for("hang", connect_timeout="1s", also=[("quick", "3s")])
        self.assertEqual(get("wait", port=port)[0], 502)
        started = time.monotonic()
        status, headers, body = get("wait-quick", port=port)
        self.assertEqual(status, 200, headers.get("proxy-status", body))
        self.assertLess(time.monotonic() - started, 2.5)
        self.assertIn("/quick.crl", self.dp.hits)


class ChainWithTooManyDistributionPoints(unittest.TestCase):
    """A chain naming more CRL distribution points than the proxy follows for one chain (8): root -> four
    intermediates -> server, two points each. The first 8 (the server's and the three lower intermediates') are
    fetched; the top intermediate's are not, so hard mode must refuse at once, saying so, not wait for a fetch
    that never starts until connect_timeout, at every connection."""

    def test_hard_mode_refuses_at_once_naming_the_limit(self):
        pki, d = ENV["pki"], ENV["dir"]
        dp = CRLServer({})
        self.addCleanup(dp.server_close)
        self.addCleanup(dp.shutdown)
        sh("openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out wide0.key",
           "openssl req -x509 -new -key wide0.key -subj '/O=mtls-proxy test/CN=wide root' -days 30 -sha256 "
           "-addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' -out wide0.pem 2>/dev/null",
           cwd=pki)
        for i in range(1, 5):
            sh(*issue(pki, ca_config(pki, f"wide{i - 1}"), f"wide{i}", f"wide intermediate {i}",
                      ["basicConstraints = critical,CA:TRUE", "keyUsage = critical,keyCertSign,cRLSign",
                       f"crlDistributionPoints = URI:{dp.base}/w{i - 1}a.crl,URI:{dp.base}/w{i - 1}b.crl"]), cwd=pki)
        sh(*issue(pki, ca_config(pki, "wide4"), "wide-leaf", "wide.mygreatbank.test",
                  server_ext() + [f"crlDistributionPoints = URI:{dp.base}/w4a.crl,URI:{dp.base}/w4b.crl"]), cwd=pki)
        sh(*(f"openssl ca -config '{ca_config(pki, f'wide{i}')}' -gencrl -out wide{i}.crl 2>/dev/null" for i in range(5)),
           "cat wide-leaf.pem wide4.pem wide3.pem wide2.pem wide1.pem > wide-chain.pem && cp wide-leaf.key wide-chain.key",
           cwd=pki)
        for i in range(5):
            dp.files[f"/w{i}a.crl"] = dp.files[f"/w{i}b.crl"] = open(f"{pki}/wide{i}.crl", "rb").read()
        fx = own(self, "wide-chain")
        port = fx.ports["proxy"]
        start(fx, "wide", tls_route("wide", fx.ports["wide-chain"], connect_timeout="4s", crl_fetch=True, revocation="hard"),
              ca_file="pki/wide0.pem", allow_private=True)
        for attempt in range(2):
            started = time.monotonic()
            status, headers, body = get("wide", port=port)
            took = time.monotonic() - started
            self.assertEqual(status, 502, body)
            ps = headers.get("proxy-status", "")
            self.assertIn("CRL unavailable", ps)
            self.assertIn("wide intermediate 1", ps)
            self.assertIn("not followed", ps)
            self.assertLess(took, 2.5, f"attempt {attempt}: waited {took:.1f} s for a fetch that never starts")
        self.assertNotIn("/w0a.crl", dp.hits)


class HTTPSDistributionPoints(unittest.TestCase):
    """https:// CRL distribution points: fetched over TLS verified against the system trust store (here made the
    test CA's with SSL_CERT_FILE, OpenSSL's own variable), with the same address guard as http://."""

    @classmethod
    def setUpClass(cls):
        pki, d = ENV["pki"], ENV["dir"]
        cls.dp = CRLServer({}, tls=(f"{pki}/server.pem", f"{pki}/server.key"))
        cls.untrusted = CRLServer({}, tls=(f"{pki}/rogue-server.pem", f"{pki}/rogue-server.key"))
        cnf = ca_config(pki, "ca")
        leaf_with_dp(pki, "https-good", f"{cls.dp.base}/good.crl")
        leaf_with_dp(pki, "https-revoked", f"{cls.dp.base}/good.crl")
        leaf_with_dp(pki, "https-untrusted", f"{cls.untrusted.base}/good.crl")
        sh(f"openssl ca -config '{cnf}' -revoke https-revoked.pem 2>/dev/null",
           f"openssl ca -config '{cnf}' -gencrl -out https.crl 2>/dev/null", cwd=pki)
        crl = open(f"{pki}/https.crl", "rb").read()
        cls.dp.files["/good.crl"] = cls.untrusted.files["/good.crl"] = crl
        with ENV["fixture"].beside(ports=("proxy", "guarded", "good", "revoked", "untrusted")) as fx:
            for name in ("good", "revoked", "untrusted"):
                fx.python_upstream(name, cert=f"https-{name}")

            def fetching(name):
                return tls_route(f"https-{name}", fx.ports[name], crl_fetch=True, revocation="hard")
            env = {"SSL_CERT_FILE": f"{pki}/ca.pem"}
            start(fx, "https-dp", "".join(fetching(n) for n in ("good", "revoked", "untrusted")), env=env, allow_private=True)
            start(fx, "https-guarded", fetching("good"), port="guarded", env=env)
        cls.fx, cls.ports = fx, fx.ports

    @classmethod
    def tearDownClass(cls):
        cls.fx.close()
        for server in (cls.dp, cls.untrusted):
            server.shutdown()
            server.server_close()

    def test_a_crl_fetched_over_https_serves_a_certificate_it_does_not_list(self):
        get_until(self, self.ports["proxy"], "https-good", lambda s, ps: s == 200)
        self.assertIn("/good.crl", self.dp.hits)

    def test_a_crl_fetched_over_https_refuses_the_certificate_it_revokes(self):
        _, ps = get_until(self, self.ports["proxy"], "https-revoked", lambda s, ps: s == 502 and "revoked" in ps and "CRL unavailable" not in ps)
        self.assertIn(serial_of(f"{ENV['pki']}/https-revoked.pem"), ps)

    def test_a_distribution_point_whose_tls_does_not_verify_is_not_used(self):
        _, ps = get_until(self, self.ports["proxy"], "https-untrusted", lambda s, ps: s == 502 and "verif" in ps)
        self.assertIn("CRL unavailable", ps)
        self.assertEqual(self.untrusted.hits, [], "the proxy sent its request over TLS it did not verify")
        self.assertTrue(self.untrusted.handshake_failures, "the proxy never tried the https distribution point")

    def test_the_address_guard_applies_to_https_distribution_points(self):
        _, ps = get_until(self, self.ports["guarded"], "https-good", lambda s, ps: s == 502 and "allow_private is off" in ps)
        self.assertIn("CRL unavailable", ps)


def crl_series(metrics, file_suffix):
    """The mtls_proxy_crl_* series whose `file` label ends with `file_suffix`."""
    return [l for l in metrics.splitlines() if l.startswith("mtls_proxy_crl_") and re.search(r'file="[^"]*' + re.escape(file_suffix) + '"', l)]


class ReloadDropsRevocationData(unittest.TestCase):
    """A reload that turns crl_fetch off, or removes a CRL file, leaves nothing of the old revocation data in use:
    the server the old CRL revoked is served, the metrics stop naming the CRL, and turning crl_fetch on again
    fetches anew instead of using what was fetched before."""

    def test_turning_crl_fetch_off_and_removing_a_crl_file(self):
        pki, d = ENV["pki"], ENV["dir"]
        cnf = ca_config(pki, "ca")
        dp = CRLServer({})
        self.addCleanup(dp.server_close)
        self.addCleanup(dp.shutdown)
        url = f"{dp.base}/reload.crl"
        leaf_with_dp(pki, "reload-fetched", url)
        sh(f"openssl ca -config '{cnf}' -gencrl -out reload-before.crl 2>/dev/null",
           f"openssl ca -config '{cnf}' -revoke reload-fetched.pem 2>/dev/null",
           f"openssl ca -config '{cnf}' -gencrl -out reload-after.crl 2>/dev/null", cwd=pki)
        dp.files["/reload.crl"] = open(f"{pki}/reload-after.crl", "rb").read()
        fx = own(self, "reload-fetched", ports=("proxy", "admin"))
        port, admin = fx.ports["proxy"], fx.ports["admin"]

        def routes(fetch, files):
            return (tls_route("fetched", fx.ports["reload-fetched"], **(dict(crl_fetch=True, revocation="hard") if fetch else {}))
                    + tls_route("filed", ENV["ports"]["revoked"], **(dict(crl_files=["pki/crl.pem"], revocation="hard") if files else {})))

        def config(fetch, files):
            return (proxy_section(port, admin=admin) + upstream_section(allow_private=True) + routes(fetch, files))
        conf, log = start(fx, "reload-crl", routes(True, True), admin="admin", allow_private=True)
        proxy = fx.procs.procs[-1]
        get_until(self, port, "fetched", lambda s, ps: s == 502 and "revoked" in ps)
        self.assertEqual(get("filed", port=port)[0], 502)
        metrics = harness.http_get(admin, "/metrics")[1]
        self.assertIsNotNone(harness.metric(metrics, "mtls_proxy_crl_next_update_timestamp_seconds", None, file=url))
        self.assertTrue(crl_series(metrics, "pki/crl.pem"), metrics[-2000:])

        def reload(text):
            reloads = harness.read(log).count("reloaded")
            harness.write_file(conf, text)
            os.kill(proxy.pid, signal.SIGHUP)
            self.assertTrue(harness.wait_until(lambda: harness.read(log).count("reloaded") > reloads, 10, 0.1), harness.read(log)[-2000:])

        reload(config(False, False))
        self.assertEqual(get("fetched", port=port)[0], 200, "the CRL fetched under the old config is still used")
        self.assertEqual(get("filed", port=port)[0], 200, "the removed CRL file is still used")
        metrics = harness.http_get(admin, "/metrics")[1]
        self.assertIsNone(harness.metric(metrics, "mtls_proxy_crl_next_update_timestamp_seconds", None, file=url),
                          "the metrics still show a CRL no route fetches (its staleness alert would fire)")
        self.assertIsNone(harness.metric(metrics, "mtls_proxy_crl_last_fetch_success_timestamp_seconds", None, file=url))
        self.assertEqual(crl_series(metrics, "pki/crl.pem"), [])
        status, body = harness.http_get(admin, "/readyz?verbose")
        self.assertNotIn("revocation=", body)

        # On again, with the distribution point now serving a CRL that does not list the server: fetched anew.
        hits = len(dp.hits)
        dp.files["/reload.crl"] = open(f"{pki}/reload-before.crl", "rb").read()
        reload(config(True, False))
        get_until(self, port, "fetched", lambda s, ps: s == 200)
        self.assertGreater(len(dp.hits), hits, "turned on again, crl_fetch used the CRL fetched before instead of fetching")

if __name__ == "__main__":
    harness.run_suite()
