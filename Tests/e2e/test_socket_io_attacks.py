#!/usr/bin/env python3
"""Hostile peers against the proxy's own socket I/O (SocketStream, the non-blocking upstream connect and
handshake, the hand-over to bufferevents): TLS records left inside OpenSSL by read-ahead while the socket is
quiet, resets and closes in the middle of bodies, clients that never read, and descriptors after thousands of
failing connections of each kind.

Real peers only: Python sockets and curl as clients; as upstream a TLS server in this process that requires the
client certificate of the test CA, a plain TCP echo server for blind tunnels, and closed ports."""
import os, socket, ssl, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import US_KEYS, Fixture, RequestUpstream, echo, proxy_section, respond, route, tear_down, upstream_section  # noqa: E402

ENV = {}


def pattern(n):
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class Upstream(RequestUpstream):
    """A TLS server requiring a client certificate. Paths:
      GET /split/N   the head in one write, then an N-byte body in a second write; the connection stays open
      GET /rst/N     announces 10 MB, sends N body bytes, then resets the connection
      GET /upgrade/N 101, with N bytes in its records, then echoes what the client sends (early bytes included)
      POST /early-answer  reads no body, answers 413 after a second and resets the connection
      GET /forever   announces 1 GB and streams it as fast as the proxy takes it
      GET /upgrade-close  101 and a few bytes, then closes, all in one go
      GET /upgrade-late   101, then waits a second for the proxy to close; if it does not, sends bytes and closes
      anything else  200 "fine\\n" """

    def __init__(self, pki, cert="server", client_ca="ca"):
        self.forever_sent = 0
        self.upgrade_closed_by_proxy = threading.Event()
        super().__init__(pki, cert=cert, client_ca=client_ca, backlog=128)

    def answer(self, conn, head, path, buf):
        if path.startswith("/split/"):
            n = int(path.split("/")[2])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(n).encode() + b"\r\n\r\n")
            conn.sendall(pattern(n))
        elif path.startswith("/rst/"):
            n = int(path.split("/")[2])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + pattern(n))
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
            return None
        elif path.startswith("/upgrade/"):
            # 101 with N bytes in the same write (the same records), then an echo.
            n = int(path.split("/")[2])
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test-echo\r\nConnection: Upgrade\r\n\r\n" + pattern(n))
            if buf:
                conn.sendall(buf)
            echo(conn)
            return None
        elif path == "/upgrade-close":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test-echo\r\nConnection: Upgrade\r\n\r\nbye")
            return None
        elif path == "/upgrade-late":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test-echo\r\nConnection: Upgrade\r\n\r\n")
            conn.settimeout(1.0)
            try:
                closed = conn.recv(65536) == b""
            except (socket.timeout, TimeoutError):
                closed = False
            if closed:
                self.upgrade_closed_by_proxy.set()
                return None
            conn.sendall(b"late bytes")  # to whatever still reads this connection
            time.sleep(0.2)
            return None
        elif path == "/early-answer":
            time.sleep(1.0)  # reads none of the body: the proxy's writes block
            respond(conn, b"too large\n", status=b"413 Payload Too Large", headers=b"Connection: close\r\n")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
            return None
        elif path == "/forever":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            chunk = pattern(65536)
            while True:
                conn.sendall(chunk)
                self.forever_sent += len(chunk)
        else:
            respond(conn, b"fine\n")
        return buf


class Silent:
    """Accepts TCP connections and never says a word (a TLS handshake with it never ends); keeps them open."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


class Echo(harness.ThreadedServer):
    """A plain TCP echo server (the far end of a blind tunnel)."""

    @staticmethod
    def handle(conn):
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                pass


def setUpModule():
    # closed: nothing listens there, connections are refused.
    with Fixture("mtls-proxy-socket-io-attacks-", ports=("proxy", "closed")) as fx:
        ports = fx.ports
        up = fx.server(Upstream(fx.pki))
        # Its certificate is not from the CA the proxy trusts; and one that trusts no client certificate of ours.
        untrusted = fx.server(Upstream(fx.pki, cert="rogue-server"))
        rejecting = fx.server(Upstream(fx.pki, client_ca="rogue-ca"))
        silent, echo = fx.server(Silent()), fx.server(Echo())
        fx.write("proxy.conf", proxy_section(ports["proxy"], intercept=True)
                 + upstream_section(response_timeout="30s", connect_timeout="3s") + US_KEYS
                 + route("api.mygreatbank.test", identity="us", connect=up.port)
                 + route("refused.mygreatbank.test", identity="us", connect=ports["closed"])
                 + route("untrusted.mygreatbank.test", identity="us", connect=untrusted.port)
                 + route("rejecting.mygreatbank.test", identity="us", connect=rejecting.port)
                 + route("silent.mygreatbank.test", identity="us", connect=silent.port)
                 + route("echo.mygreatbank.test", action="tls", connect=echo.port))
        local_ca = fx.local_ca("proxy.conf")
        proxy = fx.proxy("proxy")
    ENV.update(fx.env(port=ports["proxy"], up=up, pid=proxy.pid, proxy=proxy, silent=silent, local_ca=local_ca))


def tearDownModule():
    tear_down(ENV)


def connect(timeout=40):
    return socket.create_connection(("127.0.0.1", ENV["port"]), timeout=timeout)


def open_fds():
    return len(os.listdir(f"/proc/{ENV['pid']}/fd"))


def cpu_seconds():
    with open(f"/proc/{ENV['pid']}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(host, path="/", timeout=20):
    """One GET through the proxy on a new connection; returns everything received until the response ends or the
    connection closes (a reset included)."""
    with connect(timeout) as s:
        s.sendall(f"GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    head, body = data.split(b"\r\n\r\n", 1)
                    if b"content-length:" in head.lower():
                        if len(body) >= int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]):
                            break
        except ConnectionResetError:
            pass
    return data


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


class RecordsLeftInOpenSSLWhileTheSocketIsQuiet(unittest.TestCase):
    def test_a_body_just_over_one_read_arrives_without_waiting_for_a_timeout(self):
        # The head comes in one small record, the body in the records after it, all in one burst; then the
        # upstream waits (keep-alive). One read of the proxy takes at most 16 KiB: when it fills with records
        # still buffered in OpenSSL (read-ahead), nothing on the socket will say so.
        for n in (16384, 16384 + 100, 16300, 20000, 32768 + 100, 40000, 65536 + 17):
            with self.subTest(body=n), connect() as s:
                started = time.time()
                s.sendall(f"GET http://api.mygreatbank.test/split/{n} HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n".encode())
                head, body = harness.read_response(s)
                self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
                self.assertEqual(body, pattern(n))
                self.assertLess(time.time() - started, 10, "the body waited for something other than the upstream")


class NoDescriptorLeaks(unittest.TestCase):
    def settled(self, baseline):
        return harness.wait_until(lambda: open_fds() <= baseline, 15, 0.2)

    def test_failing_connections_of_each_kind_leave_no_descriptor(self):
        self.assertEqual(ask("api.mygreatbank.test", "/warm").split(b"\r\n\r\n", 1)[1], b"fine\n")
        baseline = open_fds()
        kinds = [
            ("refused", 600, lambda: self.assertIn(b" 502 ", ask("refused.mygreatbank.test")[:20])),
            ("untrusted certificate", 200, lambda: self.assertIn(b"tls_certificate_error", ask("untrusted.mygreatbank.test"))),
            # The TLS 1.3 server rejects after the handshake: the proxy sees its alert or, when the request it wrote
            # meanwhile makes the server's kernel answer with a reset, the reset (before this change too).
            ("client certificate rejected", 200,
             lambda: self.assertRegex(ask("rejecting.mygreatbank.test"), rb"^HTTP/1.1 502 [^\0]*error=(tls_alert_received|connection_terminated)")),
            ("upstream reset mid-body", 100, lambda: self.assertTrue(ask("api.mygreatbank.test", "/rst/5000").startswith(b"HTTP/1.1 200 "))),
        ]
        for name, n, attempt in kinds:
            with self.subTest(kind=name):
                for _ in range(n):
                    attempt()
                self.assertTrue(self.settled(baseline), f"{open_fds()} descriptors open after {n} x {name}, {baseline} before")

    def test_clients_that_abort_while_the_upstream_connects(self):
        baseline = open_fds()
        held = len(ENV["silent"].held)
        for i in range(200):
            s = connect()
            s.sendall(b"GET http://silent.mygreatbank.test/ HTTP/1.1\r\nHost: silent.mygreatbank.test\r\n\r\n")
            if i % 2:
                time.sleep(0.01)
                reset(s)
            else:
                s.close()
        self.assertTrue(harness.wait_until(lambda: len(ENV["silent"].held) > held, 10, 0.1))
        self.assertTrue(self.settled(baseline), f"{open_fds()} descriptors open, {baseline} before")
        self.assertEqual(ask("api.mygreatbank.test", "/after").split(b"\r\n\r\n", 1)[1], b"fine\n")

    def test_clients_that_reset_in_the_middle_of_a_response(self):
        self.assertEqual(ask("api.mygreatbank.test", "/warm").split(b"\r\n\r\n", 1)[1], b"fine\n")
        baseline = open_fds()
        for i in range(60):
            s = connect()
            s.sendall(b"GET http://api.mygreatbank.test/forever HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
            got = 0
            while got < 100000 * (i % 3 + 1):
                got += len(s.recv(65536))
            reset(s) if i % 2 else s.close()
        self.assertTrue(self.settled(baseline), f"{open_fds()} descriptors open, {baseline} before")
        self.assertEqual(ask("api.mygreatbank.test", "/after").split(b"\r\n\r\n", 1)[1], b"fine\n")


class AClientThatNeverReads(unittest.TestCase):
    def test_memory_and_cpu_stay_bounded_while_the_upstream_streams(self):
        with connect() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET http://api.mygreatbank.test/forever HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(1024)
            body = data.split(b"\r\n\r\n", 1)[1]
            time.sleep(2)
            rss, sent, cpu = harness.rss_kib(ENV["pid"]), ENV["up"].forever_sent, cpu_seconds()
            time.sleep(4)
            self.assertLess(ENV["up"].forever_sent - sent, 4 * 1024 * 1024, "the proxy kept reading from the upstream")
            self.assertLess(harness.rss_kib(ENV["pid"]) - rss, 8 * 1024)
            self.assertLess(cpu_seconds() - cpu, 1.0, "the proxy spins while the client does not read")
            # Then it reads: every byte, in order (byte i of the body is i % 256).
            while len(body) < 8 * 1024 * 1024:
                chunk = s.recv(262144)
                self.assertTrue(chunk, f"closed after {len(body)} body bytes")
                body += chunk
            self.assertEqual(body[:8 * 1024 * 1024], pattern(8 * 1024 * 1024))


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(min(262144, n - len(data)))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(1)
        if not chunk:
            raise AssertionError(f"closed before the head ended: {data!r}")
        data += chunk
    return data


class BytesAlreadyBufferedWhenTheSocketMovesOntoABufferevent(unittest.TestCase):
    def test_blind_tunnel_carries_bytes_sent_with_the_connect(self):
        for n in (15, 100000, 400 * 1024):  # the last beyond the read watermark
            with self.subTest(bytes=n), connect() as s:
                early = os.urandom(n)
                sender = threading.Thread(target=lambda: s.sendall(
                    b"CONNECT echo.mygreatbank.test:443 HTTP/1.1\r\nHost: echo.mygreatbank.test:443\r\n\r\n" + early))
                sender.start()
                head = recv_head(s)
                self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
                self.assertEqual(recv_exactly(s, n), early)
                sender.join()
                s.sendall(b"and after")
                self.assertEqual(recv_exactly(s, 9), b"and after")

    def test_upgrade_with_many_bytes_in_the_records_of_the_101_and_early_client_bytes(self):
        for n, pause, early in ((10, 0, b""), (300 * 1024, 0, b""), (1024 * 1024, 1.0, b""), (10, 0, b"EARLY"),
                                (300 * 1024, 0.5, b"EARLY" * 1000)):
            with self.subTest(bytes=n, pause=pause, early=len(early)), connect() as s:
                s.sendall(f"GET http://api.mygreatbank.test/upgrade/{n} HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                          "Connection: Upgrade\r\nUpgrade: test-echo\r\n\r\n".encode() + early)
                head = recv_head(s)
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
                time.sleep(pause)  # everything piles up in the proxy and the kernel
                self.assertEqual(recv_exactly(s, n), pattern(n))
                self.assertEqual(recv_exactly(s, len(early)), early)  # the upstream echoes the early bytes
                s.sendall(b"echo me")
                self.assertEqual(recv_exactly(s, 7), b"echo me")

    def test_interception_with_a_client_hello_that_trickles_in(self):
        # The first byte of the ClientHello alone makes the proxy move the socket onto a TLS filter; the rest
        # comes later, byte by byte for a while.
        ctx = ssl.create_default_context(cafile=ENV["local_ca"])
        for split in (1, 5, 100):
            with self.subTest(first=split), connect() as s:
                s.sendall(b"CONNECT api.mygreatbank.test:443 HTTP/1.1\r\nHost: api.mygreatbank.test:443\r\n\r\n")
                head = recv_head(s)
                self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = ctx.wrap_bio(incoming, outgoing, server_hostname="api.mygreatbank.test")
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                hello = outgoing.read()
                s.sendall(hello[:split])
                time.sleep(0.3)
                for i in range(split, min(split + 20, len(hello))):
                    s.sendall(hello[i:i + 1])
                    time.sleep(0.01)
                s.sendall(hello[split + 20:])

                def pump_until(done):
                    while True:
                        try:
                            return done()
                        except ssl.SSLWantReadError:
                            pass
                        out = outgoing.read()
                        if out:
                            s.sendall(out)
                        data = s.recv(65536)
                        self.assertTrue(data, "the proxy closed the intercepted tunnel")
                        incoming.write(data)

                pump_until(tls.do_handshake)
                tls.write(b"GET /inside HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
                s.sendall(outgoing.read())
                answer = b""
                while b"fine\n" not in answer:
                    answer += pump_until(lambda: tls.read(65536))
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)


def read_until_closed(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


UPGRADE = ("GET http://api.mygreatbank.test{path} HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
           "Connection: Upgrade\r\nUpgrade: test-echo\r\n\r\n")


class AnUpstreamThatClosesWithIts101(unittest.TestCase):
    def test_the_client_gets_the_101_and_its_bytes_then_the_end(self):
        for _ in range(20):
            with connect(10) as s:
                s.sendall(UPGRADE.format(path="/upgrade-close").encode())
                data = read_until_closed(s)
                self.assertTrue(data.startswith(b"HTTP/1.1 101 "), data[:200])
                self.assertTrue(data.endswith(b"\r\n\r\nbye"), data[-50:])
        self.assertIsNone(ENV["proxy"].poll(), "the proxy exited")
        self.assertEqual(ask("api.mygreatbank.test", "/after-close").split(b"\r\n\r\n", 1)[1], b"fine\n")


class AFailedHandOverAfter101(unittest.TestCase):
    """The upstream answered 101 but its socket cannot be handed to a relay (libevent could not make the
    bufferevent; a debug build is told to fail it with MTLS_PROXY_TEST_FAULT). The client's connection ends, and
    the upstream connection must end with it: left open, its next byte was delivered to the freed client
    connection (a crash)."""

    @classmethod
    def setUpClass(cls):
        d = ENV["dir"]
        cls.port = harness.free_port()
        with open(f"{d}/proxy.conf") as f:
            text = f.read().replace(f'listen = "127.0.0.1:{ENV["port"]}"', f'listen = "127.0.0.1:{cls.port}"')
        with open(f"{d}/proxy-handover.conf", "w") as f:
            f.write(text)
        with open(f"{d}/proxy-handover.log", "ab") as log:
            cls.proxy = ENV["procs"].start([harness.proxy_binary(), "run", "--config", f"{d}/proxy-handover.conf"],
                                           stdout=log, stderr=subprocess.STDOUT,
                                           env=dict(os.environ, MTLS_PROXY_TEST_FAULT="upstream-handover"))
        harness.wait_for_port(cls.port)
        if "test fault on" not in harness.read(f"{d}/proxy-handover.log"):
            raise unittest.SkipTest("this build ignores MTLS_PROXY_TEST_FAULT (a release build)")

    def test_the_upstream_connection_is_closed_and_the_proxy_lives_on(self):
        up = ENV["up"]
        for attempt in range(3):
            up.upgrade_closed_by_proxy.clear()
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(UPGRADE.format(path="/upgrade-late").encode())
                read_until_closed(s)
            self.assertTrue(up.upgrade_closed_by_proxy.wait(5),
                            f"attempt {attempt}: the upstream connection stayed open after the failed hand-over")
        time.sleep(1.5)  # past the moment the upstream would have sent its late bytes
        self.assertIsNone(self.proxy.poll(), "the proxy exited")
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET http://api.mygreatbank.test/after HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
            head, body = harness.read_response(s)
            self.assertEqual(body, b"fine\n")


class AnEarlyAnswerThenAReset(unittest.TestCase):
    def test_the_client_gets_the_answer_the_upstream_sent_before_it_reset(self):
        # The upload fills every buffer; the upstream answers 413 and resets. The proxy's next write fails with
        # the answer still unread in its socket: the client must get the 413, not a 502.
        for i in range(5):
            with self.subTest(attempt=i), connect() as s:
                body = b"x" * (8 * 1024 * 1024)
                s.sendall(b"POST http://api.mygreatbank.test/early-answer HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")

                def upload():
                    try:
                        s.sendall(body)
                    except OSError:
                        pass

                threading.Thread(target=upload, daemon=True).start()
                answer = b""
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                except ConnectionResetError:
                    pass
                self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:300])
                self.assertTrue(answer.endswith(b"too large\n"), answer[:300])


if __name__ == "__main__":
    harness.run_suite()
