#!/usr/bin/env python3
"""Attacks on the per-worker exchange storage (an exchange lent to a connection only while a request is in
flight, then reused by another connection), on worker event bases without locks (eventfd wake-ups), and on
unowned references between connections: one client's request data must never reach another client or upstream,
a connection that goes away in an unusual order must not crash the proxy, and reload or shutdown storms under
load must neither hang nor lose a request. Run it with an AddressSanitizer build through MTLS_PROXY_BIN for
the lifetime cases. Everything on loopback."""
import concurrent.futures, json, os, random, signal, socket, struct, subprocess, sys, threading, time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import tear_down, with_upstream  # noqa: E402
from test_faults import basic, bcrypt_hash, read_response, write  # noqa: E402

ENV = {}
HOST = "api.mygreatbank.test"


def setUpModule():
    ENV.update(with_upstream("mtls-proxy-exchange-reuse-"))


def tearDownModule():
    tear_down(ENV)


def config(port, workers=1, extra_proxy="", extra_routes="", dns_port=None):
    return (f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = {workers}\n{extra_proxy}'
            f'[log]\naccess = "access-{port}.log"\nformat = "json"\n'
            + harness.us_identity(dns_port)
            + f'[[route]]\nhost = "{HOST}"\nidentity = "us"\nconnect = "127.0.0.1:{ENV["up"]}"\n' + extra_routes)


def start(name, **kw):
    """A proxy of its own in the module's folder, `name`.conf from `config(port, **kw)`: (its processes, to stop
    with stop_all(); the process; its port)."""
    fx = ENV["fixture"].beside(ports=("proxy",))
    p = fx.proxy(name, config(fx.ports["proxy"], **kw), port="proxy")
    return fx.procs, p, fx.ports["proxy"]


def tls_script(script):
    """One of the folder's small TLS servers (`script`, e.g. faulty.py) in the module's folder: (its processes, to
    stop with stop_all(); its port)."""
    fx = ENV["fixture"].beside(ports=("up",))
    fx.tls_script(script, "up", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return fx.procs, fx.ports["up"]


class Reader:
    """Responses (Content-Length framed) read one after the other from a keep-alive socket."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        c = self.sock.recv(65536)
        if not c:
            raise EOFError(f"closed; buffered {self.buf[:200]!r}")
        self.buf += c

    def response(self):
        """(status, headers, body)"""
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split(" ")[1]), headers, body


def alive(test, p, port):
    test.assertIsNone(p.poll(), f"the proxy exited (code {p.returncode})")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET http://{HOST}/hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        status, _, _ = read_response(s)
    test.assertEqual(status, 200, "the proxy does not answer after the attack")


def rst(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class NoDataCrossesClients(unittest.TestCase):
    """Many clients on one worker, each with its own secrets (Authorization, Cookie, Proxy-Authorization is
    stripped), big heads and small heads alternating (reused buffers keep the capacity of the biggest), some
    pipelined, some cut off mid-head or with a reset: the upstream sees for each request exactly the fields
    that client sent, and each response goes to the client that asked."""

    def test_each_request_carries_only_its_own_fields(self):
        procs, p, port = start("isolation", workers=1)
        errors = []
        answered = {}  # client address as the proxy logs it -> responses read on that connection

        def client(i):
            rnd = random.Random(i)
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                reader = Reader(s)
                me = "%s:%d" % s.getsockname()
                for n in range(30):
                    tag = f"c{i}n{n}"
                    big = rnd.random() < 0.5
                    fields = {"X-Tag": tag}
                    if big:
                        fields["Authorization"] = f"Bearer secret-{tag}-" + "a" * rnd.randint(100, 3000)
                        fields["Cookie"] = f"session=secret-{tag}-" + "b" * rnd.randint(100, 3000)
                        for k in range(rnd.randint(1, 40)):
                            fields[f"X-Extra-{k}"] = f"{tag}-{k}"
                    head = f"GET http://{HOST}/headers?tag={tag} HTTP/1.1\r\nHost: {HOST}\r\n"
                    head += "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
                    pipelined = rnd.random() < 0.3
                    count = 3 if pipelined else 1
                    s.sendall(head.encode() * count)
                    for _ in range(count):
                        status, _, body = reader.response()
                        answered[me] = answered.get(me, 0) + 1
                        if status != 200:
                            errors.append(f"{tag}: status {status}")
                            continue
                        seen = json.loads(body)
                        got = {k.lower(): v for k, v in seen["headers"]}
                        if f"tag={tag}" not in seen["request_line"]:
                            errors.append(f"{tag}: response of another request: {seen['request_line']}")
                        for k, v in got.items():
                            if "secret-" in v or k.startswith("x-extra") or k == "x-tag":
                                if k not in (f.lower() for f in fields) or fields[next(f for f in fields if f.lower() == k)] != v:
                                    errors.append(f"{tag}: upstream saw a field it did not send: {k}: {v[:60]}")
                        for k, v in fields.items():
                            if got.get(k.lower()) != v:
                                errors.append(f"{tag}: field {k} lost or changed")
                    if rnd.random() < 0.1:
                        # A half head then a reset, and a new connection.
                        s.sendall(f"GET http://{HOST}/headers HTTP/1.1\r\nAuthorization: Bearer secret-cut-{tag}\r\n".encode())
                        rst(s)
                        s = socket.create_connection(("127.0.0.1", port), timeout=30)
                        reader = Reader(s)
                        me = "%s:%d" % s.getsockname()
                s.close()
            except Exception as e:  # noqa: BLE001
                errors.append(f"client {i}: {e!r}")

        try:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(client, range(16)))
            self.assertEqual(errors[:10], [])
            alive(self, p, port)
            # The access log: one record per answered request, on the connection that sent it.
            time.sleep(1)
            records = harness.json_log_lines(f"{ENV['dir']}/access-{port}.log")
            logged = {}
            for r in records:
                if r.get("status") == 200 and r.get("path") == "/headers":
                    logged[r["client"]] = logged.get(r["client"], 0) + 1
            self.assertEqual(logged, answered)
        finally:
            procs.stop_all()


class CredentialsStayWithTheirRequest(unittest.TestCase):
    """Proxy credentials accepted for one request authorize that request only: a request after it on the same
    connection (pipelined, or on keep-alive) or on another connection of the same worker (which may get the
    same exchange storage) without credentials is refused with 407, and Proxy-Authorization never goes
    upstream."""

    def test_an_accepted_credential_does_not_carry_over(self):
        d = ENV["dir"]
        alice = bcrypt_hash("right-horse", 5)
        if alice is None:
            self.skipTest("htpasswd (apache2-utils) is not installed to make a bcrypt hash")
        write(f"{d}/users-carry", f"alice:{alice}\n", 0o600)
        procs, p, port = start("carry", workers=1, extra_proxy=f'auth_file = "{d}/users-carry"\n')
        try:
            good = "".join(f"{k}: {v}\r\n" for k, v in basic("alice", "right-horse").items())
            with_creds = f"GET http://{HOST}/headers HTTP/1.1\r\nHost: {HOST}\r\n{good}\r\n"
            without = f"GET http://{HOST}/headers HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            for _ in range(5):
                a = socket.create_connection(("127.0.0.1", port), timeout=30)
                ra = Reader(a)
                a.sendall((with_creds + without).encode())  # pipelined
                status, headers, body = ra.response()
                self.assertEqual(status, 200)
                self.assertNotIn("proxy-authorization", {k.lower() for k, _ in json.loads(body)["headers"]})
                second = ra.response()[0]
                self.assertEqual(second, 407, "a pipelined request without credentials rode on the previous one's")
                a.close()
                b = socket.create_connection(("127.0.0.1", port), timeout=30)
                rb = Reader(b)
                b.sendall(with_creds.encode())
                self.assertEqual(rb.response()[0], 200)
                c = socket.create_connection(("127.0.0.1", port), timeout=30)
                c.sendall(without.encode())
                self.assertEqual(Reader(c).response()[0], 407, "another connection got the credentials' effect")
                b.sendall(without.encode())
                self.assertEqual(rb.response()[0], 407, "a keep-alive request without credentials was let through")
                b.close()
                c.close()
        finally:
            procs.stop_all()


class UnusualCloseOrders(unittest.TestCase):
    """A client that goes away while its exchange waits on something else: the upstream connect (an upstream
    that accepts TCP and never speaks TLS), a DNS answer (a nameserver that answers late or never), a bcrypt
    check off the loop, a websocket relay, a CONNECT tunnel, the head timeout. Under AddressSanitizer, a
    callback reaching a freed connection or a given-back exchange is a crash; without it, a trap."""

    def test_client_leaves_during_connect_dns_auth_and_relays(self):
        d = ENV["dir"]
        # Accepts TCP (the kernel's backlog) and never answers the ClientHello.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(512)
        silent_port = silent.getsockname()[1]
        # A nameserver that answers after 300 ms, or never for names starting with "never".
        dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dns.bind(("127.0.0.1", 0))
        dns_port = dns.getsockname()[1]
        stop = threading.Event()

        def late_dns():
            while not stop.is_set():
                try:
                    dns.settimeout(0.2)
                    data, addr = dns.recvfrom(512)
                except OSError:
                    continue
                i, labels = 12, []
                while i < len(data) and data[i] != 0:
                    labels.append(data[i + 1:i + 1 + data[i]].decode("ascii", "replace"))
                    i += data[i] + 1
                if labels and labels[0].lower().startswith("never"):  # evdns randomizes the case
                    continue
                qid = struct.unpack(">H", data[:2])[0]
                qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
                question = data[12:i + 5]
                if qtype == 1:
                    reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + b"\xc0\x0c" \
                        + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
                else:
                    reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
                threading.Timer(0.3, lambda r=reply, a=addr: dns.sendto(r, a) if not stop.is_set() else None).start()

        threading.Thread(target=late_dns, daemon=True).start()
        wsproc, ws = tls_script("ws_echo.py")
        alice = bcrypt_hash("right-horse", 10)
        users = f"{d}/users-reuse"
        if alice:
            write(users, f"alice:{alice}\n", 0o600)
        extra_routes = f"""
[[route]]
host = "silent.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{silent_port}"
connect_timeout = "1s"
[[route]]
host = "tunnel-dns.loopback.test"
port = {ENV['up']}
action = "tls"
allow_private = true
[[route]]
host = "*.loopback.test"
identity = "us"
allow_private = true
connect_timeout = "2s"
[[route]]
host = "ws.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ws}"
[[route]]
host = "tunnel-silent.mygreatbank.test"
action = "tls"
connect = "127.0.0.1:{silent_port}"
[[route]]
host = "tunnel-up.mygreatbank.test"
action = "tls"
connect = "127.0.0.1:{ENV['up']}"
"""
        procs, p, port = start("orders", workers=2, dns_port=dns_port, extra_routes=extra_routes,
                               extra_proxy='header_timeout = "1s"\nclient_timeout = "2s"\n')
        procs2 = p2 = port2 = None
        try:
            harness.wait_for_port(ws)
            up = ENV["up"]
            reqs = {
                "silent": f"GET http://silent.mygreatbank.test/ HTTP/1.1\r\nHost: silent.mygreatbank.test\r\n\r\n",
                "dns-late": f"GET http://svc.loopback.test:{up}/headers HTTP/1.1\r\nHost: svc.loopback.test:{up}\r\n\r\n",
                "dns-never": f"GET http://never.loopback.test:{up}/headers HTTP/1.1\r\nHost: never.loopback.test:{up}\r\n\r\n",
                "ws": "GET http://ws.mygreatbank.test/ HTTP/1.1\r\nHost: ws.mygreatbank.test\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                "connect-silent": "CONNECT tunnel-silent.mygreatbank.test:443 HTTP/1.1\r\nHost: tunnel-silent.mygreatbank.test:443\r\n\r\n",
                "connect-up": "CONNECT tunnel-up.mygreatbank.test:443 HTTP/1.1\r\nHost: tunnel-up.mygreatbank.test:443\r\n\r\n"
                              "\x16\x03\x01\x00\x05hello",
                "connect-dns": f"CONNECT tunnel-dns.loopback.test:{up} HTTP/1.1\r\nHost: tunnel-dns.loopback.test:{up}\r\n\r\n",
                "slow-body": f"POST http://{HOST}/echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\nabc",
                "half-head": f"GET http://{HOST}/ HTTP/1.1\r\nHost: {HOST}\r\n",
                "slow-upstream": f"GET http://{HOST}/slow?ms=400 HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
            }
            rnd = random.Random(7)

            def attack(n):
                kind = rnd.choice(sorted(reqs))
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                    s.sendall(reqs[kind].encode())
                    time.sleep(rnd.choice([0, 0.001, 0.05, 0.35, 0.5]))
                    if kind == "ws" and rnd.random() < 0.5:
                        s.sendall(b"\x81\x85abcd" + bytes(c ^ b"abcd"[j % 4] for j, c in enumerate(b"hello")))
                    rst(s) if rnd.random() < 0.7 else s.close()
                except OSError:
                    pass

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(attack, range(400)))
            alive(self, p, port)

            if alice:
                # The bcrypt check runs off the loop; the client is gone when its result is posted back.
                procs2, p2, port2 = start("orders-auth", workers=2, extra_proxy=f'auth_file = "{users}"\n')

                def auth_attack(n):
                    try:
                        s = socket.create_connection(("127.0.0.1", port2), timeout=10)
                        pw = "right-horse" if n % 3 == 0 else f"wrong-{n}"
                        head = f"GET http://{HOST}/headers HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer secret-{n}\r\n"
                        head += "".join(f"{k}: {v}\r\n" for k, v in basic("alice", pw).items()) + "\r\n"
                        s.sendall(head.encode())
                        time.sleep(rnd.choice([0, 0.01, 0.1]))
                        rst(s)
                    except OSError:
                        pass

                with concurrent.futures.ThreadPoolExecutor(16) as pool:
                    list(pool.map(auth_attack, range(120)))
                time.sleep(3)
                self.assertIsNone(p2.poll(), f"the proxy with auth_file exited (code {p2.returncode})")
                with socket.create_connection(("127.0.0.1", port2), timeout=60) as s:
                    s.sendall((f"GET http://{HOST}/hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                               + "".join(f"{k}: {v}\r\n" for k, v in basic("alice", "right-horse").items()) + "\r\n").encode())
                    status, _, _ = read_response(s)
                self.assertIn(status, (200, 429))
            time.sleep(3)  # connect timeouts and late DNS answers land
            alive(self, p, port)
        finally:
            stop.set()
            procs.stop_all()
            if procs2:
                procs2.stop_all()
            wsproc.stop_all()
            silent.close()
            dns.close()


class FaultyUpstreamWithClientsLeaving(unittest.TestCase):
    """An upstream that fails in every way (closes on reuse, which makes the proxy retry on a fresh connection;
    resets mid-body; truncates; answers garbage or too much) while clients pipeline, keep connections alive
    and reset at random moments: whichever side fails first, the other's callbacks must not reach a freed
    connection or a given-back exchange."""

    def test_failures_on_both_sides_in_any_order(self):
        d = ENV["dir"]
        fprocs, fport = tls_script("faulty.py")
        procs, p, port = start("faulty", workers=2, extra_routes=f"""
[[route]]
host = "faulty.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{fport}"
response_timeout = "3s"
""")
        paths = ["/reuse-trap", "/reset-mid", "/close-after-request", "/garbage", "/too-long", "/truncated-chunked",
                 "/", "/"]
        rnd = random.Random(11)

        def client(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                for _ in range(rnd.randint(1, 6)):
                    count = rnd.choice([1, 1, 2, 3])
                    s.sendall("".join(f"GET http://faulty.mygreatbank.test{rnd.choice(paths)} HTTP/1.1\r\n"
                                      f"Host: faulty.mygreatbank.test\r\nAuthorization: Bearer secret-{n}\r\n\r\n"
                                      for _ in range(count)).encode())
                    time.sleep(rnd.choice([0, 0, 0.01, 0.1, 0.4]))
                    if rnd.random() < 0.3:
                        break
                    s.settimeout(0.5)
                    try:
                        s.recv(65536)
                    except OSError:
                        pass
                rst(s) if rnd.random() < 0.6 else s.close()
            except OSError:
                pass

        try:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(client, range(300)))
            time.sleep(4)  # response timeouts land
            alive(self, p, port)
        finally:
            procs.stop_all()
            fprocs.stop_all()


class SignalStormsUnderLoad(unittest.TestCase):
    """SIGHUP in a loop while clients keep requests in flight (pooled upstream connections are retired while
    in use), then SIGTERM; and SIGINT twice under load. No request may hang until a timeout, no worker may miss
    its wake-up, and the process must end."""

    def storm(self, workers, extra_routes=""):
        procs, p, port = start(f"storm-{workers}", workers=workers, extra_routes=extra_routes)
        stop = threading.Event()
        results, slow = [], []

        def client(i):
            while not stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=20)
                    reader = Reader(s)
                    for _ in range(20):
                        if stop.is_set():
                            break
                        t = time.monotonic()
                        path = "/slow?ms=50" if i % 4 == 0 else "/hello"
                        s.sendall(f"GET http://{HOST}{path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                        status, headers, _ = reader.response()
                        took = time.monotonic() - t
                        results.append(status)
                        if took > 8:
                            slow.append(took)
                        if headers.get("connection", "").lower() == "close":
                            break
                    s.close()
                except (OSError, EOFError) as e:
                    results.append(repr(e)[:60])

        try:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            end = time.monotonic() + 6
            while time.monotonic() < end:
                p.send_signal(signal.SIGHUP)
                time.sleep(0.02)
            time.sleep(1)
            stop.set()
            for t in threads:
                t.join(60)
            self.assertFalse(any(t.is_alive() for t in threads), "a client is stuck")
            self.assertIsNone(p.poll(), f"the proxy exited during the reload storm (code {p.returncode})")
            others = [r for r in results if r != 200]
            print(f"\n  workers={workers}: {results.count(200)} x 200, others {others[:5]} ({len(others)}), "
                  f"slow {slow[:5]}", file=sys.stderr)
            self.assertEqual(slow, [], "requests took longer than 8 s (a lost wake-up?)")
            self.assertGreater(results.count(200), 50)
            self.assertLessEqual(len(others), len(results) // 50 + 2, others[:10])
            alive(self, p, port)
            # SIGTERM under load: drains and ends.
            stop.clear()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            time.sleep(1)
            p.send_signal(signal.SIGTERM)
            try:
                code = p.wait(40)
            except subprocess.TimeoutExpired:
                self.fail("SIGTERM under load: the proxy did not end within 40 s")
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            self.assertEqual(code, 0)
        finally:
            stop.set()
            procs.stop_all()

    def test_reload_storm_two_workers(self):
        self.storm(2)

    def test_reload_storm_four_workers(self):
        self.storm(4)

    def test_reload_storm_with_pooled_connections_timing_out_as_they_are_taken(self):
        # The idle timeout of pooled upstream connections about as long as the gap between requests.
        self.storm(2, extra_routes='idle_timeout = "30ms"\n')

    def test_reload_storm_with_credential_checks_off_the_loop(self):
        """bcrypt checks run on other threads and post their results back through the eventfd while reloads
        replace the runtime (and the authenticator) in a loop; good clients from their own address must all
        be answered, none left waiting for a result that never comes."""
        d = ENV["dir"]
        alice = bcrypt_hash("right-horse", 6)
        if alice is None:
            self.skipTest("htpasswd (apache2-utils) is not installed to make a bcrypt hash")
        write(f"{d}/users-storm", f"alice:{alice}\nbob:{alice}\n", 0o600)
        procs, p, port = start("auth-storm", workers=4, extra_proxy=f'auth_file = "{d}/users-storm"\n')
        stop = threading.Event()
        good, bad, slow = [], [], []

        def client(i, right):
            n = 0
            while not stop.is_set():
                n += 1
                user = "alice" if i % 2 else "bob"
                pw = "right-horse" if right else f"wrong-{i}-{n}"
                source = "127.0.0.2" if right else f"127.0.0.{10 + i}"
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as s:
                        t = time.monotonic()
                        s.sendall((f"GET http://{HOST}/hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                                   + "".join(f"{k}: {v}\r\n" for k, v in basic(user, pw).items()) + "\r\n").encode())
                        status = read_response(s)[0]
                        if time.monotonic() - t > 8:
                            slow.append((status, time.monotonic() - t))
                        (good if right else bad).append(status)
                except OSError as e:
                    (good if right else bad).append(repr(e)[:50])

        threads = [threading.Thread(target=client, args=(i, i < 6)) for i in range(16)]
        try:
            for t in threads:
                t.start()
            end = time.monotonic() + 6
            while time.monotonic() < end:
                p.send_signal(signal.SIGHUP)
                time.sleep(0.02)
            time.sleep(1)
            stop.set()
            for t in threads:
                t.join(60)
            self.assertFalse(any(t.is_alive() for t in threads), "a client is stuck")
            print(f"\n  good: {good.count(200)} x 200, others {[g for g in good if g != 200][:5]}; "
                  f"bad: " + ", ".join(f"{list(map(str, bad)).count(x)} x {x}" for x in sorted(set(map(str, bad)))), file=sys.stderr)
            self.assertIsNone(p.poll(), f"the proxy exited (code {p.returncode})")
            self.assertEqual(slow, [], "answers took longer than 8 s (a result posted back and not seen?)")
            self.assertGreater(good.count(200), 20)
            self.assertEqual([g for g in good if g != 200], [])
            self.assertGreater(len(bad), 20)
            self.assertTrue(set(map(str, bad)) <= {"407", "429", "503"}, set(map(str, bad)))
            p.send_signal(signal.SIGTERM)
            try:
                self.assertEqual(p.wait(40), 0)
            except subprocess.TimeoutExpired:
                self.fail("SIGTERM after the storm: the proxy did not end within 40 s")
        finally:
            stop.set()
            procs.stop_all()

    def test_sigint_twice_under_load(self):
        procs, p, port = start("sigint", workers=4)
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        s.sendall(f"GET http://{HOST}/slow?ms=2000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                        read_response(s)
                except OSError:
                    time.sleep(0.05)

        threads = [threading.Thread(target=client) for _ in range(8)]
        try:
            for t in threads:
                t.start()
            time.sleep(1)
            p.send_signal(signal.SIGINT)
            time.sleep(0.1)
            p.send_signal(signal.SIGINT)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                self.fail("SIGINT twice under load: the proxy did not stop")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            procs.stop_all()


if __name__ == "__main__":
    harness.run_suite()
