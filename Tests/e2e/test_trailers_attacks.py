#!/usr/bin/env python3
"""Trailer sections attacked (docs/trailers.md): a client that tries to smuggle a request, a field or a framing
change through a request's trailer section, and a hostile HTTP/1.1 upstream that sends split, oversized, endless
or out-of-place trailer sections. The upstream is an in-process TLS server that requires the client certificate
and records the raw bytes the proxy sent it, so each test checks what went on the wire, not what a parser made
of it. test_trailers.py holds the working cases."""
import json, os, socket, sys, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture, harness  # noqa: E402
from test_trailers import read_chunked  # noqa: E402

ENV = {}
SECRET = "s3cr3t-attack-value"
HOST = b"h1.mygreatbank.test"
NGINX = b"api.mygreatbank.test"  # nginx, ssl_verify_client on


class HostileUpstream(fixture.RequestUpstream):
    """HTTP/1.1 over TLS, client certificate required. Records each connection it accepts (`connections`).
      /raw                 answers with a JSON body: the raw bytes of the request's chunked body, trailers included,
                           exactly as they came (latin-1)
      /split-trailers      a chunked "hello" whose trailer section is written one byte per TCP segment
      /endless-trailers    a trailer section of 100,000 small fields (past the field count long before its end)
      /trailers            a chunked "hello" with an x-checksum trailer
      /big-then-trailers   4 MiB in chunks, then 200 trailer fields
      /early-413           413 before the body, then closes
      /connection-named-trailer   Connection names X-Hop; the trailer section holds x-hop fields and x-ok
      /head-chunked, /204-trailers, /sized-then-trailers   a body and trailer section where none may be
    """

    def __init__(self, pki):
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__(pki)

    def serve(self, conn):
        with self.lock:
            self.connections += 1
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().serve(conn)

    def answer(self, conn, head, path, rest):
        lower = head.lower()
        if path == "/raw":
            raw = b""
            if b"expect: 100-continue" in lower:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if b"transfer-encoding: chunked" in lower:
                # Read up to the end of the trailer section as a strict reader would: the last chunk, then lines to
                # an empty one. Everything read is echoed, so the test sees any byte the proxy added.
                while True:
                    end = rest.find(b"\r\n0\r\n") if not rest.startswith(b"0\r\n") else -2
                    if end != -1:
                        start = end + 5 if end >= 0 else 3
                        tail_end = rest.find(b"\r\n\r\n", start - 2)
                        if tail_end != -1:
                            raw, rest = rest[:tail_end + 4], rest[tail_end + 4:]
                            break
                    data = conn.recv(65536)
                    if not data:
                        return None
                    rest += data
            body = json.dumps({"raw": raw.decode("latin-1"), "head": head.decode("latin-1")}).encode()
            fixture.respond(conn, body)
            return rest
        if path == "/split-trailers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            for b in b"0\r\nx-checksum: abc\r\ngrpc-status: 0\r\n\r\n":
                conn.sendall(bytes([b]))
                time.sleep(0.002)
            return rest
        if path == "/endless-trailers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
            try:
                for i in range(100000):
                    conn.sendall(b"x-%d: 1\r\n" % i)
            except OSError:
                pass
            return None
        if path == "/early-200":  # answers before the body, then reads the body and its trailer section
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
            if b"transfer-encoding: chunked" in lower:
                _, _, rest = read_chunked(conn, rest)
            return rest
        if path == "/early-413":  # answers before the body, and closes without reading it
            conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
            return None
        if path == "/head-chunked":  # a HEAD response with a chunked body and trailers after it anyway
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-evil: 1\r\n\r\n")
            return rest
        if path == "/204-trailers":  # a 204 followed by a last chunk and a trailer section
            conn.sendall(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-evil: 1\r\n\r\n")
            return rest
        if path == "/sized-then-trailers":  # a Content-Length body followed by a trailer section
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello0\r\nx-evil: 1\r\n\r\n")
            return rest
        if path == "/connection-named-trailer":  # Connection names x-hop, and the trailer section holds it
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n\r\n"
                         b"5\r\nhello\r\n0\r\nx-hop: 1\r\nX-HOP: 2\r\nx-ok: 1\r\n\r\n")
            return rest
        if path == "/big-then-trailers":  # 4 MiB in 64 KiB chunks, then 200 trailer fields
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(64):
                conn.sendall(b"10000\r\n" + bytes([i]) * 65536 + b"\r\n")
            conn.sendall(b"0\r\n" + b"".join(b"x-%d: %d\r\n" % (i, i) for i in range(200)) + b"\r\n")
            return rest
        if path == "/trailers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n")
            return rest
        fixture.respond(conn, b"not found", b"404 Not Found")
        return rest


def setUpModule():
    with fixture.Fixture("mtls-proxy-trailer-attacks-", ports=("proxy", "impatient", "nginx_mtls", "nginx_tls")) as fx:
        up = fx.server(HostileUpstream(fx.pki))
        fx.nginx()
        routes = fixture.route(HOST.decode(), identity="us", connect=up.port)
        routes += fixture.route(NGINX.decode(), identity="us", connect=fx.ports["nginx_mtls"])
        fx.proxy("proxy", fixture.proxy_section(fx.ports["proxy"]) + harness.US_IDENTITY + routes)
        fx.proxy("impatient", fixture.proxy_section(fx.ports["impatient"], client_timeout="1s") + harness.US_IDENTITY + routes)
    ENV.update(fx.env())
    ENV["upstream"] = up


def tearDownModule():
    fixture.tear_down(ENV)


def connect(port="proxy"):
    return socket.create_connection(("127.0.0.1", ENV["ports"][port]), timeout=5)


def exchange(request, split=False):
    """Sends `request` (one byte per segment with `split`) and reads one Content-Length or chunked response:
    (status, head, body, trailer lines), status 0 when the connection ended first."""
    s = connect()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if split:
            for b in request:
                s.sendall(bytes([b]))
        else:
            s.sendall(request)
        head, rest = harness.read_head(s)
        if head is None:
            return 0, b"", rest, []
        status = int(head.split(b" ")[1])
        if b"transfer-encoding: chunked" in head.lower():
            body, trailers, _ = read_chunked(s, rest)
            return status, head, body, trailers
        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < n:
            data = s.recv(65536)
            if not data:
                break
            rest += data
        return status, head, rest[:n], []
    except (ConnectionError, socket.timeout):
        return 0, b"", b"", []
    finally:
        s.close()


def post(trailer_block, body=b"hello", path=b"/raw"):
    """A chunked POST whose trailer section is `trailer_block` as is (the bytes after the last chunk's line)."""
    return (b"POST http://" + HOST + path + b" HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer_block)


def proxy_log():
    return harness.read(f"{ENV['dir']}/proxy.log") + harness.read(f"{ENV['dir']}/impatient.log")


class RequestSmuggling(unittest.TestCase):
    def forwarded(self, trailer_block, split=False):
        status, _, body, _ = exchange(post(trailer_block), split=split)
        self.assertEqual(status, 200, body)
        return json.loads(body)["raw"].encode("latin-1")

    def test_a_request_line_in_the_trailer_section_is_400(self):
        for block in [b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n", b"GET /x HTTP/1.1\r\n\r\n"]:
            with self.subTest(block=block):
                self.assertEqual(exchange(post(block))[0], 400)

    def test_framing_and_routing_fields_in_any_case_are_dropped(self):
        block = (b"content-length: 0\r\nTRANSFER-ENCODING: chunked\r\nhOsT: evil.test\r\ncOnNeCtIoN: close\r\n"
                 b"Expect: 100-continue\r\nx-ok: 1\r\n\r\n")
        self.assertEqual(self.forwarded(block), b"5\r\nhello\r\n0\r\nx-ok: 1\r\n\r\n")

    def test_a_field_the_connection_field_names_is_dropped_from_the_trailer_section_too(self):
        # RFC 9110 §7.6.1: a proxy removes "any header or trailer field(s)" named by a connection option.
        request = post(b"x-hop: 1\r\nX-Hop: 2\r\nx-ok: 1\r\n\r\n").replace(b"Transfer-Encoding: chunked\r\n",
                                                                            b"Transfer-Encoding: chunked\r\nConnection: X-Hop\r\n")
        status, _, body, _ = exchange(request)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["raw"].encode("latin-1"), b"5\r\nhello\r\n0\r\nx-ok: 1\r\n\r\n")

    def test_fields_some_frameworks_read_as_the_path_are_dropped_as_from_the_head(self):
        # The head never carries X-Original-URL and the like upstream (a path no route decided); nor may the trailer
        # section, which some recipients fold into the head.
        block = b"X-Original-URL: /admin\r\nx-rewrite-url: /admin\r\nX-ORIGINAL-URI: /admin\r\nx-ok: 1\r\n\r\n"
        self.assertEqual(self.forwarded(block), b"5\r\nhello\r\n0\r\nx-ok: 1\r\n\r\n")

    def test_odd_spacing_line_ends_and_names_are_400(self):
        for block in [b"Content-Length : 5\r\n\r\n", b" Content-Length: 5\r\n\r\n", b"x-a: 1\r\n Content-Length: 5\r\n\r\n",
                      b"x-a: 1\r\n\tx\r\n\r\n", b"Content-Length: 5\n\r\n", b"x-a: 1\n\n", b": " + SECRET.encode() + b"\r\n\r\n",
                      b"x-a: 1\r\r\n\r\n", b"Content\x00Length: 5\r\n\r\n", b"x-a: " + SECRET.encode() + b"\x7f\r\n\r\n",
                      b"x-a: 1\r\n\n"]:
            with self.subTest(block=block):
                status, _, body, _ = exchange(post(block))
                self.assertEqual(status, 400, body)
                self.assertNotIn(SECRET.encode(), body)
        self.assertNotIn(SECRET, proxy_log())

    def test_a_trailer_section_split_at_every_byte_is_forwarded_whole(self):
        block = b"x-checksum: abc\r\nContent-Length: 9\r\ngrpc-timeout: 1S\r\n\r\n"
        raw = self.forwarded(block, split=True)  # the data may be re-chunked as it trickled in; the section may not
        self.assertTrue(raw.endswith(b"\r\n0\r\nx-checksum: abc\r\ngrpc-timeout: 1S\r\n\r\n"), raw)

    def test_a_bad_trailer_split_at_every_byte_is_400(self):
        self.assertEqual(exchange(post(b"x-a: 1\r\nContent-Length : 5\r\n\r\n"), split=True)[0], 400)

    def test_a_very_long_trailer_line_is_431_not_a_hang(self):
        status, _, body, _ = exchange(post(b"x-a: " + b"v" * 200000 + b"\r\n\r\n"))
        self.assertEqual(status, 431, body)

    def test_bytes_after_the_trailer_section_are_the_next_request(self):
        # The request after the trailer section is a request of its own, answered in turn: never forwarded as part
        # of the first one's body.
        s = connect()
        try:
            s.sendall(post(b"x-a: 1\r\n\r\n") + b"GET http://" + HOST + b"/trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
            head, rest = harness.read_head(s)
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < n:
                rest += s.recv(65536)
            self.assertEqual(json.loads(rest[:n])["raw"].encode("latin-1"), b"5\r\nhello\r\n0\r\nx-a: 1\r\n\r\n")
            head, rest = harness.read_head(s, rest[n:])
            self.assertIn(b" 200 ", head)
            body, trailers, _ = read_chunked(s, rest)
            self.assertEqual((body, trailers), (b"hello", [b"x-checksum: abc"]))
        finally:
            s.close()


class NginxReadsWhatTheProxyWrites(unittest.TestCase):
    """nginx (ssl_verify_client on) reads each request's chunked body and trailer section to its end (it discards
    the body of a `return`) before the next request on the same upstream connection: a trailer section that nginx
    framed otherwise than the proxy would show as a broken or missing second answer, or in nginx's error log."""

    def test_requests_with_trailer_sections_then_requests_on_the_same_connections(self):
        sections = [b"x-a: 1\r\n\r\n", b"x-digest: " + b"d" * 6000 + b"\r\ngrpc-timeout: 1S\r\n\r\n",
                    b"Content-Length: 0\r\nHost: evil\r\nX-Hop: 1\r\n\r\n", b"\r\n", b"x-empty:\r\nx-tab:\tv\t\r\n\r\n"]
        s = connect()
        try:
            for section in sections:
                for request in [post(section).replace(HOST, NGINX).replace(b"Transfer-Encoding: chunked\r\n",
                                                                           b"Transfer-Encoding: chunked\r\nConnection: X-Hop\r\n"),
                                b"GET http://" + NGINX + b"/ HTTP/1.1\r\nHost: " + NGINX + b"\r\n\r\n"]:
                    s.sendall(request)
                    head, body = harness.read_response(s)
                    self.assertIn(b" 200 ", head, section)
                    self.assertTrue(body.startswith(b"hello "), body)
        finally:
            s.close()
        self.assertNotIn("chunked", harness.read(f"{ENV['dir']}/nginx-error.log"))


class HostileResponses(unittest.TestCase):
    def test_a_response_trailer_section_split_at_every_byte_arrives_whole(self):
        status, _, body, trailers = exchange(b"GET http://" + HOST + b"/split-trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
        self.assertEqual((status, body, trailers), (200, b"hello", [b"x-checksum: abc", b"grpc-status: 0"]))

    def test_a_field_the_connection_field_names_is_dropped_from_the_response_trailers(self):
        status, _, body, trailers = exchange(b"GET http://" + HOST + b"/connection-named-trailer HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
        self.assertEqual((status, body, trailers), (200, b"hello", [b"x-ok: 1"]))

    def test_a_slow_reader_gets_the_whole_trailer_section_after_a_large_body(self):
        # The client's side fills and the proxy stops reading the upstream, maybe inside the trailer section: it
        # resumes where it stopped.
        s = connect()
        s.settimeout(20)
        try:
            s.sendall(b"GET http://" + HOST + b"/big-then-trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
            head, rest = harness.read_head(s)
            time.sleep(1)
            body, trailers, rest = read_chunked(s, rest)
            self.assertEqual(body, b"".join(bytes([i]) * 65536 for i in range(64)))
            self.assertEqual(trailers, [b"x-%d: %d" % (i, i) for i in range(200)])
            self.assertEqual(rest, b"")
        finally:
            s.close()

    def test_an_endless_trailer_section_is_a_truncation(self):
        start = time.monotonic()
        status, _, body, trailers = exchange(b"GET http://" + HOST + b"/endless-trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
        self.assertEqual(status, 0)  # the head went out, then the connection was cut: never a clean end
        self.assertLess(time.monotonic() - start, 4)

    def test_the_pooled_connection_is_framed_right_after_a_trailer_section(self):
        before = ENV["upstream"].connections
        s = connect()
        try:
            for _ in range(3):
                s.sendall(b"GET http://" + HOST + b"/trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
                head, rest = harness.read_head(s)
                body, trailers, rest = read_chunked(s, rest)
                self.assertEqual((body, trailers, rest), (b"hello", [b"x-checksum: abc"], b""))
                s.sendall(post(b"x-a: 1\r\n\r\n"))
                head, rest = harness.read_head(s)
                self.assertIn(b" 200 ", head)
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(rest) < n:
                    rest += s.recv(65536)
                self.assertEqual(json.loads(rest[:n])["raw"].encode("latin-1"), b"5\r\nhello\r\n0\r\nx-a: 1\r\n\r\n")
        finally:
            s.close()
        self.assertLessEqual(ENV["upstream"].connections - before, 1)

    def next_on_same_connection(self, first):
        """Sends `first` then, on the same client connection, GET /trailers; returns the first status and what the
        second brought (status, body, trailers)."""
        s = connect()
        try:
            s.sendall(first)
            head, rest = harness.read_head(s)
            status = int(head.split(b" ")[1])
            lower = head.lower()
            if b"content-length:" in lower and not first.startswith(b"HEAD"):
                n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                rest = rest[n:]
            s.sendall(b"GET http://" + HOST + b"/trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
            head, rest = harness.read_head(s, rest)
            if head is None:
                return status, None
            body, trailers, _ = read_chunked(s, rest)
            return status, (int(head.split(b" ")[1]), body, trailers)
        finally:
            s.close()

    def test_a_body_and_trailers_after_a_head_204_or_sized_response_never_reach_another_response(self):
        for method, path in [(b"HEAD", b"/head-chunked"), (b"GET", b"/204-trailers"), (b"GET", b"/sized-then-trailers")]:
            with self.subTest(path=path):
                for _ in range(2):  # the upstream connection that carried the surplus is not used again
                    status, second = self.next_on_same_connection(
                        method + b" http://" + HOST + path + b" HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
                    self.assertIn(status, (200, 204))
                    self.assertEqual(second, (200, b"hello", [b"x-checksum: abc"]))


class EarlyAnswers(unittest.TestCase):
    def test_100_continue_then_trailers(self):
        s = connect()
        try:
            s.sendall(b"POST http://" + HOST + b"/raw HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: chunked\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            head, rest = harness.read_head(s)
            self.assertIn(b" 100 ", head)
            s.sendall(b"5\r\nhello\r\n0\r\nx-a: 1\r\nHost: evil\r\n\r\n")
            head, rest = harness.read_head(s, rest)
            self.assertIn(b" 200 ", head)
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < n:
                rest += s.recv(65536)
            self.assertEqual(json.loads(rest[:n])["raw"].encode("latin-1"), b"5\r\nhello\r\n0\r\nx-a: 1\r\n\r\n")
        finally:
            s.close()

    def test_an_early_answer_then_a_trailer_section_that_holds_a_request(self):
        # The upstream answers 413 before the body; the client then sends its body, a trailer section, and a request
        # line where a trailer could be: nothing of that may be taken for a request of its own.
        s = connect()
        try:
            s.sendall(b"POST http://" + HOST + b"/early-413 HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            head, rest = harness.read_head(s)
            self.assertIn(b" 413 ", head)
            smuggled = b"GET http://" + HOST + b"/trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"
            try:
                s.sendall(b"5\r\nhello\r\n0\r\nx-a: 1\r\n" + smuggled)
                s.settimeout(3)
                after = rest[3:]
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    after += data
            except (ConnectionError, socket.timeout):
                after = b""
            self.assertNotIn(b"x-checksum", after)
        finally:
            s.close()

    def test_an_upstream_connection_inside_a_trailer_section_is_not_reused(self):
        # The upstream answers before the body; the client stops inside its trailer section. The upstream connection
        # still owes the end of that section: another request sent on it would be read as trailer lines.
        s = connect()
        try:
            s.sendall(b"POST http://" + HOST + b"/early-200 HTTP/1.1\r\nHost: " + HOST + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\nx-a: 1\r\n")
            head, body = harness.read_response(s)
            self.assertIn(b" 200 ", head)
            for _ in range(2):
                status, _, body, trailers = exchange(b"GET http://" + HOST + b"/trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
                self.assertEqual((status, body, trailers), (200, b"hello", [b"x-checksum: abc"]))
        finally:
            s.close()


class SlowClients(unittest.TestCase):
    def test_a_client_that_stops_inside_its_trailer_section_is_timed_out(self):
        before = ENV["upstream"].connections
        s = connect("impatient")
        try:
            start = time.monotonic()
            s.sendall(post(b"x-a: " + SECRET.encode() + b"\r\nx-b: 1"))  # stops inside the second field line
            s.settimeout(6)
            answer = b""
            while True:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
            self.assertLess(time.monotonic() - start, 5)
            self.assertNotIn(SECRET.encode(), answer)
            self.assertNotIn(b" 200 ", answer)
        finally:
            s.close()
        # The upstream connection that saw half a trailer section is not used for another request.
        status, _, body, trailers = exchange(b"GET http://" + HOST + b"/trailers HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
        self.assertEqual((status, body, trailers), (200, b"hello", [b"x-checksum: abc"]))
        self.assertNotIn(SECRET, proxy_log())

    def test_a_trailer_value_is_never_logged(self):
        status, _, body, _ = exchange(post(b"x-token: " + SECRET.encode() + b"\r\n\r\n"))
        self.assertEqual(status, 200)
        self.assertIn(SECRET.encode(), body)  # it went to the upstream
        time.sleep(0.2)
        self.assertNotIn(SECRET, proxy_log())


if __name__ == "__main__":
    harness.run_suite()
