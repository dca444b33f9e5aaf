#!/usr/bin/env python3
"""The proxy's own socket I/O (no bufferevent on the client socket nor on the upstream TLS connection): reads
with TLS read-ahead, writes issued at the end of a loop iteration, backpressure both ways, and the hand-over of a
connection to a relay after 101. Each test moves bytes the way that would lose or stall them if a layer held
some back: many TLS records in one burst to a client that pauses, an upstream that reads slowly, pipelined
requests beyond the read watermark, and bytes sent by the upstream in the same records as its 101.

Real peers only: Python and curl as clients, and as upstream a TLS server in this process that requires the
client certificate of the test CA."""
import hashlib, os, socket, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import US_KEYS, Fixture, RequestUpstream, echo, proxy_section, respond, route, tear_down, upstream_section  # noqa: E402

ENV = {}
RECORD = bytes(range(256)) * 4  # 1,024 bytes, one TLS record each
MANY = 4096  # records in one burst: 4 MiB, beyond every watermark


class Upstream(RequestUpstream):
    """A TLS server requiring a client certificate. Paths:
      GET /records       4 MiB as 4,096 separate TLS records, written as fast as the socket takes them
      POST /slow-sink    reads the Content-Length body slowly, answers its length and SHA-256
      GET /eager-upgrade answers 101 with bytes in the same record, then 50 small records, then echoes
      anything else      200 "fine\\n" """

    def answer(self, conn, head, path, buf):
        if path == "/records":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(RECORD) * MANY).encode() + b"\r\n\r\n")
            for _ in range(MANY):
                conn.sendall(RECORD)
        elif path == "/slow-sink":
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            digest = hashlib.sha256()
            got = len(buf)
            digest.update(buf)
            while got < n:
                time.sleep(0.002)  # a slow reader: the proxy's writes to it must wait, not fail
                data = conn.recv(min(16384, n - got))
                if not data:
                    return None
                digest.update(data)
                got += len(data)
            buf = b""
            respond(conn, f"{got} {digest.hexdigest()}".encode())
        elif path == "/eager-upgrade":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test-echo\r\nConnection: Upgrade\r\n\r\n"
                         b"FIRST-IN-THE-SAME-RECORD;")
            for i in range(50):
                conn.sendall(b"R%03d;" % i)
            echo(conn)
            return None
        else:
            respond(conn, b"fine\n")
        return buf


def setUpModule():
    with Fixture("mtls-proxy-socket-io-", ports=("proxy",)) as fx:
        up = fx.server(Upstream(fx.pki))
        fx.proxy("proxy", proxy_section(fx.ports["proxy"]) + upstream_section(response_timeout="20s")
                 + US_KEYS + route("api.mygreatbank.test", identity="us", connect=up.port))
    ENV.update(fx.env(port=fx.ports["proxy"]))


def tearDownModule():
    tear_down(ENV)


def connect():
    return socket.create_connection(("127.0.0.1", ENV["port"]), timeout=20)


class ManyRecordsToAPausingClient(unittest.TestCase):
    def test_every_record_arrives_after_the_client_pauses(self):
        # The client stops reading: the proxy stops reading the upstream with records still buffered in OpenSSL
        # (read-ahead), and must read them when the client drains, though the socket may never turn readable.
        for pause in (1.5, 0.3):
            with self.subTest(pause=pause), connect() as s:
                s.sendall(b"GET http://api.mygreatbank.test/records HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
                head, body = harness.read_response(s, pause_after_head=pause)
                self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
                self.assertEqual(len(body), len(RECORD) * MANY)
                self.assertEqual(body, RECORD * MANY)
                # The connection is still good for the next request.
                s.sendall(b"GET http://api.mygreatbank.test/next HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
                self.assertEqual(harness.read_response(s)[1], b"fine\n")

    def test_curl_download_matches(self):
        r = subprocess.run(["curl", "-sS", "--max-time", "30", "-x", f"http://127.0.0.1:{ENV['port']}",
                            "--limit-rate", "2M", "http://api.mygreatbank.test/records"],
                           capture_output=True, env=harness.clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(hashlib.sha256(r.stdout).hexdigest(), hashlib.sha256(RECORD * MANY).hexdigest())


class UploadToASlowUpstream(unittest.TestCase):
    def test_upload_waits_for_the_upstream_and_arrives_whole(self):
        body = os.urandom(6 * 1024 * 1024)
        with connect() as s:
            s.sendall(b"POST http://api.mygreatbank.test/slow-sink HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            s.sendall(body)
            head, answer = harness.read_response(s)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(answer.decode(), f"{len(body)} {hashlib.sha256(body).hexdigest()}")


class PipelinedBeyondTheReadWatermark(unittest.TestCase):
    def test_every_pipelined_request_is_answered(self):
        # ~400 KiB of requests in one write: more than the proxy reads ahead before it stops reading.
        req = b"GET http://api.mygreatbank.test/p HTTP/1.1\r\nHost: api.mygreatbank.test\r\nX-Pad: " + b"p" * 60 + b"\r\n\r\n"
        n = (400 * 1024) // len(req) + 1
        with connect() as s:
            sender = threading.Thread(target=lambda: s.sendall(req * (n - 1) + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")))
            sender.start()
            data = b""
            while True:
                chunk = s.recv(262144)
                if not chunk:
                    break
                data += chunk
            sender.join()
        self.assertEqual(data.count(b"HTTP/1.1 200 "), n)
        self.assertEqual(data.count(b"\r\n\r\nfine\n"), n)


class UpgradeHandsOverWhatWasReadAhead(unittest.TestCase):
    def test_bytes_in_the_records_of_the_101_reach_the_client_in_order(self):
        expected = b"FIRST-IN-THE-SAME-RECORD;" + b"".join(b"R%03d;" % i for i in range(50))
        with connect() as s:
            s.sendall(b"GET http://api.mygreatbank.test/eager-upgrade HTTP/1.1\r\nHost: api.mygreatbank.test\r\n"
                      b"Connection: Upgrade\r\nUpgrade: test-echo\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < len(expected):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
            self.assertEqual(rest, expected)
            # Then both ways through the relay.
            s.sendall(b"ping through the relay")
            echoed = b""
            while len(echoed) < len(b"ping through the relay"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                echoed += chunk
            self.assertEqual(echoed, b"ping through the relay")


if __name__ == "__main__":
    harness.run_suite()
