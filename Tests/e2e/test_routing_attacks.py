#!/usr/bin/env python3
"""A hostile client against the route decision (issue 11): every request that reaches the upstream must be one
that no other route would have matched after the upstream's own reading of it. Three readings are checked on
what the upstream received: Python's http.server (decode once, normpath), nginx (decode, merge slashes,
resolve dots) and Tomcat/Spring (cut ;parameters from each segment, then merge and resolve). Paths that some
server reads as a path under another route are refused with 400, and never forwarded."""
import json, os, posixpath, socket, ssl, subprocess, sys, tempfile, time, unittest
from urllib.parse import unquote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, loopback, proxy_section, route, table, tear_down  # noqa: E402

ENV = {}
SECRET = "attack-secret-value"
# Deny prefixes per host, as the config below writes them.
DENIED = {"api.mygreatbank.test": ["/admin/"], "files.mygreatbank.test": ["/files/private"]}


def setUpModule():
    with Fixture("mtls-proxy-routing-attacks-", dns=True, ports=("proxy", "recorder", "sidecar")) as fx:
        ports, dns = fx.ports, fx.dns
        fx.recorder("recorder", "upstream.jsonl", optional_client_cert=True)
        rec = ports["recorder"]
        config = ("\n" + proxy_section(ports["proxy"], workers=2, unmatched="deny", intercept=True) + harness.us_identity(dns.port)
                  + route("api.mygreatbank.test", name="admin deny", path="/admin/", action="deny")
                  + route("api.mygreatbank.test", name="api", identity="us", connect=rec)
                  + route("files.mygreatbank.test", name="files private", path="/files/private", action="deny")
                  + route("files.mygreatbank.test", name="files", path="/files", identity="us", escaped_slashes="keep", connect=rec)
                  + route("files.mygreatbank.test", name="files rest", action="deny")
                  + route("[::1]", name="v6 deny", action="deny")
                  + route("127.0.0.1", name="v4 deny", action="deny")
                  + route("*.internal.mygreatbank.test", name="internal deny", action="deny")
                  + route("*", name="everything else", action="tls", connect=rec)
                  + table("[[listener]]", listen=loopback(ports["sidecar"]), upstream="https://API.mygreatbank.test."))
        fx.write("proxy.conf", config)
        local_ca = fx.local_ca("proxy.conf")
        fx.proxy("proxy")
    ENV.update(fx.env(local_ca=local_ca))


def tearDownModule():
    tear_down(ENV)


def raw(data, port=None, wait=5.0):
    return harness.send_raw(port or ENV["ports"]["proxy"], data, wait)[0]


def status_of(answer):
    return answer.split(" ", 2)[1] if answer.startswith("HTTP/1.1 ") else "none"


def send(authority, path, tag, host_header=None, port=None):
    target = f"http://{authority}{path}" if port is None else path
    sep = "&" if "?" in path else "?"
    head = f"GET {target}{sep}t={tag}&secret={SECRET} HTTP/1.1\r\nHost: {host_header or authority}\r\nConnection: close\r\n\r\n"
    answer = raw(head.encode("latin-1"), port=port)
    return status_of(answer), answer


def upstream_saw(tag):
    records = harness.recorded_requests(f"{ENV['dir']}/upstream.jsonl", settle=0.2)
    return [r for r in records if f"t={tag}&" in r["request_line"]]


# The readings of a path the upstream received, as some servers make them.
def _resolve(path):
    trailing = path.endswith("/") and path != "/"
    out = posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")
    return out + "/" if trailing and not out.endswith("/") else out


def python_reading(p):
    return _resolve(unquote(p.split("?", 1)[0].split("#", 1)[0]))


def nginx_reading(p):
    return _resolve(unquote(p.split("?", 1)[0]).replace("\\", "/"))


def tomcat_reading(p):
    segments = [s.split(";", 1)[0] for s in p.split("?", 1)[0].split("/")]
    return _resolve(unquote("/".join(segments)))


def iis_reading(p):
    """IIS and Windows file systems drop dots and spaces at the end of each segment."""
    segments = [s.rstrip(". ") for s in unquote(p.split("?", 1)[0]).split("/")]
    return _resolve("/".join(segments))


def under(path, prefix):
    """Whether `path` is under the route prefix `prefix`, which matches whole segments."""
    return path.startswith(prefix) and (prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/")


def readings(p):
    return {"http.server": python_reading(p), "nginx": nginx_reading(p), "tomcat": tomcat_reading(p), "iis": iis_reading(p)}


class ReadingsAgreeWithTheRoute(unittest.TestCase):
    """Each attack is sent; whatever is forwarded must not be read by any server as a path under a deny route."""

    ATTACKS = {
        "api.mygreatbank.test": [
            ("params-in-prefix", "/admin;x/secret"), ("empty-param", "/admin;/secret"), ("param-only-segment", "/;x/admin/secret"),
            ("param-only-empty", "/;/admin/"), ("enc-semicolon", "/admin%3Bx/secret"), ("jsessionid", "/admin;jsessionid=1/x"),
            ("upper", "/ADMIN/secret"), ("mixed-case-escape", "/%41dmin/secret"), ("double-enc", "/%2561dmin/secret"),
            ("double-enc-dots", "/v1/%252e%252e/admin/secret"), ("overlong-dot", "/v1/%C0%AE%C0%AE/admin/secret"),
            ("overlong-slash", "/v1/..%C0%AFadmin/secret"), ("space", "/admin%20/secret"), ("tab-escape", "/admin%09/secret"),
            ("query-dots", "/v1?/../admin/"), ("enc-query", "/v1%3F/../admin/"), ("enc-hash", "/admin%23/x"),
            ("no-slash", "/admin"), ("enc-slash", "/admin%2Fsecret"), ("dotdot-param", "/v1/..;/admin/secret"),
            ("dot-enc-semicolon", "/v1/.%3b/admin/secret"), ("backslash", "/v1\\..\\admin\\secret"),
            ("trailing-dot-seg", "/admin./secret"), ("plus", "/admin+/secret"),
        ],
        "files.mygreatbank.test": [
            ("kept-slash", "/files%2Fprivate/x"), ("kept-slash-lower", "/files%2fprivate"), ("kept-backslash", "/files%5Cprivate/x"),
            ("kept-double", "/files%2F%2Fprivate"), ("files-param", "/files;v=1/private/x"), ("files-ok-slash", "/files/a%2Fb"),
            ("files-ok", "/files/public/x"), ("kept-dotdot", "/files/x%2F..%2Fprivate"),
            ("files-trailing-dot", "/files/private."), ("files-trailing-dots", "/files/private../x"),
            ("files-trailing-space", "/files/private%20/x"), ("files-dot-ok", "/files/private.txt"),
        ],
    }
    # Attacks that reached the upstream in a form a server reads under a deny route before this review.
    MUST_REFUSE = {"params-in-prefix", "empty-param", "param-only-segment", "param-only-empty", "enc-semicolon",
                   "jsessionid", "kept-slash", "kept-slash-lower", "kept-backslash", "kept-double", "files-param",
                   # Since prefixes match whole segments (/files/private. is not under /files/private).
                   "files-trailing-dot", "files-trailing-dots", "files-trailing-space"}

    def test_no_forwarded_request_is_read_under_a_deny_route(self):
        outcomes = []
        for host, attacks in self.ATTACKS.items():
            for tag, path in attacks:
                with self.subTest(tag):
                    status, answer = send(host, path, tag)
                    outcomes.append(f"{tag}: {status}")
                    seen = upstream_saw(tag)
                    self.assertNotIn(SECRET, answer.split("\r\n\r\n", 1)[-1] if status != "200" else "", "query echoed")
                    if tag in self.MUST_REFUSE:
                        self.assertEqual(status, "400", f"{tag}: {answer[:300]!r}")
                        self.assertIn("error=http_request_error", answer)
                    for record in seen:
                        sent = record["request_line"].split(" ")[1]
                        for server, reading in readings(sent).items():
                            for prefix in DENIED[host]:
                                self.assertFalse(under(reading, prefix),
                                                 f"{tag}: upstream got {sent!r}, which {server} reads as {reading!r}, under deny {prefix}")
                    if status != "200":
                        self.assertEqual(seen, [], f"{tag}: refused ({status}) but reached the upstream")
        print("\n  " + "; ".join(outcomes), file=sys.stderr)

    def test_harmless_parameters_and_kept_slashes_are_forwarded_as_routed(self):
        for host, tag, path, expected in [("api.mygreatbank.test", "param-ok", "/v1;x=1/y", "/v1;x=1/y"),
                                          ("files.mygreatbank.test", "keep-ok", "/files/a%2fb", "/files/a%2Fb")]:
            with self.subTest(tag):
                status, answer = send(host, path, tag)
                self.assertEqual(status, "200", answer[:300])
                self.assertEqual([r["request_line"].split(" ")[1].split("?")[0] for r in upstream_saw(tag)], [expected])

    def test_sidecar_refuses_parameters_that_hide_the_deny_route(self):
        port = ENV["ports"]["sidecar"]
        status, answer = send("", "/admin;x/secret", "side-param", host_header="api.mygreatbank.test", port=port)
        self.assertEqual(status, "400", answer[:300])
        self.assertEqual(upstream_saw("side-param"), [])
        status, answer = send("", "/admin/secret", "side-deny", host_header="elsewhere.test", port=port)
        self.assertEqual(status, "403", answer[:300])


class HostSpellings(unittest.TestCase):
    def test_ipv6_literal_spellings_meet_the_route_for_the_address(self):
        for tag, authority in [("v6-zeros", "[0:0:0:0:0:0:0:1]"), ("v6-short", "[0::1]"), ("v6-lead", "[0000::0001]"),
                               ("v6-port", "[::0:1]:443")]:
            with self.subTest(tag):
                status, answer = send(authority, "/x", tag)
                self.assertEqual(status, "403", answer[:300])
                self.assertIn("denied by v6 deny", answer)
                self.assertEqual(upstream_saw(tag), [])

    def test_ipv4_spellings_are_denied_or_refused(self):
        for tag, authority, expect in [("v4", "127.0.0.1", "403"), ("v4-dot", "127.0.0.1.", "403"), ("v4-port", "127.0.0.1:0443", "403"),
                                       ("v4-mapped", "[::ffff:127.0.0.1]", "400"), ("v4-mapped-hex", "[::ffff:7f00:1]", "400"),
                                       ("v4-short", "127.1", "400"), ("v4-int", "2130706433", "400"), ("v4-hex", "0x7f.0.0.1", "400"),
                                       ("v4-octal", "0177.0.0.1", "400"), ("zone", "[fe80::1%25lo]", "400")]:
            with self.subTest(tag):
                status, answer = send(authority, "/x", tag)
                self.assertEqual(status, expect, answer[:300])
                self.assertEqual(upstream_saw(tag), [])

    def test_names_wildcards_userinfo_and_host_header(self):
        for tag, authority, expect in [("wild", "a.internal.mygreatbank.test", "403"), ("wild-dot-upper", "A.Internal.MyGreatBank.Test.", "403"),
                                       ("wild-deep", "a.b.internal.mygreatbank.test", "403"), ("userinfo", "api.mygreatbank.test@a.internal.mygreatbank.test", "400"),
                                       ("userinfo-enc", "api.mygreatbank.test%40a.internal.mygreatbank.test", "400"),
                                       ("two-dots", "a.internal.mygreatbank.test..", "400"), ("backslash-host", "api.mygreatbank.test\\@a.internal.mygreatbank.test", "400")]:
            with self.subTest(tag):
                status, answer = send(authority, "/x", tag)
                self.assertEqual(status, expect, answer[:300])
                self.assertEqual(upstream_saw(tag), [])
        # The URL decides, not Host; Host is rewritten to the URL's host.
        status, answer = send("api.mygreatbank.test", "/admin/x", "host-disagrees", host_header="other.mygreatbank.test")
        self.assertEqual(status, "403", answer[:300])
        status, answer = send("other.mygreatbank.test", "/admin/x", "host-disagrees-2", host_header="api.mygreatbank.test")
        self.assertEqual(status, "200", answer[:300])
        self.assertEqual([r["headers"]["host"] for r in upstream_saw("host-disagrees-2")], [["other.mygreatbank.test"]])

    def test_origin_form_and_pipelined_requests_on_the_forward_listener(self):
        answer = raw(b"GET /admin/x HTTP/1.1\r\nHost: other.mygreatbank.test\r\nConnection: close\r\n\r\n")
        self.assertEqual(status_of(answer), "400", answer[:300])
        pipelined = (f"GET http://api.mygreatbank.test/v1/a?t=pipe-1&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n"
                     f"GET http://api.mygreatbank.test/admin;x/b?t=pipe-2&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n"
                     f"GET http://api.mygreatbank.test/admin/c?t=pipe-3&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\nConnection: close\r\n\r\n")
        answer = raw(pipelined.encode(), wait=8)
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:300])
        self.assertIn("HTTP/1.1 400", answer)
        self.assertEqual(len(upstream_saw("pipe-1")), 1)
        self.assertEqual(upstream_saw("pipe-2") + upstream_saw("pipe-3"), [])


class Explain(unittest.TestCase):
    """`explain` says what the proxy does with the attacks: the same refusals."""

    def explain(self, *args):
        return subprocess.run([harness.proxy_binary(), "explain", "--config", f"{ENV['dir']}/proxy.conf", *args],
                              capture_output=True, text=True)

    def test_explain_refuses_what_the_proxy_refuses(self):
        for args, expect in [(["http://api.mygreatbank.test/admin;x/secret"], "path parameter"),
                             (["http://files.mygreatbank.test/files%2Fprivate/x"], "encoded slash"),
                             (["http://127.1/x"], "non-canonical numeric address"),
                             (["http://[::ffff:127.0.0.1]/x"], "non-canonical numeric address"),
                             (["--method", "CONNECT", "[::ffff:7f00:1]:443"], "non-canonical numeric address"),
                             (["--method", "CONNECT", "0x7f000001:443"], "non-canonical numeric address")]:
            with self.subTest(args[-1]):
                r = self.explain(*args)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertRegex(r.stdout, r"(?m)^outcome +400")
                self.assertIn(expect, r.stdout)
        r = self.explain("http://[0:0::1]/x")
        self.assertRegex(r.stdout, r"(?m)^route +v6 deny: ")


class ProtocolUpgrades(unittest.TestCase):
    """An upgrade to HTTP/2 (h2c) would carry any number of requests, for any path, over the connection one routed
    request opened: the proxy does not pass it on. WebSocket (one request) is passed on."""

    def test_h2c_upgrade_is_not_passed_on(self):
        for tag, value in [("h2c", "h2c"), ("h2c-list", "websocket, h2c")]:
            with self.subTest(tag):
                head = (f"GET http://api.mygreatbank.test/v1/up?t={tag}&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                        f"Upgrade: {value}\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
                answer = raw(head.encode(), wait=4)
                self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:300])
                seen = upstream_saw(tag)
                self.assertEqual(len(seen), 1, seen)
                self.assertNotIn("h2c", json.dumps(seen[0]["headers"]).lower(), seen[0]["headers"])
                self.assertNotIn("http2-settings", seen[0]["headers"])
                if tag == "h2c-list":
                    self.assertEqual(seen[0]["headers"].get("upgrade"), ["websocket"])


class PathOverrideFields(unittest.TestCase):
    def test_fields_that_frameworks_take_as_the_path_are_not_forwarded(self):
        head = ("GET http://api.mygreatbank.test/v1/o?t=override&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                "X-Original-URL: /admin/x\r\nX-Rewrite-URL: /admin/x\r\nX-Original-URI: /admin/x\r\nConnection: close\r\n\r\n")
        answer = raw(head.encode())
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:300])
        seen = upstream_saw("override")
        self.assertEqual(len(seen), 1, seen)
        self.assertNotIn("/admin", json.dumps(seen[0]["headers"]), seen[0]["headers"])


def tunnel(authority, server_hostname):
    sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 200"):
        sock.close()
        return head.decode("latin-1"), None
    ctx = ssl.create_default_context(cafile=ENV["local_ca"])
    ctx.check_hostname = False
    return head.decode("latin-1"), ctx.wrap_socket(sock, server_hostname=server_hostname)


def exchange(tls, request):
    tls.sendall(request.encode("latin-1"))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = tls.recv(65536)
        if not chunk:
            break
        answer += chunk
    length = next((int(line.split(b":")[1]) for line in answer.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(answer.split(b"\r\n\r\n", 1)[-1]) < length:
        chunk = tls.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer.decode("latin-1")


class InsideTunnels(unittest.TestCase):
    def test_inner_host_and_absolute_form_do_not_move_the_request(self):
        head, tls = tunnel("API.MyGreatBank.Test.:443", "api.mygreatbank.test")
        self.assertIsNotNone(tls, head)
        try:
            # Host names another host: routed by the CONNECT host, Host rewritten to it.
            answer = exchange(tls, "GET /admin/x?t=in-host&x=1 HTTP/1.1\r\nHost: other.mygreatbank.test\r\n\r\n")
            self.assertTrue(answer.startswith("HTTP/1.1 403"), answer[:300])
            answer = exchange(tls, "GET /v1/y?t=in-host-ok&x=1 HTTP/1.1\r\nHost: other.mygreatbank.test\r\n\r\n")
            self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:300])
        finally:
            tls.close()
        self.assertEqual([r["headers"]["host"] for r in upstream_saw("in-host-ok")], [["api.mygreatbank.test"]])
        self.assertEqual(upstream_saw("in-host"), [])
        for tag, line in [("in-abs", "GET http://other.mygreatbank.test/v1/z?t=in-abs&x=1 HTTP/1.1"),
                          ("in-param", "GET /admin;x/secret?t=in-param&x=1 HTTP/1.1")]:
            with self.subTest(tag):
                head, tls = tunnel("api.mygreatbank.test:443", "api.mygreatbank.test")
                self.assertIsNotNone(tls, head)
                try:
                    exchange(tls, f"{line}\r\nHost: api.mygreatbank.test\r\n\r\n")
                except (OSError, ssl.SSLError):
                    pass
                finally:
                    tls.close()
                self.assertEqual(upstream_saw(tag), [], f"{tag} reached the upstream")

    def test_sni_with_a_trailing_dot_names_the_same_host(self):
        head, tls = tunnel("api.mygreatbank.test.:443", "API.mygreatbank.test.")
        self.assertIsNotNone(tls, head)
        try:
            answer = exchange(tls, "GET /%61dmin/y?t=sni-dot-param&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test.\r\n\r\n")
            self.assertTrue(answer.startswith("HTTP/1.1 403"), answer[:300])
        except (OSError, ssl.SSLError) as e:
            self.fail(f"the tunnel refused SNI api.mygreatbank.test. ({e})")
        finally:
            tls.close()
        self.assertEqual(upstream_saw("sni-dot-param"), [])
        head, tls = tunnel("api.mygreatbank.test:443", "api.mygreatbank.test.")
        try:
            answer = exchange(tls, "GET /v1/d?t=sni-dot&x=1 HTTP/1.1\r\nHost: api.mygreatbank.test.\r\n\r\n")
        except (OSError, ssl.SSLError) as e:
            self.fail(f"the tunnel refused SNI api.mygreatbank.test. ({e})")
        finally:
            tls.close()
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:300])
        self.assertEqual([r["headers"]["host"] for r in upstream_saw("sni-dot")], [["api.mygreatbank.test"]])

    def test_sni_for_another_host_is_refused(self):
        head, tls = None, None
        try:
            head, tls = tunnel("api.mygreatbank.test:443", "a.internal.mygreatbank.test")
            answer = exchange(tls, "GET /v1/sni?t=in-sni&x=1 HTTP/1.1\r\nHost: a.internal.mygreatbank.test\r\n\r\n")
            # If the handshake were accepted, the request must still be routed by the CONNECT host.
            self.assertFalse(answer.startswith("HTTP/1.1 200") and upstream_saw("in-sni")[0]["headers"]["host"] != ["api.mygreatbank.test"])
        except (OSError, ssl.SSLError):
            pass
        finally:
            if tls:
                tls.close()

    def test_connect_plan_by_host_and_port(self):
        for tag, authority, expect in [("c-v6", "[0::1]:443", "403"), ("c-mapped", "[::ffff:127.0.0.1]:443", "400"),
                                       ("c-wild", "a.internal.mygreatbank.test.:443", "403"), ("c-port", "api.mygreatbank.test:8443", "403"),
                                       ("c-files-rest", "files.mygreatbank.test:443", "200")]:
            with self.subTest(tag):
                head, tls = tunnel(authority, "files.mygreatbank.test")
                if tls:
                    tls.close()
                self.assertTrue(head.startswith(f"HTTP/1.1 {expect}"), head[:300])


if __name__ == "__main__":
    harness.run_suite()
