#!/usr/bin/env python3
"""A blind tunnel while it is dialled: a client that leaves then (FIN or reset) ends the dial at once, not when
connect_timeout passes; bytes a client sends before the 200 still reach the service. The dial goes through a
corporate proxy on loopback (a Python thread) that holds CONNECTs to slow.test unanswered and answers those to
echo.test after a moment, then echoes."""
import os, socket, struct, sys, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, proxy_section, route, tear_down  # noqa: E402

ENV = {}


class HoldingCorporateProxy:
    """Accepts CONNECTs: slow.test is never answered (its connections are kept, to see when the proxy closes them),
    echo.test is answered 200 after 0.3 s, then what comes is echoed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        if head.startswith(b"CONNECT slow.test:"):
            with self.lock:
                self.held.append(conn)
            return
        time.sleep(0.3)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                conn.sendall(chunk)
        except OSError:
            pass
        conn.close()

    def held_open(self):
        """How many held connections the proxy has not closed yet."""
        open_count = 0
        with self.lock:
            for conn in self.held:
                conn.setblocking(False)
                try:
                    if conn.recv(1) != b"":
                        open_count += 1
                except BlockingIOError:
                    open_count += 1
                except OSError:
                    pass
        return open_count

    def close(self):
        self.sock.close()
        with self.lock:
            for conn in self.held:
                conn.close()


def setUpModule():
    with Fixture("mtls-proxy-tunnel-dial-", ports=("proxy",)) as fx:
        corporate = fx.server(HoldingCorporateProxy())
        corporate_url = f"http://127.0.0.1:{corporate.port}"
        fx.write("proxy.conf", proxy_section(fx.ports["proxy"])
                 + "[upstream]\nconnect_timeout = \"30s\"\n"
                 + route("slow.test", action="tls", proxy=corporate_url, allow_private=True)
                 + route("echo.test", action="tls", proxy=corporate_url, allow_private=True))
        process = fx.proxy("proxy")
    ENV.update(fx.env(corporate=corporate, process=process))


def tearDownModule():
    tear_down(ENV)


def open_fds():
    return len(os.listdir(f"/proc/{ENV['process'].pid}/fd"))


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class ClientLeavesWhileDialled(unittest.TestCase):
    def leave(self, reset):
        corporate = ENV["corporate"]
        before = open_fds()
        held_before = len(corporate.held)
        clients = []
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
            sock.sendall(b"CONNECT slow.test:443 HTTP/1.1\r\nHost: slow.test:443\r\n\r\n")
            clients.append(sock)
        self.assertTrue(wait_until(lambda: len(corporate.held) == held_before + 10, 5), "the dials did not reach the corporate proxy")
        for sock in clients:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        # connect_timeout is 30 s: a dial the client's departure does not end would still hold both sockets.
        self.assertTrue(wait_until(lambda: corporate.held_open() == 0, 3),
                        f"{corporate.held_open()} dials to the corporate proxy still open after their clients left")
        self.assertTrue(wait_until(lambda: open_fds() <= before, 3), f"the proxy holds {open_fds()} fds, {before} before")

    def test_a_client_that_closes_while_its_tunnel_is_dialled_ends_the_dial(self):
        self.leave(reset=False)

    def test_a_client_that_resets_while_its_tunnel_is_dialled_ends_the_dial(self):
        self.leave(reset=True)


class BytesBeforeTheAnswer(unittest.TestCase):
    def test_bytes_sent_before_the_200_reach_the_service(self):
        sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        sock.sendall(b"CONNECT echo.test:443 HTTP/1.1\r\nHost: echo.test:443\r\n\r\nearly bytes")
        received = b""
        while not received.endswith(b"early bytes"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received)
        self.assertTrue(received.endswith(b"\r\n\r\nearly bytes"), received)
        sock.sendall(b"and after")
        self.assertEqual(sock.recv(4096), b"and after")
        sock.close()


if __name__ == "__main__":
    harness.run_suite()
