#!/usr/bin/env python3
"""Blind CONNECT tunnels attacked by their clients, on loopback: half-closes in each direction and at each moment
(before the 200 with bytes already sent, after it), thousands of CONNECTs abandoned at every stage (the proxy's
file descriptors counted after), client_timeout running out while a tunnel is dialled, a reload and a drain with
tunnels open. The dial goes through a corporate proxy on loopback (a Python thread, `HoldingCorporateProxy` of
test_tunnel_dial) that holds slow.test's CONNECTs unanswered and answers echo.test's after 0.3 s, then echoes; a
CONNECT to greet.test is answered at once, then "hello", then a FIN, and what the client sends after is kept."""
import os, random, signal, socket, ssl, struct, sys, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, proxy_section, route, tear_down  # noqa: E402
from test_tunnel_dial import HoldingCorporateProxy  # noqa: E402

ENV = {}


class GreetingCorporateProxy(HoldingCorporateProxy):
    """As `HoldingCorporateProxy`, and greet.test: 200 at once, "hello", the write half shut, then what the client
    sends is kept (in `received`) until its FIN."""

    def __init__(self):
        self.received = []
        super().__init__()

    def serve(self, conn):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        if not head.startswith(b"CONNECT greet.test:"):
            return self.serve_head(conn, head)
        data = head.split(b"\r\n\r\n", 1)[1]
        try:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\nhello")
            conn.shutdown(socket.SHUT_WR)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        self.received.append(data)
        conn.close()

    def serve_head(self, conn, head):
        if head.startswith(b"CONNECT slow.test:"):
            with self.lock:
                self.held.append(conn)
            return
        time.sleep(0.3)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + head.split(b"\r\n\r\n", 1)[1])
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                conn.sendall(chunk)
        except OSError:
            pass
        conn.close()


class SlowDNS(harness.LoopbackDNS):
    """The loopback DNS server, answering names that begin with "slow." one second late."""

    class DelayingSocket:
        def __init__(self, sock):
            self.sock = sock

        def recvfrom(self, size):
            return self.sock.recvfrom(size)

        def sendto(self, reply, address):
            if b"\x04slow" in reply.lower():  # the resolver randomizes the case of the names it asks (0x20)
                threading.Timer(1.0, self.send_late, (reply, address)).start()
            else:
                self.sock.sendto(reply, address)

        def send_late(self, reply, address):
            try:
                self.sock.sendto(reply, address)
            except OSError:
                pass

        def close(self):
            self.sock.close()

    def __init__(self):
        super().__init__()
        self.sock = self.DelayingSocket(self.sock)


class EchoService:
    """A plain TCP echo service on loopback that counts the connections it accepted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    def echo(self, conn):
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                conn.sendall(chunk)
        except OSError:
            pass
        conn.close()

    def close(self):
        self.sock.close()


def config(port, corporate_port, **proxy):
    corporate_url = f"http://127.0.0.1:{corporate_port}"
    return (proxy_section(port, **proxy)
            + route("slow.test", action="tls", proxy=corporate_url, allow_private=True)
            + route("echo.test", action="tls", proxy=corporate_url, allow_private=True)
            + route("greet.test", action="tls", proxy=corporate_url, allow_private=True))


def setUpModule():
    with Fixture("mtls-proxy-tunnel-attacks-", ports=("proxy", "timeouts", "intercept", "up", "ws", "resolving")) as fx:
        corporate = fx.server(GreetingCorporateProxy())
        fx.write("proxy.conf", config(fx.ports["proxy"], corporate.port) + "[upstream]\nconnect_timeout = \"30s\"\n")
        process = fx.proxy("proxy")
        # client_timeout shorter than connect_timeout: it runs out while the tunnel is dialled.
        fx.write("timeouts.conf", config(fx.ports["timeouts"], corporate.port, client_timeout="1s")
                 + "[upstream]\nconnect_timeout = \"2500ms\"\n")
        fx.proxy("timeouts")
        # Intercepted (TLS with the client ended here, requests served inside) and plain requests inside tunnels.
        fx.python_upstream("up", ca="ca", require=True)
        fx.tls_script("ws_echo.py", "ws")
        fx.write("intercept.conf", proxy_section(fx.ports["intercept"], intercept=True) + harness.US_IDENTITY
                 + route("files.mygreatbank.test", identity="us", connect=fx.ports["up"])
                 + route("ws.mygreatbank.test", identity="us", connect=fx.ports["ws"]))
        local_ca = fx.local_ca("intercept.conf")
        intercepting = fx.proxy("intercept")
        # Blind tunnels to names the proxy resolves itself, from a DNS server on loopback that answers slowly.
        dns = fx.server(SlowDNS())
        echo = fx.server(EchoService())
        fx.write("resolving.conf", proxy_section(fx.ports["resolving"])
                 + f'[upstream]\nnameservers = ["127.0.0.1:{dns.port}"]\n'
                 + route("slow.loopback.test", action="tls", port=echo.port, allow_private=True)
                 + route("fast.loopback.test", action="tls", port=echo.port, allow_private=True))
        resolving = fx.proxy("resolving")
    ENV.update(fx.env(corporate=corporate, process=process, local_ca=local_ca, intercepting=intercepting,
                      dns=dns, echo=echo, resolving=resolving))


def tearDownModule():
    tear_down(ENV)


def open_fds(pid=None):
    return len(os.listdir(f"/proc/{pid or ENV['process'].pid}/fd"))


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def connect(host, port=None, extra=b""):
    sock = socket.create_connection(("127.0.0.1", port or ENV["ports"]["proxy"]), timeout=5)
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode() + extra)
    return sock


def read_all(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def still_serves(test):
    sock = connect("echo.test")
    test.assertTrue(read_head(sock).startswith(b"HTTP/1.1 200 "))
    sock.sendall(b"ping")
    test.assertEqual(sock.recv(4096), b"ping")
    sock.close()


class HalfCloses(unittest.TestCase):
    def test_bytes_and_a_fin_before_the_200_reach_the_service_and_its_answer_comes_back(self):
        # RFC 9112 §9.6 / RFC 9110 §9.3.6: a tunnel carries each direction's end. A client that sent all it had
        # (a request of a plain protocol) and shut its write half wants the answer: its FIN is not a departure.
        sock = connect("echo.test", extra=b"all I have")
        sock.shutdown(socket.SHUT_WR)
        received = read_all(sock)
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received)
        self.assertTrue(received.endswith(b"\r\n\r\nall I have"), received)
        sock.close()

    def test_more_than_the_read_watermark_before_the_200_then_a_fin(self):
        # The client's reading stops at the watermark while the tunnel is dialled; the relay takes it from there.
        payload = os.urandom(3 << 20)
        sock = connect("echo.test")
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        sock.settimeout(15)
        received = read_all(sock)
        sender.join()
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head[:100])
        self.assertEqual(len(body), len(payload))
        self.assertEqual(body, payload)
        sock.close()

    def test_bytes_and_a_fin_while_a_dial_hangs_wait_for_connect_timeout(self):
        # A full close looks the same on the wire as that half-close: such a client holds its dial until
        # connect_timeout, as one that stays would (no more than a client that keeps its socket open costs).
        started = time.monotonic()
        sock = connect("slow.test", port=ENV["ports"]["timeouts"], extra=b"all I have")
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 ") or answer.startswith(b"HTTP/1.1 502 "), answer[:200])
        self.assertGreater(time.monotonic() - started, 2.0)
        sock.close()

    def test_the_client_half_closes_after_the_200(self):
        sock = connect("echo.test")
        self.assertTrue(read_head(sock).startswith(b"HTTP/1.1 200 "))
        sock.sendall(b"x" * 300_000)
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(read_all(sock), b"x" * 300_000)
        sock.close()

    def test_the_service_half_closes_and_the_client_still_sends(self):
        corporate = ENV["corporate"]
        before = len(corporate.received)
        sock = connect("greet.test")
        received = read_all(sock)  # the service's FIN reaches the client as EOF
        self.assertTrue(received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\nhello"), received)
        sock.sendall(b"still talking")
        sock.shutdown(socket.SHUT_WR)
        self.assertTrue(wait_until(lambda: len(corporate.received) > before, 5), "the service never saw the client's FIN")
        self.assertEqual(corporate.received[before], b"still talking")
        sock.close()


class AbandonedTunnels(unittest.TestCase):
    def test_a_thousand_connects_abandoned_at_every_stage_leave_no_descriptor(self):
        rng = random.Random(19)
        still_serves(self)
        before = open_fds()
        socks = []
        for i in range(1000):
            host = rng.choice(["slow.test", "echo.test", "greet.test"])
            # Bytes before the 200 then a FIN are a half-close that keeps the dial until connect_timeout (see
            # `test_bytes_and_a_fin_while_a_dial_hangs_wait_for_connect_timeout`): only to services that answer.
            extra = b"early" if host != "slow.test" and rng.random() < 0.3 else b""
            try:
                sock = connect(host, extra=extra)
            except OSError:
                continue
            if i % 4 == 0:  # at once: during the dial, or with the 200 in flight
                reset(sock) if rng.random() < 0.5 else sock.close()
            else:
                socks.append(sock)
            if len(socks) >= 200:  # the rest a moment later: dialled, answered, or relaying
                time.sleep(rng.random() * 0.4)
                for sock in socks:
                    if rng.random() < 0.3:
                        try:
                            sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                    reset(sock) if rng.random() < 0.5 else sock.close()
                socks = []
        for sock in socks:
            reset(sock)
        self.assertTrue(wait_until(lambda: open_fds() <= before, 10), f"the proxy holds {open_fds()} fds, {before} before")
        self.assertTrue(wait_until(lambda: ENV["corporate"].held_open() == 0, 5),
                        f"{ENV['corporate'].held_open()} dials to the corporate proxy still open after their clients left")
        still_serves(self)
        self.assertIsNone(ENV["process"].poll(), "the proxy exited")


class ClientTimeoutWhileDialled(unittest.TestCase):
    def test_client_timeout_does_not_cut_a_dial_and_connect_timeout_answers(self):
        port = ENV["ports"]["timeouts"]
        started = time.monotonic()
        sock = connect("slow.test", port=port)
        answer = read_all(sock)
        elapsed = time.monotonic() - started
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 ") or answer.startswith(b"HTTP/1.1 502 "), answer[:200])
        self.assertGreater(elapsed, 2.0, "answered before connect_timeout (2.5 s): client_timeout (1 s) cut the dial")
        sock.close()

    def test_client_timeout_while_dialled_then_the_client_leaves(self):
        port = ENV["ports"]["timeouts"]
        sock = connect("slow.test", port=port)
        time.sleep(1.5)  # client_timeout went by
        reset(sock)
        sock = connect("echo.test", port=port)
        self.assertTrue(read_head(sock).startswith(b"HTTP/1.1 200 "))
        sock.sendall(b"ping")
        self.assertEqual(sock.recv(4096), b"ping")
        sock.close()


def client_hello():
    """The bytes of a TLS ClientHello for files.mygreatbank.test, and the TLS object that made it."""
    context = ssl.create_default_context(cafile=ENV["local_ca"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="files.mygreatbank.test")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class InterceptedTunnelsAbandoned(unittest.TestCase):
    """The client of an intercepted tunnel leaves at each moment: before its first byte, mid-ClientHello, after the
    handshake, mid-request, mid-response; then in a plain tunnel mid-head."""

    def whoami(self):
        context = ssl.create_default_context(cafile=ENV["local_ca"])
        sock = connect("files.mygreatbank.test", port=ENV["ports"]["intercept"])
        self.assertTrue(read_head(sock).startswith(b"HTTP/1.1 200 "))
        tls = context.wrap_socket(sock, server_hostname="files.mygreatbank.test")
        tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: files.mygreatbank.test\r\n\r\n")
        return tls, read_head(tls)

    def test_clients_that_leave_at_every_moment_leave_no_descriptor(self):
        pid = ENV["intercepting"].pid
        tls, head = self.whoami()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        tls.close()
        before = open_fds(pid)
        hello = client_hello()
        rng = random.Random(1919)
        for i in range(300):
            moment = i % 6
            try:
                if moment < 3:
                    sock = connect("files.mygreatbank.test", port=ENV["ports"]["intercept"])
                    if moment > 0:
                        read_head(sock)
                    if moment == 2:
                        sock.sendall(hello[:rng.randrange(1, len(hello))])
                elif moment == 3:
                    sock = connect("files.mygreatbank.test", port=ENV["ports"]["intercept"], extra=b"GET / HT")
                else:
                    sock, head = self.whoami()
                    if moment == 5:
                        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: files")
                (reset if rng.random() < 0.5 else socket.socket.close)(sock)
            except OSError:
                pass
        self.assertTrue(wait_until(lambda: open_fds(pid) <= before, 10), f"the proxy holds {open_fds(pid)} fds, {before} before")
        tls, head = self.whoami()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        tls.close()
        self.assertIsNone(ENV["intercepting"].poll(), "the proxy exited")


UPGRADE = (b"GET http://ws.mygreatbank.test/socket HTTP/1.1\r\nHost: ws.mygreatbank.test\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class UpgradesAbandoned(unittest.TestCase):
    """WebSocket upgrades (101, then a relay) whose client leaves at each moment: before the 101 (with bytes sent
    after the request or not), after it, mid-relay, after a half-close."""

    def upgrade(self, extra=b""):
        sock = socket.create_connection(("127.0.0.1", ENV["ports"]["intercept"]), timeout=5)
        sock.sendall(UPGRADE + extra)
        return sock

    def test_clients_that_leave_at_every_moment_leave_no_descriptor(self):
        pid = ENV["intercepting"].pid
        sock = self.upgrade(b"early")
        head = read_head(sock)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        sock.close()
        time.sleep(0.2)
        before = open_fds(pid)
        rng = random.Random(101)
        for i in range(300):
            moment = i % 5
            try:
                sock = self.upgrade(b"early" if rng.random() < 0.5 else b"")
                if moment >= 1:
                    read_head(sock)
                if moment >= 2:
                    sock.sendall(b"x" * rng.randrange(1, 100_000))
                if moment == 3:
                    sock.shutdown(socket.SHUT_WR)
                if moment == 4:
                    sock.recv(10)
                (reset if rng.random() < 0.5 else socket.socket.close)(sock)
            except OSError:
                pass
        self.assertTrue(wait_until(lambda: open_fds(pid) <= before, 10), f"the proxy holds {open_fds(pid)} fds, {before} before")
        sock = self.upgrade()
        head = read_head(sock)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        sock.sendall(b"ping")
        self.assertEqual(sock.recv(4096), b"ping")
        sock.close()
        self.assertIsNone(ENV["intercepting"].poll(), "the proxy exited")


class ClientsLeaveDuringDNS(unittest.TestCase):
    def test_clients_that_leave_while_the_name_resolves_cancel_their_dials(self):
        port, pid, echo = ENV["ports"]["resolving"], ENV["resolving"].pid, ENV["echo"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)  # the resolver's socket opened first
        sock.sendall(f"CONNECT fast.loopback.test:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.assertTrue(read_head(sock).startswith(b"HTTP/1.1 200 "))
        sock.close()
        time.sleep(0.2)
        before, accepted = open_fds(pid), echo.accepted
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"CONNECT slow.loopback.test:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                         + (b"early" if i % 4 < 2 and i % 3 == 0 else b""))  # a FIN after bytes is a half-close
            if i % 2:
                time.sleep(0.001)
            reset(sock) if i % 4 < 2 else sock.close()
        self.assertTrue(wait_until(lambda: open_fds(pid) <= before, 5), f"the proxy holds {open_fds(pid)} fds, {before} before")
        time.sleep(1.5)  # the late answers arrive for dials that were cancelled
        self.assertEqual(echo.accepted, accepted, "a dial went on after its client left during DNS")
        self.assertLessEqual(open_fds(pid), before)
        for host in ("fast.loopback.test", "slow.loopback.test"):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"CONNECT {host}:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            self.assertTrue(read_head(sock).startswith(b"HTTP/1.1 200 "), host)
            sock.sendall(b"ping")
            self.assertEqual(sock.recv(4096), b"ping")
            sock.close()
        self.assertIsNone(ENV["resolving"].poll(), "the proxy exited")


class ReloadAndDrain(unittest.TestCase):
    def test_a_reload_leaves_open_and_dialled_tunnels_working(self):
        process = ENV["process"]
        relaying = connect("echo.test")
        self.assertTrue(read_head(relaying).startswith(b"HTTP/1.1 200 "))
        dialled = connect("echo.test")  # answered 0.3 s from now, after the reload
        process.send_signal(signal.SIGHUP)
        time.sleep(0.1)
        relaying.sendall(b"one")
        self.assertEqual(relaying.recv(4096), b"one")
        self.assertTrue(read_head(dialled).startswith(b"HTTP/1.1 200 "))
        dialled.sendall(b"two")
        self.assertEqual(dialled.recv(4096), b"two")
        relaying.close()
        dialled.close()
        still_serves(self)

    def test_a_drain_lets_tunnels_run_until_drain_timeout_then_cuts_them(self):
        with Fixture.temporary("mtls-proxy-tunnel-drain-", ports=("proxy",)) as fx:
            process = fx.proxy("proxy", config(fx.ports["proxy"], ENV["corporate"].port, drain_timeout="2s"))
            relaying = connect("echo.test", port=fx.ports["proxy"])
            self.assertTrue(read_head(relaying).startswith(b"HTTP/1.1 200 "))
            dialled = connect("echo.test", port=fx.ports["proxy"])
            held = connect("slow.test", port=fx.ports["proxy"])
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            relaying.sendall(b"in flight")
            self.assertEqual(relaying.recv(4096), b"in flight")
            self.assertTrue(read_head(dialled).startswith(b"HTTP/1.1 200 "), "a tunnel dialled at the drain was cut")
            dialled.sendall(b"also")
            self.assertEqual(dialled.recv(4096), b"also")
            process.wait(timeout=10)
            self.assertEqual(process.returncode, 0)
            self.assertLess(time.monotonic() - started, 6)
            for sock in (relaying, dialled, held):
                sock.settimeout(2)
                try:
                    self.assertEqual(read_all(sock), b"")  # cut: EOF (or a reset), never a hang
                except ConnectionResetError:
                    pass
                sock.close()


if __name__ == "__main__":
    harness.run_suite()
