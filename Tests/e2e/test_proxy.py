#!/usr/bin/env python3
"""End-to-end: real clients (curl, Python requests, HTTP_PROXY in the environment) through the proxy binary to
real TLS upstreams (nginx with ssl_verify_client on, a Python TLS server), all on loopback."""
import hashlib, json, os, socket, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, tear_down  # noqa: E402
import requests  # noqa: E402

ENV = {}


def setUpModule():
    with Fixture("mtls-proxy-e2e-", dns=True, ports=("proxy", "nginx_mtls", "nginx_tls", "files", "rejects13", "rejects12",
                                                     "untrusted", "mismatch", "refused", "stalls")) as fx:
        ports, dns = fx.ports, fx.dns
        fx.nginx()
        fx.python_upstream("files", ca="ca", require=True)
        fx.python_upstream("rejects13", ca="rogue-ca", require=True)
        fx.python_upstream("rejects12", ca="rogue-ca", require=True, max_tls="1.2")
        fx.python_upstream("untrusted", cert="rogue-server")
        fx.python_upstream("mismatch", cert="other-host")
        # A server whose TCP backlog accepts connections but which never speaks: the TLS handshake stalls.
        stall = fx.server(socket.socket())
        stall.bind(("127.0.0.1", ports["stalls"]))
        stall.listen(16)
        config = f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 2

[upstream]
ca_file = "pki/ca.pem"
connect_timeout = "2s"
nameservers = ["127.0.0.1:{dns.port}"]

[identities.us]
cert = "pki/fusion-us.pem"
key = "pki/fusion-us.key"

[identities.eu]
cert = "pki/fusion-eu.pem"
key = "pki/fusion-eu.key"

[[route]]
name = "bank EU API"
host = "api.mygreatbank.test"
path = "/eu/"
identity = "eu"
connect = "127.0.0.1:{ports['nginx_mtls']}"

[[route]]
name = "bank EU payments"
host = "api.mygreatbank.test"
path = "/payments/eu"
identity = "eu"
connect = "127.0.0.1:{ports['nginx_mtls']}"

[[route]]
name = "bank API"
host = "api.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['nginx_mtls']}"

[[route]]
host = "status.example.com"
action = "tls"
connect = "127.0.0.1:{ports['nginx_tls']}"

[[route]]
host = "files.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['files']}"

[[route]]
host = "rejects.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['rejects13']}"

[[route]]
host = "rejects12.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['rejects12']}"

[[route]]
host = "untrusted.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['untrusted']}"

[[route]]
host = "mismatch.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['mismatch']}"

[[route]]
host = "refused.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['refused']}"

[[route]]
host = "stalls.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['stalls']}"
connect_timeout = "500ms"

[[route]]
host = "slow.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['files']}"
response_timeout = "500ms"

[[route]]
host = "guarded.loopback.test"
identity = "us"

[[route]]
host = "*.loopback.test"
identity = "us"
allow_private = true

[[route]]
host = "127.0.0.1"
action = "tls"

[[route]]
host = "nowhere.invalid"
action = "tls"

[[route]]
name = "blocked"
host = "*.blocked.test"
action = "deny"
"""
        proxy = fx.proxy("proxy", config)
    ENV.update(fx.env(proxy=proxy, stall=stall, url=f"http://127.0.0.1:{ports['proxy']}", log=fx.path("proxy.log")))


def tearDownModule():
    tear_down(ENV)


def proxies():
    return {"http": ENV["url"]}


def curl(*args, env=None):
    r = subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, env=env or harness.clean_env())
    return r


def access_log():
    return harness.json_log_lines(ENV["log"])


class Identities(unittest.TestCase):
    def test_curl_with_x_presents_the_route_identity(self):
        r = curl("-i", "-x", ENV["url"], "http://api.mygreatbank.test/v1/accounts?x=1")
        out = r.stdout.decode()
        self.assertIn("HTTP/1.1 200", out)
        self.assertIn("X-Client-Subject: CN=fusion-us,O=mtls-proxy test", out)
        self.assertIn("X-Client-Verify: SUCCESS", out)

    def test_curl_with_http_proxy_in_the_environment(self):
        r = curl("-i", "http://api.mygreatbank.test/", env=harness.clean_env(http_proxy=ENV["url"]))
        self.assertIn("X-Client-Subject: CN=fusion-us", r.stdout.decode())

    def test_python_requests_with_proxies(self):
        r = requests.get("http://api.mygreatbank.test/", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["X-Client-Subject"], "CN=fusion-us,O=mtls-proxy test")
        self.assertEqual(r.text, "hello CN=fusion-us,O=mtls-proxy test\n")

    def test_python_requests_with_HTTP_PROXY_in_the_environment(self):
        code = "import requests; r = requests.get('http://api.mygreatbank.test/eu/x', timeout=10); print(r.status_code, r.headers['X-Client-Subject'])"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=harness.clean_env(HTTP_PROXY=ENV["url"]))
        self.assertEqual(r.stdout.decode().strip(), "200 CN=fusion-eu,O=mtls-proxy test", r.stderr.decode())

    def test_path_prefix_picks_another_identity(self):
        r = requests.get("http://api.mygreatbank.test/eu/accounts", proxies=proxies(), timeout=10)
        self.assertEqual(r.headers["X-Client-Subject"], "CN=fusion-eu,O=mtls-proxy test")
        r = requests.get("http://api.mygreatbank.test/euro", proxies=proxies(), timeout=10)
        self.assertEqual(r.headers["X-Client-Subject"], "CN=fusion-us,O=mtls-proxy test")

    def test_path_prefix_matches_whole_segments(self):
        # path = "/payments/eu" is the eu identity's for /payments/eu and below, not for /payments/europe.
        for path, subject in [("/payments/eu", "fusion-eu"), ("/payments/eu/1", "fusion-eu"),
                              ("/payments/europe/1", "fusion-us"), ("/payments/europe", "fusion-us")]:
            r = requests.get(f"http://api.mygreatbank.test{path}", proxies=proxies(), timeout=10)
            self.assertEqual(r.headers["X-Client-Subject"], f"CN={subject},O=mtls-proxy test", path)

    def test_tls_route_presents_no_certificate(self):
        r = requests.get("http://status.example.com/", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["X-Client-Verify"], "NONE")
        self.assertEqual(r.headers.get("X-Client-Subject", ""), "")

    def test_identities_never_share_a_connection(self):
        s = requests.Session()
        subjects = []
        for path in ["/a", "/eu/b", "/c", "/eu/d", "/e"]:
            subjects.append(s.get("http://api.mygreatbank.test" + path, proxies=proxies(), timeout=10).headers["X-Client-Subject"])
        self.assertEqual([x.split(",")[0] for x in subjects],
                         ["CN=fusion-us", "CN=fusion-eu", "CN=fusion-us", "CN=fusion-eu", "CN=fusion-us"])
        t = s.get("http://status.example.com/", proxies=proxies(), timeout=10)
        self.assertEqual(t.headers["X-Client-Verify"], "NONE")

    def test_name_resolved_by_the_asynchronous_resolver(self):
        port = ENV["ports"]["files"]
        r = requests.get(f"http://api.loopback.test:{port}/whoami", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["X-Client-Subject"], "fusion-us")
        self.assertEqual(r.headers["X-Seen-Host"], f"api.loopback.test:{port}")
        self.assertIn("api.loopback.test", [q[0] for q in ENV["dns"].queries])


class Denials(unittest.TestCase):
    def test_denied_route_403(self):
        r = requests.get("http://x.blocked.test/", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.headers["Proxy-Status"], 'mtls-proxy; error=http_request_denied; details="denied by blocked"')

    def test_unmatched_host_403_without_touching_the_network(self):
        before = len(ENV["dns"].queries)
        r = requests.get("http://not-configured.example/", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 403)
        self.assertIn("no route matches not-configured.example:443", r.text)
        self.assertEqual(len(ENV["dns"].queries), before)

    def test_connect_to_an_mtls_route_without_interception_is_403_with_advice(self):
        r = curl("-i", "-p", "-x", ENV["url"], "https://api.mygreatbank.test/")
        self.assertIn("403", r.stdout.decode() + r.stderr.decode())

    def test_an_http_url_tunnelled_to_port_80_of_an_mtls_route_is_served_without_interception(self):
        # curl -p (like Node's fetch through undici's ProxyAgent) tunnels http:// URLs: CONNECT host:80, plain
        # HTTP inside, served as a forward request with the route's certificate (issue 12).
        r = curl("-sS", "-p", "-x", ENV["url"], "-o", "/dev/null", "-w", "%{http_code}", "http://api.mygreatbank.test/a")
        self.assertEqual(r.stdout.decode(), "200", r.stderr)


class UpstreamFailures(unittest.TestCase):
    def get(self, host):
        return requests.get(f"http://{host}/", proxies=proxies(), timeout=15)

    def test_untrusted_upstream(self):
        r = self.get("untrusted.mygreatbank.test")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=tls_certificate_error", r.headers["Proxy-Status"])
        self.assertIn("unable to get local issuer certificate", r.text)
        self.assertIn("ca_file", r.text)

    def test_hostname_mismatch(self):
        r = self.get("mismatch.mygreatbank.test")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=tls_certificate_error", r.headers["Proxy-Status"])
        self.assertIn("hostname mismatch", r.text)

    def test_upstream_rejects_our_certificate_tls13(self):
        r = self.get("rejects.mygreatbank.test")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=tls_alert_received", r.headers["Proxy-Status"])
        self.assertIn("unknown_ca (48)", r.text)
        self.assertIn("identity us (CN=fusion-us", r.text)
        self.assertIn("allowlist", r.text)

    def test_upstream_rejects_our_certificate_tls12(self):
        r = self.get("rejects12.mygreatbank.test")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=tls_alert_received", r.headers["Proxy-Status"])
        self.assertIn("identity us", r.text)

    def test_connection_refused(self):
        r = self.get("refused.mygreatbank.test")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=connection_refused", r.headers["Proxy-Status"])

    def test_handshake_that_never_finishes_is_a_504(self):
        started = time.time()
        r = self.get("stalls.mygreatbank.test")
        self.assertEqual(r.status_code, 504)
        self.assertIn("error=connection_timeout", r.headers["Proxy-Status"])
        self.assertIn("connect_timeout 500ms", r.text)
        self.assertLess(time.time() - started, 5)

    def test_slow_response_is_a_504(self):
        r = requests.get("http://slow.mygreatbank.test/slow?ms=3000", proxies=proxies(), timeout=15)
        self.assertEqual(r.status_code, 504)
        self.assertIn("error=connection_read_timeout", r.headers["Proxy-Status"])
        self.assertIn("response_timeout 500ms", r.text)
        fast = requests.get("http://slow.mygreatbank.test/slow?ms=10", proxies=proxies(), timeout=15)
        self.assertEqual(fast.status_code, 200)

    def test_ssrf_guard_refuses_a_name_that_resolves_to_loopback(self):
        port = ENV["ports"]["files"]
        r = requests.get(f"http://guarded.loopback.test:{port}/whoami", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 403)
        self.assertIn("error=destination_ip_prohibited", r.headers["Proxy-Status"])
        self.assertIn("resolved to 127.0.0.1, a loopback address", r.text)
        self.assertIn("allow_private = true", r.text)

    def test_ssrf_guard_refuses_a_loopback_literal_and_numeric_tricks(self):
        port = ENV["ports"]["files"]
        r = requests.get(f"http://127.0.0.1:{port}/whoami", proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 403)
        self.assertIn("error=destination_ip_prohibited", r.headers["Proxy-Status"])
        for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1"):
            r = requests.get(f"http://{host}:{port}/", proxies=proxies(), timeout=10)
            self.assertEqual(r.status_code, 400, host)
            self.assertIn("non-canonical numeric address", r.text)

    def test_dns_failure(self):
        r = self.get("nowhere.invalid")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=dns_error", r.headers["Proxy-Status"])
        self.assertIn("cannot resolve nowhere.invalid", r.text)


class Bodies(unittest.TestCase):
    def files(self, path):
        return f"http://files.mygreatbank.test{path}"

    def expected(self, size):
        block = bytes(range(256)) * 256
        h = hashlib.sha256()
        left = size
        while left:
            part = block[:min(left, len(block))]
            h.update(part)
            left -= len(part)
        return h.hexdigest()

    def test_downloads_in_every_framing(self):
        for path, size in [("/download", 3_000_000), ("/chunked", 2_500_000), ("/close", 1_000_000), ("/download", 0)]:
            r = requests.get(self.files(f"{path}?size={size}"), proxies=proxies(), timeout=30)
            self.assertEqual(r.status_code, 200)
            self.assertEqual(len(r.content), size, path)
            self.assertEqual(hashlib.sha256(r.content).hexdigest(), self.expected(size), path)

    def test_close_delimited_response_for_http10_client(self):
        r = curl("--http1.0", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-x", ENV["url"],
                 self.files("/chunked?size=100000"))
        self.assertEqual(r.stdout.decode(), "200 100000", r.stderr.decode())

    def test_uploads_content_length_and_chunked(self):
        data = os.urandom(5_000_000)
        want = f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"
        r = requests.post(self.files("/echo"), data=data, proxies=proxies(), timeout=30)
        self.assertEqual(r.text, want)
        r = requests.post(self.files("/echo"), data=iter([data[:1_000_000], data[1_000_000:]]), proxies=proxies(), timeout=30)
        self.assertEqual(r.text, want)

    def test_head_request(self):
        r = requests.head(self.files("/download?size=1234"), proxies=proxies(), timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["Content-Length"], "1234")


class Hops(unittest.TestCase):
    def test_origin_form_host_via_and_hop_by_hop(self):
        r = requests.get("http://files.mygreatbank.test/headers?q=1", proxies=proxies(), timeout=10,
                         headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-Keep": "yes",
                                  "Proxy-Authorization": "Basic dTpw", "TE": "gzip, trailers", "Upgrade": "websocket"})
        seen = r.json()
        self.assertEqual(seen["request_line"], "GET /headers?q=1 HTTP/1.1")
        names = {k.lower(): v for k, v in seen["headers"]}
        self.assertEqual(names["host"], "files.mygreatbank.test")
        self.assertEqual(names["via"], "1.1 mtls-proxy")
        self.assertEqual(names["x-keep"], "yes")
        for hop in ["x-hop", "proxy-authorization", "upgrade", "proxy-connection", "keep-alive"]:
            self.assertNotIn(hop, names)
        # TE passes only as `trailers` (the proxy carries trailers to an HTTP/1.1 client; docs/trailers.md).
        self.assertEqual(names["te"], "trailers")
        self.assertEqual(r.headers["Via"], "1.1 mtls-proxy")

    def test_keep_alive_reuses_the_upstream_connection(self):
        s = requests.Session()
        for _ in range(3):
            self.assertEqual(s.get("http://files.mygreatbank.test/whoami?reuse=1", proxies=proxies(), timeout=10).status_code, 200)
        # Each worker writes its access log lines in batches, within 100 ms: wait for them.
        deadline = time.time() + 10
        while time.time() < deadline and len([r for r in access_log() if r["path"] == "/whoami" and r["host"] == "files.mygreatbank.test"]) < 3:
            time.sleep(0.05)
        records = [r for r in access_log() if r["path"] == "/whoami" and r["host"] == "files.mygreatbank.test"]
        self.assertGreaterEqual(len(records), 3)
        self.assertTrue(any(r["reused"] for r in records[-3:]), records[-3:])
        fresh = [r for r in access_log() if r["identity"] == "us" and not r["reused"] and r["status"] == 200]
        self.assertTrue(fresh)
        for r in fresh:
            self.assertIsNotNone(r["tls_handshake_ms"], r)
            self.assertIsNotNone(r["tcp_connect_ms"], r)
            self.assertGreaterEqual(r["connect_ms"], r["tls_handshake_ms"])
            self.assertIn(r["tls_version"], ("TLSv1.2", "TLSv1.3"))
        for r in records[-3:]:
            self.assertEqual(r["identity"], "us")
            self.assertNotIn("reuse=1", json.dumps(r))  # the query string is never logged


if __name__ == "__main__":
    harness.run_suite()
