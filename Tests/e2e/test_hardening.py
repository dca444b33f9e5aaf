#!/usr/bin/env python3
"""Hostile and broken clients: request smuggling shapes over raw sockets (each is refused with 400 and a close,
or forwarded in one unambiguous form, and the upstream never sees two requests where the client sent one),
slow headers, a client that never reads, and the connection limit."""
import json, os, re, socket, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, proxy_section, route, tear_down  # noqa: E402

ENV = {}
HOST = "smuggle.mygreatbank.test"


def setUpModule():
    with Fixture("mtls-proxy-hardening-", ports=("proxy", "limited", "authed", "fdlimited", "recorder", "files")) as fx:
        d, ports = fx.dir, fx.ports
        fx.recorder("recorder", "upstream.jsonl")
        fx.python_upstream("files", ca="ca", require=True)
        common = ("\n" + harness.US_IDENTITY + route(HOST, identity="us", connect=ports["recorder"])
                  + route("files.mygreatbank.test", identity="us", connect=ports["files"]))
        fx.write("proxy.conf", proxy_section(ports["proxy"], workers=2, header_timeout="1s", client_timeout="1500ms") + common)
        fx.write("fdlimited.conf", proxy_section(ports["fdlimited"]) + common)
        fx.write("limited.conf", proxy_section(ports["limited"], workers=2, max_connections=4) + common)
        import hashlib
        lines = [f"bob:sha256:{hashlib.sha256(b'hunter2').hexdigest()}"]
        alice = harness.bcrypt_hash("s3cret", 4)
        if alice:  # else the bcrypt case is skipped, by name
            lines.append("alice:" + alice)
        with open(f"{d}/users", "w") as f:
            f.write("\n".join(lines) + "\n")
        fx.write("authed.conf", proxy_section(ports["authed"], auth_file="users") + common)
        proxy = fx.proxy("proxy")
        fx.proxy("authed")
        fx.proxy("limited")
    ENV.update(fx.env(proxy=proxy))


def tearDownModule():
    tear_down(ENV)


def raw(data, port=None, wait=2.0):
    """Sends raw bytes; returns (everything received, whether the proxy closed the connection)."""
    return harness.send_raw(port or ENV["ports"]["proxy"], data, wait)


def upstream_requests(tag):
    records = harness.recorded_requests(f"{ENV['dir']}/upstream.jsonl", settle=0.3)
    return [r for r in records if tag in r["request_line"] or "smuggled" in r["request_line"] or tag in r["body"]]


def head(tag, extra, method="POST"):
    return f"{method} http://{HOST}/{tag} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode("latin-1")


SMUGGLED = f"GET http://{HOST}/smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()

# (name, bytes) for shapes that must be refused with 400 (or 501 for an unsupported coding) and a close.
REFUSED = [
    ("cl-te", head("cl-te", "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + SMUGGLED),
    ("te-cl", head("te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n") + b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"),
    ("te-te-xchunked", head("te-te-xchunked", "Transfer-Encoding: xchunked\r\n") + b"0\r\n\r\n" + SMUGGLED),
    ("te-space-before-colon", head("te-space-before-colon", "Transfer-Encoding : chunked\r\n") + b"0\r\n\r\n" + SMUGGLED),
    ("te-twice", head("te-twice", "Transfer-Encoding: chunked\r\nTransfer-encoding: identity\r\n") + b"0\r\n\r\n" + SMUGGLED),
    ("te-list", head("te-list", "Transfer-Encoding: chunked, chunked\r\n") + b"0\r\n\r\n" + SMUGGLED),
    ("te-folded", head("te-folded", "Transfer-Encoding:\r\n chunked\r\n") + b"0\r\n\r\n" + SMUGGLED),
    ("te-http10", f"POST http://{HOST}/te-http10 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + b"0\r\n\r\n"),
    ("cl-conflict", head("cl-conflict", "Content-Length: 5\r\nContent-Length: 6\r\n") + b"hello!" + SMUGGLED),
    ("cl-list-conflict", head("cl-list-conflict", "Content-Length: 5, 6\r\n") + b"hello!"),
    ("cl-sign", head("cl-sign", "Content-Length: +5\r\n") + b"hello"),
    ("cl-inner-space", head("cl-inner-space", "Content-Length: 5 5\r\n") + b"hello"),
    ("cl-hex", head("cl-hex", "Content-Length: 0x5\r\n") + b"hello"),
    ("chunk-overflow", head("chunk-overflow", "Transfer-Encoding: chunked\r\n") + b"fffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    ("chunk-negative", head("chunk-negative", "Transfer-Encoding: chunked\r\n") + b"-1\r\nx\r\n0\r\n\r\n"),
    ("chunk-ext-control", head("chunk-ext-control", "Transfer-Encoding: chunked\r\n") + b"5;x=\x01\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-huge", head("chunk-ext-huge", "Transfer-Encoding: chunked\r\n") + b"5;" + b"a" * 8000 + b"\r\nhello\r\n0\r\n\r\n"),
    ("chunk-bare-lf", head("chunk-bare-lf", "Transfer-Encoding: chunked\r\n") + b"5\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("chunk-no-crlf-after-data", head("chunk-no-crlf-after-data", "Transfer-Encoding: chunked\r\n") + b"5\r\nhelloXX0\r\n\r\n"),
    ("nul-in-name", head("nul-in-name", "X-A\x00b: 1\r\nContent-Length: 0\r\n")),
    ("nul-in-value", head("nul-in-value", "X-A: 1\x002\r\nContent-Length: 0\r\n")),
    ("bare-cr-in-value", head("bare-cr-in-value", "X-A: 1\r2\r\nContent-Length: 0\r\n")),
    ("bare-lf-line", head("bare-lf-line", "X-A: 1\nContent-Length: 0\r\n")),
    ("no-colon", head("no-colon", "Content-Length 0\r\n")),
    ("bad-then-pipelined", head("bad-then-pipelined", "Content-Length: 1\r\nContent-Length: 2\r\n", method="GET") + SMUGGLED),
    ("two-hosts", f"GET http://{HOST}/two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".encode() + SMUGGLED),
    ("space-in-target", f"GET http://{HOST}/a b HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() + SMUGGLED),
    ("userinfo", f"GET http://evil@{HOST}/userinfo HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()),
]


class Smuggling(unittest.TestCase):
    def test_refused_shapes(self):
        outcomes = []
        for name, data in REFUSED:
            with self.subTest(name):
                answer, closed = raw(data)
                status = answer.split(" ", 2)[1] if answer.startswith("HTTP/1.1 ") else "none"
                outcomes.append(f"{name}: {status}{' closed' if closed else ''}")
                self.assertIn(status, ("400", "501"), f"{name}: {answer[:200]!r}")
                self.assertIn("Proxy-Status: mtls-proxy; error=http_request_error", answer)
                self.assertTrue(closed, f"{name}: connection left open")
                self.assertEqual(answer.count("HTTP/1.1 "), 1, f"{name}: more than one response")
                self.assertEqual(upstream_requests(name), [], f"{name}: reached the upstream")
        self.assertEqual(upstream_requests("smuggled"), [])
        print("\n  " + "; ".join(outcomes), file=sys.stderr)

    def test_unambiguous_shapes_are_forwarded_once_in_canonical_form(self):
        cases = [
            ("te-tab", head("te-tab", "Transfer-Encoding:\tchunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n", "hello"),
            ("te-upper", head("te-upper", "Transfer-Encoding: CHUNKED\r\n") + b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", "hello"),
            ("cl-repeated-same", head("cl-repeated-same", "Content-Length: 5\r\nContent-Length: 5\r\n") + b"hello", "hello"),
            ("cl-ows", head("cl-ows", "Content-Length:   5  \r\n") + b"hello", "hello"),
            ("expect-100", head("expect-100", "Content-Length: 5\r\nExpect: 100-continue\r\n") + b"hello", "hello"),
        ]
        for name, data, body in cases:
            with self.subTest(name):
                answer, _ = raw(data, wait=1.5)
                self.assertIn("HTTP/1.1 200 OK", answer, f"{name}: {answer[:200]!r}")
                seen = upstream_requests(name)
                self.assertEqual(len(seen), 1, f"{name}: {seen}")
                self.assertEqual(seen[0]["body"], body)
                te = seen[0]["headers"].get("transfer-encoding", [])
                cl = seen[0]["headers"].get("content-length", [])
                # Exactly one framing, written by the proxy: "chunked" or a single length.
                self.assertTrue((te == ["chunked"] and not cl) or (not te and len(cl) == 1), f"{name}: {seen[0]['headers']}")

    def test_authority_wins_over_a_disagreeing_host(self):
        raw(f"GET http://{HOST}/authority HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode(), wait=1.5)
        seen = upstream_requests("authority")
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0]["headers"]["host"], [HOST])

    def test_pipelined_requests_stay_separate(self):
        a = f"GET http://{HOST}/pipe-1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        b = head("pipe-2", "Content-Length: 5\r\n") + b"hello"
        answer, _ = raw(a + b, wait=1.5)
        self.assertEqual(answer.count("HTTP/1.1 200 OK"), 2)
        self.assertEqual([r["request_line"] for r in upstream_requests("pipe-")], ["GET /pipe-1 HTTP/1.1", "POST /pipe-2 HTTP/1.1"])


class ProxyAuthentication(unittest.TestCase):
    def ask(self, credentials=None, target=None):
        import base64
        auth = f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n" if credentials else ""
        request = target or f"GET http://{HOST}/auth-ok HTTP/1.1\r\nHost: {HOST}\r\n"
        return raw(f"{request}{auth}Connection: close\r\n\r\n".encode(), port=ENV["ports"]["authed"])[0]

    def test_missing_or_wrong_credentials_get_407(self):
        for credentials in (None, "bob:wrong", "mallory:hunter2"):
            answer = self.ask(credentials)
            self.assertTrue(answer.startswith("HTTP/1.1 407 Proxy Authentication Required"), answer[:80])
            self.assertIn('Proxy-Authenticate: Basic realm="mtls-proxy"', answer)
        answer = self.ask(None, target=f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n")
        self.assertTrue(answer.startswith("HTTP/1.1 407"), answer[:80])

    def test_sha256_user(self):
        answer = self.ask("bob:hunter2")
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:80])
        seen = upstream_requests("auth-ok")
        self.assertTrue(seen)
        self.assertNotIn("proxy-authorization", seen[-1]["headers"])

    def test_bcrypt_user(self):
        if "alice:" not in harness.read(f"{ENV['dir']}/users"):
            self.skipTest("htpasswd (apache2-utils) is not installed to make a bcrypt hash")
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                            f"http://alice:s3cret@127.0.0.1:{ENV['ports']['authed']}", f"http://{HOST}/auth-curl"],
                           capture_output=True, text=True, env=harness.clean_env())
        self.assertEqual(r.stdout, "200")


class SlowAndGreedyClients(unittest.TestCase):
    def test_slow_headers_get_408(self):
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        s.sendall(f"GET http://{HOST}/slow HTTP/1.1\r\n".encode())
        time.sleep(0.4)
        s.sendall(b"X-Trickle: 1\r\n")
        started = time.time()
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 408"), data[:100])
        self.assertIn(b"header_timeout 1s", data)
        self.assertLess(time.time() - started, 3)

    def test_a_client_that_never_reads_does_not_grow_the_proxy(self):
        pid = ENV["proxy"].pid
        before = harness.rss_kib(pid)
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET http://files.mygreatbank.test/download?size=300000000 HTTP/1.1\r\nHost: files.mygreatbank.test\r\n\r\n")
        time.sleep(3)  # the upstream streams 300 MB; the proxy must stop reading it
        grown = harness.rss_kib(pid) - before
        s.close()
        self.assertLess(grown, 16 * 1024, f"RSS grew {grown} KiB while the client did not read")

    def test_slow_body_is_cut_off(self):
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10)
        s.sendall(head("slow-body", "Content-Length: 100\r\n") + b"x" * 10)
        started = time.time()
        while s.recv(4096):
            pass
        self.assertLess(time.time() - started, 5)  # client_timeout 1.5 s, not forever
        self.assertEqual([r for r in upstream_requests("slow-body") if len(r["body"]) == 100], [])

    def test_thousand_idle_connections_do_not_stop_service(self):
        idle = [socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"])) for _ in range(1000)]
        try:
            answer, _ = raw(f"GET http://{HOST}/with-idle HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:80])
        finally:
            for s in idle:
                s.close()

    def test_descriptor_exhaustion_is_survived(self):
        import resource
        port = ENV["ports"]["fdlimited"]
        log = open(f"{ENV['dir']}/fdlimited.log", "ab")
        p = ENV["procs"].start([harness.proxy_binary(), "run", "--config", f"{ENV['dir']}/fdlimited.conf"], stdout=log, stderr=log,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
        log.close()
        harness.wait_for_port(port)
        held = []
        for _ in range(80):  # more than the proxy has descriptors for
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            held.append(s)
        time.sleep(1)
        cpu_before = sum(float(x) for x in open(f"/proc/{p.pid}/stat").read().split()[13:15])
        time.sleep(1)
        cpu_after = sum(float(x) for x in open(f"/proc/{p.pid}/stat").read().split()[13:15])
        self.assertIsNone(p.poll(), "the proxy died")
        self.assertLess(cpu_after - cpu_before, 50, "the proxy spins while out of descriptors")  # clock ticks in 1 s
        for s in held:
            s.close()
        time.sleep(0.5)
        answer, _ = raw(f"GET http://{HOST}/after-emfile HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), port=port)
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:80])
        self.assertIn("accept failed", harness.read(f"{ENV['dir']}/fdlimited.log"))

    def test_connection_limit(self):
        port = ENV["ports"]["limited"]
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.3)
        answer, closed = raw(f"GET http://{HOST}/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), port=port)
        self.assertTrue(answer.startswith("HTTP/1.1 503"), answer[:100])
        self.assertIn("Proxy-Status: mtls-proxy; error=connection_limit_reached", answer)
        self.assertTrue(closed)
        for s in held:
            s.close()
        time.sleep(0.3)
        answer, _ = raw(f"GET http://{HOST}/after-limit HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), port=port)
        self.assertTrue(answer.startswith("HTTP/1.1 200"), answer[:100])


class BcryptHashesForTheTests(unittest.TestCase):
    def test_no_suite_needs_pythons_crypt_module(self):
        """Python 3.13 has no crypt module: a suite that makes its bcrypt hashes with it skips its bcrypt tests
        there. harness.bcrypt_hash uses htpasswd (apache2-utils) instead."""
        users = []
        for folder in (harness.HERE,):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".py") and re.search(r"(?m)^\s*(import crypt|from crypt )", harness.read(os.path.join(folder, name))):
                    users.append(name)
        self.assertEqual(users, [])


if __name__ == "__main__":
    harness.run_suite()
