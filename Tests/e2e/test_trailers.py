#!/usr/bin/env python3
"""Trailer sections both ways (RFC 9110 §6.5, RFC 9112 §7.1.2, RFC 9113 §8.1), over HTTP/1.1 and HTTP/2 upstreams
that require and verify the client certificate: an in-process HTTP/1.1 TLS upstream (below) that sends trailers
and echoes the request's, and h2server.py (the Python `h2` library; /trailers, /echo-trailers, /sized-trailers).
Clients: a raw socket client (it sends request trailers, which curl cannot, and reads the response's chunks and
trailer section as they are on the wire) and curl (`--raw` shows the trailer section). See docs/trailers.md."""
import json, os, socket, subprocess, sys, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture, harness  # noqa: E402
from fixture import HAVE_H2, NO_H2  # noqa: E402
ENV = {}
SECRET = "s3cr3t-trailer-value"


def read_chunked(conn, rest):
    """Reads a chunked body from `conn` after `rest`; returns (body, trailer lines, bytes after the message)."""
    body = b""
    while True:
        while b"\r\n" not in rest:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("the peer closed inside the chunked body")
            rest += data
        line, rest = rest.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        while len(rest) < size + 2:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("the peer closed inside a chunk")
            rest += data
        body += rest[:size]
        rest = rest[size + 2:]
    trailers = []
    while True:
        while b"\r\n" not in rest:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("the peer closed inside the trailer section")
            rest += data
        line, rest = rest.split(b"\r\n", 1)
        if not line:
            return body, trailers, rest
        trailers.append(line)


class TrailerUpstream(fixture.RequestUpstream):
    """HTTP/1.1 over TLS, client certificate of the test CA required. Paths:
      /trailers            "hello" in chunks, then x-checksum and grpc-status trailer fields
      /echo-trailers       a JSON body of what the request brought (trailer lines, te, body), then trailers
      /framing-trailers    a trailer section with fields that must not be in one (and x-fine)
      /bad-trailer/KIND    a trailer section that is malformed (KIND: fold, nul, cr, name, nocolon)
      /big-trailer/N       a trailer section of N bytes (fields of 1000 bytes)
    """

    def answer(self, conn, head, path, rest):
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower().decode()] = value.strip().decode("latin-1")
        request_trailers = []
        body = b""
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body, request_trailers, rest = read_chunked(conn, rest)
        elif "content-length" in fields:
            n = int(fields["content-length"])
            while len(rest) < n:
                rest += conn.recv(65536)
            body, rest = rest[:n], rest[n:]

        def chunked(payload, trailer_lines, extra_head=b""):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra_head + b"\r\n"
                         + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n" + b"".join(t + b"\r\n" for t in trailer_lines) + b"\r\n")

        if path == "/trailers":
            chunked(b"hello", [b"x-checksum: abc", b"grpc-status: 0"], b"Trailer: x-checksum, grpc-status\r\n")
        elif path == "/echo-trailers":
            echo = json.dumps({"trailers": [t.decode("latin-1") for t in request_trailers], "te": fields.get("te"),
                               "trailer": fields.get("trailer"), "body": body.decode("latin-1")}).encode()
            chunked(echo, [b"grpc-status: 0", b"x-echoed: %d" % len(request_trailers)])
        elif path == "/framing-trailers":
            chunked(b"hello", [b"Content-Length: 99", b"Transfer-Encoding: chunked", b"Host: evil.test", b"Connection: close",
                               b"Set-Cookie: a=b", b"Proxy-Authenticate: Basic", b"Location: http://evil.test/", b"x-fine: 1"])
        elif path.startswith("/bad-trailer/"):
            bad = {"fold": b"x-a: 1\r\n  " + SECRET.encode(), "nul": b"x-a: " + SECRET.encode() + b"\x00",
                   "cr": b"x-a: " + SECRET.encode() + b"\rx", "name": b"x a: " + SECRET.encode(),
                   "nocolon": SECRET.encode()}[path.split("/")[2]]
            chunked(b"hello", [b"x-ok: 1", bad])
        elif path.startswith("/big-trailer/"):
            n = int(path.split("/")[2])
            chunked(b"hello", [b"x-big-%d: " % i + b"v" * 990 for i in range(n // 1000)])
        else:
            fixture.respond(conn, b"not found", b"404 Not Found")
        return rest


def setUpModule():
    with fixture.Fixture("mtls-proxy-trailers-", ports=("proxy", "small", "h2")) as fx:
        up = fx.server(TrailerUpstream(fx.pki))
        routes = fixture.route("h1.mygreatbank.test", identity="us", connect=up.port)
        if HAVE_H2:
            fx.tls_script("h2server.py", "h2", log=fx.path("h2server.log"))
            routes += fixture.route("h2.mygreatbank.test", identity="us", protocol="h2", connect=fx.ports["h2"])
        fx.proxy("proxy", fixture.proxy_section(fx.ports["proxy"]) + harness.US_IDENTITY + routes)
        # The same with small heads: a trailer section counts against max_header_bytes as a head does.
        fx.proxy("small", fixture.proxy_section(fx.ports["small"], max_header_bytes=8192) + harness.US_IDENTITY + routes)
    ENV.update(fx.env())


def tearDownModule():
    fixture.tear_down(ENV)


def send(request, port=None, timeout=5):
    """Sends `request` (bytes) to the proxy and reads one response: a dict with status, head (text), body,
    trailers (the trailer lines as text), and truncated when the connection ended or was reset before the
    response did."""
    s = socket.create_connection(("127.0.0.1", port or ENV["ports"]["proxy"]), timeout=timeout)
    result = dict(status=0, head="", body=b"", trailers=[], truncated=False)
    try:
        s.sendall(request)
        head, rest = harness.read_head(s)
        if head is None:
            result["truncated"] = True
            return result
        result["head"] = head.decode("latin-1")
        result["status"] = int(result["head"].split(" ")[1])
        lower = result["head"].lower()
        if "transfer-encoding: chunked" in lower:
            body, trailers, _ = read_chunked(s, rest)
            result["body"], result["trailers"] = body, [t.decode("latin-1") for t in trailers]
        elif "content-length:" in lower:
            n = int(lower.split("content-length:")[1].split("\r\n")[0])
            while len(rest) < n:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed inside the body")
                rest += data
            result["body"] = rest[:n]
        else:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                rest += data
            result["body"] = rest
    except (ConnectionError, socket.timeout):
        result["truncated"] = True
    finally:
        s.close()
    return result


def post(host, path, trailer_lines, body=b"hello", extra=b""):
    """A chunked POST through the forward listener with `trailer_lines` (bytes, without CRLF) after the last chunk."""
    return (b"POST http://" + host + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nTransfer-Encoding: chunked\r\n" + extra
            + b"\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + b"".join(t + b"\r\n" for t in trailer_lines) + b"\r\n")


def get(host, path, version=b"HTTP/1.1", extra=b""):
    return b"GET http://" + host + path + b" " + version + b"\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


def proxy_log():
    return harness.read(f"{ENV['dir']}/proxy.log") + harness.read(f"{ENV['dir']}/small.log")


class HTTP11Upstream(unittest.TestCase):
    host = b"h1.mygreatbank.test"

    def test_response_trailers_reach_a_chunked_client(self):
        r = send(get(self.host, b"/trailers"))
        self.assertEqual(r["status"], 200, r)
        self.assertFalse(r["truncated"], r)
        self.assertEqual(r["body"], b"hello")
        self.assertEqual(r["trailers"], ["x-checksum: abc", "grpc-status: 0"])

    def test_response_trailers_with_curl(self):
        out = subprocess.run(["curl", "-s", "--raw", "-x", f"http://127.0.0.1:{ENV['ports']['proxy']}",
                              f"http://{self.host.decode()}/trailers"], capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"0\r\nx-checksum: abc\r\ngrpc-status: 0\r\n\r\n", out.stdout)

    def test_request_trailers_reach_the_upstream(self):
        r = send(post(self.host, b"/echo-trailers", [b"x-request-checksum: 123", b"grpc-timeout: 1S"]))
        self.assertEqual(r["status"], 200, r)
        echo = json.loads(r["body"])
        self.assertEqual(echo["body"], "hello")
        self.assertEqual(echo["trailers"], ["x-request-checksum: 123", "grpc-timeout: 1S"])
        self.assertEqual(r["trailers"], ["grpc-status: 0", "x-echoed: 2"])

    def test_the_trailer_field_announcing_them_passes_both_ways(self):
        # RFC 9110 §6.6.2: `Trailer` is not a hop-by-hop field; it names what the trailer section will hold.
        r = send(get(self.host, b"/trailers"))
        self.assertIn("\r\ntrailer: x-checksum, grpc-status", r["head"].lower(), r)
        r = send(post(self.host, b"/echo-trailers", [b"x-request-checksum: 1"], extra=b"Trailer: x-request-checksum\r\n"))
        self.assertEqual(json.loads(r["body"])["trailer"], "x-request-checksum", r)

    def test_te_trailers_reaches_the_upstream(self):
        r = send(post(self.host, b"/echo-trailers", [], extra=b"TE: trailers\r\n"))
        self.assertEqual(json.loads(r["body"])["te"], "trailers", r)
        r = send(post(self.host, b"/echo-trailers", [], extra=b"TE: gzip\r\n"))
        self.assertIsNone(json.loads(r["body"])["te"], r)

    def test_fields_that_must_not_be_trailers_are_dropped_both_ways(self):
        r = send(post(self.host, b"/echo-trailers", [b"Content-Length: 99", b"Transfer-Encoding: chunked", b"Host: evil.test",
                                                     b"Connection: close", b"TE: gzip", b"Proxy-Authorization: Basic " + SECRET.encode(),
                                                     b"Authorization: Bearer x", b"Cookie: a=b", b"x-ok: 1"]))
        self.assertEqual(r["status"], 200, r)
        self.assertEqual(json.loads(r["body"])["trailers"], ["x-ok: 1"])
        r = send(get(self.host, b"/framing-trailers"))
        self.assertFalse(r["truncated"], r)
        self.assertEqual(r["trailers"], ["x-fine: 1"])

    def test_a_malformed_request_trailer_is_400_without_its_value(self):
        for bad in [b"x-a: 1\r\n  " + SECRET.encode(), b"x-a: " + SECRET.encode() + b"\x00", b"x-a: " + SECRET.encode() + b"\rx",
                    b"x a: " + SECRET.encode(), SECRET.encode(), b":path: /" + SECRET.encode()]:
            with self.subTest(bad=bad):
                r = send(post(self.host, b"/echo-trailers", [bad]))
                self.assertEqual(r["status"], 400, r)
                self.assertNotIn(SECRET.encode(), r["body"])
                self.assertIn("trailer", r["body"].decode().lower())
        self.assertNotIn(SECRET, proxy_log())

    def test_a_malformed_response_trailer_truncates_without_its_value(self):
        for kind in ["fold", "nul", "cr", "name", "nocolon"]:
            with self.subTest(kind=kind):
                # The head went out before the trailers came: the client's connection is reset (what it had not
                # read yet may be lost with it), never ended as if the response were complete.
                r = send(get(self.host, b"/bad-trailer/" + kind.encode()))
                self.assertTrue(r["truncated"], r)
                self.assertNotIn(SECRET, "".join(r["trailers"]))
        self.assertNotIn(SECRET, proxy_log())

    def test_a_trailer_section_counts_against_max_header_bytes(self):
        small = ENV["ports"]["small"]
        # A field of 6000 bytes fits in 8 KiB (a chunk line may not be that long, a field line may).
        big = b"x-digest: " + b"d" * 6000
        r = send(post(self.host, b"/echo-trailers", [big]), port=small)
        self.assertEqual(r["status"], 200, r)
        self.assertEqual(json.loads(r["body"])["trailers"], [big.decode()])
        r = send(post(self.host, b"/echo-trailers", [b"x-%d: " % i + b"v" * 990 for i in range(10)]), port=small)
        self.assertEqual(r["status"], 431, r)
        self.assertIn("8192", r["body"].decode())
        r = send(get(self.host, b"/big-trailer/7000"), port=small)
        self.assertFalse(r["truncated"], r)
        self.assertEqual(len(r["trailers"]), 7)
        r = send(get(self.host, b"/big-trailer/10000"), port=small)
        self.assertTrue(r["truncated"], r)

    def test_more_trailer_fields_than_a_head_may_have_is_400(self):
        r = send(post(self.host, b"/echo-trailers", [b"x-%d: 1" % i for i in range(257)]))
        self.assertEqual(r["status"], 400, r)
        self.assertIn("more than 256 trailer fields", r["body"].decode())
        r = send(post(self.host, b"/echo-trailers", [b"x-%d: 1" % i for i in range(256)]))
        self.assertEqual(len(json.loads(r["body"])["trailers"]), 256, r)

    def test_a_pipelined_request_after_a_trailer_section_is_served(self):
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        try:
            s.sendall(post(self.host, b"/echo-trailers", [b"x-n: 1"]) + get(self.host, b"/trailers"))
            head, rest = harness.read_head(s)
            body, trailers, rest = read_chunked(s, rest)
            self.assertEqual(json.loads(body)["trailers"], ["x-n: 1"])
            head, rest = harness.read_head(s, rest)
            self.assertIn(b" 200 ", head)
            body, trailers, rest = read_chunked(s, rest)
            self.assertEqual((body, trailers), (b"hello", [b"x-checksum: abc", b"grpc-status: 0"]))
        finally:
            s.close()

    def test_an_http10_client_gets_the_body_without_the_trailers(self):
        r = send(get(self.host, b"/trailers", version=b"HTTP/1.0"))
        self.assertEqual(r["status"], 200)
        self.assertEqual(r["body"], b"hello")

    def test_keep_alive_goes_on_after_trailers(self):
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        try:
            for _ in range(3):
                s.sendall(post(self.host, b"/echo-trailers", [b"x-n: 1"]))
                head, rest = harness.read_head(s)
                self.assertIn(b" 200 ", head)
                body, trailers, rest = read_chunked(s, rest)
                self.assertEqual(rest, b"")
                self.assertEqual(json.loads(body)["trailers"], ["x-n: 1"])
                self.assertEqual(trailers, [b"grpc-status: 0", b"x-echoed: 1"])
        finally:
            s.close()

    def test_chunked_applied_twice_is_400(self):
        r = send(b"POST http://h1.mygreatbank.test/echo-trailers HTTP/1.1\r\nHost: h1.mygreatbank.test\r\n"
                 b"Transfer-Encoding: chunked;x, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(r["status"], 400, r)


@unittest.skipUnless(HAVE_H2, NO_H2)
class HTTP2Upstream(unittest.TestCase):
    host = b"h2.mygreatbank.test"

    def test_response_trailers_reach_a_chunked_client(self):
        r = send(get(self.host, b"/trailers"))
        self.assertEqual(r["status"], 200, r)
        self.assertFalse(r["truncated"], r)
        self.assertEqual(r["body"], b"with trailers\n")
        self.assertEqual(r["trailers"], ["x-checksum: abc"])

    def test_response_trailers_with_curl(self):
        out = subprocess.run(["curl", "-s", "--raw", "-x", f"http://127.0.0.1:{ENV['ports']['proxy']}",
                              f"http://{self.host.decode()}/trailers"], capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"0\r\nx-checksum: abc\r\n\r\n", out.stdout)

    def test_request_trailers_become_a_trailer_headers_frame(self):
        r = send(post(self.host, b"/echo-trailers", [b"X-Request-Checksum: 123", b"Content-Length: 99", b"Host: evil.test",
                                                     b"TE: gzip", b"Connection: close", b"x-ok: 1"], extra=b"TE: trailers\r\n"))
        self.assertEqual(r["status"], 200, r)
        echo = json.loads(r["body"])
        self.assertEqual(echo["body"], "hello")
        self.assertEqual(echo["te"], "trailers")
        self.assertEqual(echo["trailers"], [["x-request-checksum", "123"], ["x-ok", "1"]])
        self.assertEqual(r["trailers"], ["grpc-status: 0", "x-echoed: 2"])

    def test_fields_that_must_not_be_trailers_are_dropped_from_the_response(self):
        # docs/trailers.md: the same fields are dropped both ways, whichever protocol the upstream speaks.
        r = send(get(self.host, b"/framing-trailers"))
        self.assertFalse(r["truncated"], r)
        self.assertEqual(r["body"], b"hello")
        self.assertEqual(r["trailers"], ["x-fine: 1"])

    def test_a_large_chunked_upload_then_its_trailers(self):
        body = bytes(range(256)) * 4096  # 1 MiB, sent as one chunk the proxy re-frames as DATA frames
        r = send(post(self.host, b"/echo-trailers", [b"x-sha: 1"], body=body), timeout=20)
        echo = json.loads(r["body"])
        self.assertEqual(echo["body"].encode("latin-1"), body)
        self.assertEqual(echo["trailers"], [["x-sha", "1"]])

    def test_a_response_with_content_length_keeps_it_and_drops_the_trailers(self):
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        try:
            for _ in range(2):  # the connection stays usable: nothing of the trailers leaks into it
                s.sendall(get(self.host, b"/sized-trailers"))
                head, body = harness.read_response(s)
                self.assertIn(b"content-length: 5", head.lower())
                self.assertEqual(body, b"hello")
        finally:
            s.close()

    def test_a_malformed_request_trailer_is_400(self):
        for bad in [b"x-a: " + SECRET.encode() + b"\x00", b"x-a: " + SECRET.encode() + b"\rx-b: 1", b":authority: evil.test",
                    b":status: 200", b"x-a: 1\r\n\tx-b: " + SECRET.encode()]:
            with self.subTest(bad=bad):
                r = send(post(self.host, b"/echo-trailers", [bad]))
                self.assertEqual(r["status"], 400, r)
                self.assertNotIn(SECRET.encode(), r["body"])

    def test_fields_named_by_connection_and_connection_specific_ones_never_reach_the_trailer_headers_frame(self):
        r = send(post(self.host, b"/echo-trailers", [b"X-Hop: 1", b"Keep-Alive: 1", b"Upgrade: h2c", b"Proxy-Connection: x",
                                                     b"TE: trailers", b"X-Upper-Case: 1"], extra=b"Connection: X-Hop\r\n"))
        self.assertEqual(json.loads(r["body"])["trailers"], [["x-upper-case", "1"]], r)


if __name__ == "__main__":
    harness.run_suite()
