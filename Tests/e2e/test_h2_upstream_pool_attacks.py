#!/usr/bin/env python3
"""Hostile peers against the HTTP/2 upstream pool (PING liveness, `protocol = "auto"`'s hand-over to HTTP/1.1,
retries of refused streams), on loopback, against the AddressSanitizer build: servers that answer a PING with
GOAWAY (and close), answer it late, with other opaque data, or with a flood of ACKs; a server that refuses every
stream; an HTTP/1.1 server behind `auto` that answers 101, floods 1xx heads, cuts a body or closes at once;
clients that leave at any moment of a hand-over; a server whose ALPN answer turns from h2 to http/1.1; a server
sending GOAWAY with its SETTINGS every time; a reload and SIGTERM while requests wait for a PING answer or
are handed over (they finish)."""
import concurrent.futures, json, os, random, signal, socket, ssl, subprocess, sys, threading, time, unittest, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture, harness  # noqa: E402
from fixture import HAVE_H2, NO_H2  # noqa: E402
ENV = {}
os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")


class Misbehaving11(harness.TLSUpstream):
    """An HTTP/1.1-only server (ALPN http/1.1, client certificate required) that misbehaves by path; its TLS
    handshake can be held back (`handshake_delay`) so that clients can leave while the proxy waits for it."""

    def __init__(self, pki, handshake_delay=0.0):
        super().__init__(pki)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.handshake_delay = handshake_delay
        self.connections = 0
        self.lock = threading.Lock()

    def handle(self, raw):
        with self.lock:
            self.connections += 1
        if self.handshake_delay:
            time.sleep(self.handshake_delay)
        super().handle(raw)

    def serve(self, conn):
        while True:
            head, rest = harness.read_head(conn)
            if head is None:
                return
            text = head.decode("latin-1")
            path = text.split(" ")[1]
            length = 0
            for line in text.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            while len(rest) < length:
                data = conn.recv(65536)
                if not data:
                    return
                rest += data
            if path.endswith("/101"):
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: nonsense\r\nConnection: upgrade\r\n\r\ngarbage after 101")
                time.sleep(0.3)
                return
            if path.endswith("/interim-flood"):
                conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n" * 2000 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                continue
            if path.endswith("/cut-body"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                time.sleep(0.1)
                return
            if path.endswith("/close-at-once"):
                return
            if path.endswith("/slow"):
                time.sleep(1.0)
            body = json.dumps(dict(alpn=conn.selected_alpn_protocol(), length=len(rest))).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


class Switcher(harness.ThreadedServer):
    """A TCP relay whose first connection goes to `first` (an HTTP/2 server) and every later one to `later` (an
    HTTP/1.1 one): one address whose ALPN answer changes between connections (a rolling downgrade)."""

    def __init__(self, first, later):
        self.first, self.later, self.count = first, later, 0
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, sock):
        with self.lock:
            self.count += 1
            port = self.first if self.count == 1 else self.later
        try:
            upstream = socket.create_connection(("127.0.0.1", port))
        except OSError:
            sock.close()
            return

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(upstream, sock), daemon=True).start()
        pump(sock, upstream)


def route(name, host, port, protocol="h2", **extra):
    lines = [f'[[route]]', f'name = "{name}"', f'host = "{host}"', 'identity = "us"', f'protocol = "{protocol}"',
             f'connect = "127.0.0.1:{port}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


def setUpModule():
    if not HAVE_H2:
        return
    d = harness.folder_with_pki("mtls-proxy-h2-pool-attacks-")
    pki = f"{d}/pki"
    procs = harness.Processes()
    proxy_port, admin_port, hostile = harness.free_port(), harness.free_port(), harness.free_port()
    try:
        fixture.start_tls_script(procs, pki, "h2hostile.py", hostile, log=f"{d}/hostile.log")
        goaway = harness.free_port()
        fixture.start_tls_script(procs, pki, "h2hostile.py", goaway, "--goaway-at-once")
        h11 = Misbehaving11(pki)
        h11slow = Misbehaving11(pki, handshake_delay=0.4)
        switcher = Switcher(hostile, h11.port)
        # PING: a 300 ms interval; the answer may take up to 1.5 s (GOAWAY-instead-of-ACK servers answer after 700 ms).
        ping = dict(h2_ping_interval="300ms", h2_ping_timeout="1500ms", idle_timeout="30s", response_timeout="8s")
        routes = "".join([
            route("refuse", "refuse.mygreatbank.test", hostile),
            route("goawayatonce", "goawayatonce.mygreatbank.test", goaway),
            route("late", "late.mygreatbank.test", hostile, h2_ping_interval="300ms", h2_ping_timeout="500ms",
                  idle_timeout="30s"),
            route("longtimeout", "longtimeout.mygreatbank.test", hostile, h2_ping_interval="200ms", h2_ping_timeout="3s",
                  idle_timeout="30s"),
            route("idlefirst", "idlefirst.mygreatbank.test", hostile, h2_ping_interval="2s", idle_timeout="500ms"),
            route("huge", "huge.mygreatbank.test", hostile, h2_ping_interval="999999999h", h2_ping_timeout="999999999h",
                  idle_timeout="999999999h"),
            route("pingoff", "pingoff.mygreatbank.test", hostile, h2_ping_interval="off", idle_timeout="30s"),
            route("aswitch", "aswitch.mygreatbank.test", switcher.port, "auto", **ping),
            route("a101", "a101.mygreatbank.test", h11.port, "auto"),
            route("aflood", "aflood.mygreatbank.test", h11.port, "auto"),
            route("acut", "acut.mygreatbank.test", h11.port, "auto"),
            route("aclose", "aclose.mygreatbank.test", h11.port, "auto"),
            route("aleave", "aleave.mygreatbank.test", h11slow.port, "auto"),
            route("areload", "areload.mygreatbank.test", h11slow.port, "auto"),
            route("aterm", "aterm.mygreatbank.test", h11slow.port, "auto"),
            route("pinged", "*.mygreatbank.test", hostile, **ping),
        ])
        config = f"""
{fixture.json_log_proxy(proxy_port, admin_port, drain_timeout="10s")}
{routes}"""
        harness.write_file(f"{d}/proxy.conf", config)
        proxy = harness.start_proxy(procs, f"{d}/proxy.conf", f"{d}/proxy.log", proxy_port)
    except BaseException:
        procs.stop_all()
        raise
    ENV.update(procs=procs, proxy=proxy, dir=d, port=proxy_port, url=f"http://127.0.0.1:{proxy_port}", admin=admin_port,
               h11=h11, h11slow=h11slow, switcher=switcher)


def tearDownModule():
    fixture.stop_processes(ENV)


def session():
    return fixture.proxy_session(ENV["url"])


def server_log():
    return json.loads(session().get("http://log.mygreatbank.test/_log", timeout=10).text)


def metrics():
    return urllib.request.urlopen(f"http://127.0.0.1:{ENV['admin']}/metrics", timeout=5).read().decode()


def raw_request(data, read=True, timeout=10):
    """Sends `data` to the proxy on a connection of its own; the whole answer (until the proxy closes), or b""."""
    s = socket.create_connection(("127.0.0.1", ENV["port"]), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


class Attacks(fixture.ProxyStaysUp, unittest.TestCase):
    env = ENV

    def arm(self, host, mode):
        """One request on `host`'s connection (it opens), which then answers PINGs as `mode` says; its number."""
        r = session().get(f"http://{host}/ping-mode/{mode}", timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        return r.json()["conn"]

    # PING answered with GOAWAY while a request waits for the answer

    def goaway_while_waiting(self, host, mode, method):
        conn = self.arm(host, mode)
        time.sleep(0.55)  # the idle PING went out at 300 ms; the server's GOAWAY comes 700 ms after it
        started = time.time()
        if method == "POST":
            r = session().post(f"http://{host}/headers", data=b"x" * 5000, timeout=10)
        else:
            r = session().get(f"http://{host}/headers", timeout=10)
        self.assertEqual(r.status_code, 200, (r.status_code, r.headers.get("Proxy-Status"), r.text[:300]))
        self.assertNotEqual(r.json()["conn"], conn, "the request went to the connection that sent GOAWAY")
        self.assertLess(time.time() - started, 4)

    def test_a_post_waiting_for_a_ping_answer_that_is_goaway_and_close_goes_to_another_connection(self):
        self.goaway_while_waiting("gc-post.mygreatbank.test", "goaway-close-700", "POST")

    def test_a_get_waiting_for_a_ping_answer_that_is_goaway_and_close_goes_to_another_connection(self):
        self.goaway_while_waiting("gc-get.mygreatbank.test", "goaway-close-700", "GET")

    def test_a_post_waiting_for_a_ping_answer_that_is_goaway_left_open_goes_to_another_connection(self):
        self.goaway_while_waiting("go-post.mygreatbank.test", "goaway-open-700", "POST")

    def test_a_get_waiting_for_a_ping_answer_that_is_goaway_left_open_goes_to_another_connection(self):
        self.goaway_while_waiting("go-get.mygreatbank.test", "goaway-open-700", "GET")

    def test_a_post_waiting_for_a_ping_answer_when_the_connection_closes_goes_to_another_connection(self):
        self.goaway_while_waiting("eof-post.mygreatbank.test", "eof-700", "POST")

    # Other PING answers

    def test_a_ping_answered_after_the_timeout_retires_the_connection_and_the_waiting_post_moves(self):
        before = harness.metric(metrics(), "mtls_proxy_h2_upstream_ping_timeouts_total", absent=0.0, route="late")
        conn = self.arm("late.mygreatbank.test", "late-1500")
        time.sleep(0.45)  # PING out at 300 ms, unanswered until 1800 ms; the timeout is at 800 ms
        r = session().post("http://late.mygreatbank.test/headers", data=b"y" * 70000, timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertNotEqual(r.json()["conn"], conn)
        time.sleep(1.5)  # the late ACK arrives at a closed connection: nothing happens
        self.assertEqual(harness.metric(metrics(), "mtls_proxy_h2_upstream_ping_timeouts_total", absent=0.0, route="late"), before + 1)

    def test_a_ping_answered_with_other_opaque_data_counts_as_an_answer(self):
        # docs/http2.md: anything the server sends counts as the answer.
        conn = self.arm("wrong.mygreatbank.test", "wrong")
        time.sleep(1.0)
        r = session().get("http://wrong.mygreatbank.test/headers", timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertEqual(r.json()["conn"], conn)

    def test_a_flood_of_unasked_ping_acks_harms_nothing(self):
        self.arm("flood.mygreatbank.test", "flood")
        time.sleep(1.0)
        for _ in range(3):
            r = session().get("http://flood.mygreatbank.test/headers", timeout=10)
            self.assertEqual(r.status_code, 200, r.text[:300])

    def test_a_ping_timeout_longer_than_the_interval_sends_one_ping_at_a_time_and_keeps_a_late_answering_connection(self):
        conn = self.arm("longtimeout.mygreatbank.test", "late-800")
        time.sleep(0.85)  # PING at 200 ms, answered at 1000 ms (before the 3 s timeout); none in between
        pings = [e for e in server_log() if e["event"] == "ping" and e["conn"] == conn]
        self.assertEqual(len(pings), 1, pings)
        time.sleep(0.2)
        r = session().get("http://longtimeout.mygreatbank.test/headers", timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json()["conn"], conn)

    def test_an_idle_timeout_shorter_than_the_interval_closes_before_any_ping(self):
        conn = self.arm("idlefirst.mygreatbank.test", "late-0")
        time.sleep(1.0)
        self.assertEqual([e for e in server_log() if e["event"] == "ping" and e["conn"] == conn], [])
        r = session().get("http://idlefirst.mygreatbank.test/headers", timeout=10)
        self.assertNotEqual(r.json()["conn"], conn, "the connection outlived its idle_timeout")

    def test_huge_durations_and_ping_off_work(self):
        for host in ("huge.mygreatbank.test", "pingoff.mygreatbank.test"):
            conn = self.arm(host, "late-0")
            time.sleep(0.4)
            r = session().get(f"http://{host}/headers", timeout=10)
            self.assertEqual(r.status_code, 200)
            self.assertEqual(r.json()["conn"], conn)
            self.assertEqual([e for e in server_log() if e["event"] == "ping" and e["conn"] == conn], [])

    # Refusals

    def test_a_server_refusing_every_stream_ends_in_502_after_one_retry(self):
        session().get("http://log.mygreatbank.test/_clear", timeout=10)
        started = time.time()
        r = session().get("http://refuse.mygreatbank.test/refuse-always", timeout=10)
        self.assertEqual(r.status_code, 502)
        self.assertIn("REFUSED_STREAM", r.headers.get("Proxy-Status", ""))
        r = session().post("http://refuse.mygreatbank.test/refuse-always", data=b"body", timeout=10)
        self.assertEqual(r.status_code, 502)
        self.assertLess(time.time() - started, 3)
        streams = [e for e in server_log() if e["event"] == "stream" and e["path"] == "/refuse-always"]
        self.assertEqual(len(streams), 3, "a GET is tried twice, a POST once")

    def test_a_server_that_sends_goaway_with_its_settings_is_not_reconnected_to_for_ever(self):
        before = harness.metric(metrics(), "mtls_proxy_upstream_connections_total", absent=0.0, result="opened")
        started = time.time()
        for method in ("GET", "POST"):
            r = session().request(method, "http://goawayatonce.mygreatbank.test/headers", data=b"p" if method == "POST" else None,
                                  timeout=10)
            self.assertEqual(r.status_code, 502, r.text[:300])
        self.assertLess(time.time() - started, 4)
        time.sleep(0.3)
        opened = harness.metric(metrics(), "mtls_proxy_upstream_connections_total", absent=0.0, result="opened") - before
        self.assertLessEqual(opened, 4, "a connection after connection for the same requests")

    # protocol = "auto": an HTTP/1.1 server that misbehaves after the hand-over

    def test_auto_to_a_server_that_selects_h2_then_http11_on_its_next_connection(self):
        # The first connection speaks HTTP/2 and retires itself (GOAWAY for a PING) while a POST waits on it; the
        # POST goes to a new connection, where the server selects HTTP/1.1: it is handed over, and later requests
        # go over HTTP/1.1 directly.
        conn = self.arm("aswitch.mygreatbank.test", "goaway-close-700")
        time.sleep(0.55)
        r = session().post("http://aswitch.mygreatbank.test/echo", data=b"s" * 5000, timeout=10)
        self.assertEqual(r.status_code, 200, (r.headers.get("Proxy-Status"), r.text[:300]))
        self.assertEqual(r.json(), dict(alpn="http/1.1", length=5000))
        for _ in range(2):
            r = session().post("http://aswitch.mygreatbank.test/echo", data=b"t" * 10, timeout=10)
            self.assertEqual(r.json(), dict(alpn="http/1.1", length=10))
        self.assertGreaterEqual(ENV["switcher"].count, 2)

    def test_auto_hand_over_then_101_to_a_plain_request(self):
        r = session().get("http://a101.mygreatbank.test/101", timeout=10)
        self.assertEqual(r.status_code, 502, r.text[:300])
        r = session().get("http://a101.mygreatbank.test/fine", timeout=10)
        self.assertEqual(r.status_code, 200)

    def test_auto_hand_over_then_a_flood_of_interim_heads(self):
        # The HTTP/1.1 side has the same limit as HTTP/2's: 16 interim heads, then 502.
        out = raw_request(b"GET http://aflood.mygreatbank.test/interim-flood HTTP/1.1\r\nHost: aflood.mygreatbank.test\r\n"
                          b"Connection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 102"), out[:200])
        self.assertEqual(out.count(b"HTTP/1.1 102"), 16)
        self.assertIn(b"more than 16 interim (1xx) responses", out[-400:])
        r = session().get("http://aflood.mygreatbank.test/fine", timeout=10)
        self.assertEqual(r.status_code, 200)

    def test_auto_hand_over_then_the_body_is_cut(self):
        out = raw_request(b"GET http://acut.mygreatbank.test/cut-body HTTP/1.1\r\nHost: acut.mygreatbank.test\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])
        self.assertLess(len(out.split(b"\r\n\r\n", 1)[1]), 100000)

    def test_auto_hand_over_then_the_server_closes_at_once(self):
        r = session().post("http://aclose.mygreatbank.test/close-at-once", data=b"z" * 1000, timeout=10)
        self.assertEqual(r.status_code, 502)
        r = session().get("http://aclose.mygreatbank.test/fine", timeout=10)
        self.assertEqual(r.status_code, 200)

    def test_clients_leaving_at_any_moment_of_a_hand_over_leave_nothing_behind(self):
        clients_before = harness.metric(metrics(), "mtls_proxy_client_connections_active", absent=0.0)
        rng = random.Random(7)

        def leave(i):
            s = socket.create_connection(("127.0.0.1", ENV["port"]), timeout=5)
            body = b"b" * 100000
            head = (f"POST http://aleave.mygreatbank.test/echo HTTP/1.1\r\nHost: aleave.mygreatbank.test\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            try:
                s.sendall(head + body[:rng.randrange(0, len(body))])
                time.sleep(rng.random() * 0.8)
            finally:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00" if i % 2 else b"\x00" * 8)
                s.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(leave, range(24)))
        with session() as s:
            r = s.post("http://aleave.mygreatbank.test/echo", data=b"after", headers={"Connection": "close"}, timeout=10)
            self.assertEqual(r.status_code, 200)
        ok = harness.wait_until(lambda: harness.metric(metrics(), "mtls_proxy_client_connections_active", absent=0.0) <= clients_before,
                                5, 0.1)
        self.assertTrue(ok, ("client connections left open", clients_before,
                             harness.metric(metrics(), "mtls_proxy_client_connections_active", absent=0.0),
                             subprocess.run(["ss", "-tnp", f"( sport = :{ENV['port']} or dport = :{ENV['port']} )"],
                                            capture_output=True).stdout.decode()))

    def test_a_reload_while_requests_wait_for_a_ping_answer_and_are_handed_over(self):
        self.arm("reload.mygreatbank.test", "late-600")
        time.sleep(0.45)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            waiting = pool.submit(lambda: session().post("http://reload.mygreatbank.test/headers", data=b"w" * 3000, timeout=10))
            handed = pool.submit(lambda: session().post("http://areload.mygreatbank.test/slow", data=b"h" * 3000, timeout=10))
            time.sleep(0.1)
            ENV["proxy"].send_signal(signal.SIGHUP)
            self.assertEqual(waiting.result().status_code, 200)
            r = handed.result()
            self.assertEqual(r.status_code, 200, r.text[:300])
            self.assertEqual(r.json()["length"], 3000)
        r = session().get("http://reload.mygreatbank.test/headers", timeout=10)
        self.assertEqual(r.status_code, 200)

    def test_zz_sigterm_while_requests_wait_for_a_ping_answer_and_are_handed_over_lets_them_finish(self):
        self.arm("term.mygreatbank.test", "late-600")
        time.sleep(0.45)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            waiting = pool.submit(lambda: session().post("http://term.mygreatbank.test/headers", data=b"w" * 3000, timeout=10))
            handed = pool.submit(lambda: session().post("http://aterm.mygreatbank.test/slow", data=b"h" * 3000, timeout=10))
            streaming = pool.submit(lambda: session().get("http://term.mygreatbank.test/slow/1200", timeout=10))
            time.sleep(0.15)
            ENV["proxy"].send_signal(signal.SIGTERM)
            self.assertEqual(waiting.result().status_code, 200)
            self.assertEqual(handed.result().status_code, 200, handed.result().text[:300])
            self.assertEqual(streaming.result().status_code, 200)
        started = time.time()
        ENV["proxy"].wait(timeout=10)
        self.assertLess(time.time() - started, 5, "the proxy lingered after its last exchange")
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertNotIn("AddressSanitizer", log)
        self.assertNotIn("Fatal error", log)
        ENV["proxy"] = None


class ZZSanitizer(unittest.TestCase):
    def test_no_sanitizer_report(self):
        if not HAVE_H2 or "dir" not in ENV:
            self.skipTest("python h2 library not installed")
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertNotIn("AddressSanitizer", log)
        self.assertNotIn("Fatal error", log)


if __name__ == "__main__":
    harness.run_suite()
