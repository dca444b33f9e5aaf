#!/usr/bin/env python3
"""HTTP/2 to the upstream under attack: a hostile HTTP/2 server (h2hostile.py, which requires and verifies the
client certificate and records which certificate and SNI name each stream and each RST_STREAM came on) and hostile
HTTP/1.1 clients, all on loopback. Each test names the fault; a clean end where a truncation is due, a crash, a
hang, a stream leaking into another identity's connection or a forbidden field reaching the server fails it."""
import concurrent.futures, json, os, signal, socket, subprocess, sys, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture, harness  # noqa: E402
from fixture import HAVE_H2, NO_H2  # noqa: E402
ENV = {}
# As scripts/test runs the AddressSanitizer build: a leak report at exit (the TOML parser's) is not this suite's business.
os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")
URL = "http://api.mygreatbank.test"


def setUpModule():
    if not HAVE_H2:
        return
    d = harness.folder_with_pki("mtls-proxy-h2-attacks-")
    pki = f"{d}/pki"
    procs = harness.Processes()
    proxy_port, admin_port = harness.free_port(), harness.free_port()
    ports = dict(main=harness.free_port(), zero=harness.free_port(), one=harness.free_port(), silent=harness.free_port())
    try:
        for name, streams in (("main", 100), ("zero", 0), ("one", 1), ("silent", 100)):
            fixture.start_tls_script(procs, pki, "h2hostile.py", ports[name], "--max-streams", str(streams),
                                     *(["--silent"] if name == "silent" else []), log=f"{d}/{name}.log")
        with open(f"{d}/proxy.conf", "w") as f:
            f.write(f"""
{fixture.json_log_proxy(proxy_port, admin_port)}
[identities.eu]
cert = "pki/fusion-eu.pem"
key = "pki/fusion-eu.key"

[[route]]
host = "eu.mygreatbank.test"
identity = "eu"
protocol = "h2"
connect = "127.0.0.1:{ports['main']}"

[[route]]
host = "sni2.mygreatbank.test"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ports['main']}"

[[route]]
host = "zero.mygreatbank.test"
identity = "us"
protocol = "h2"
h2_connections = 2
connect_timeout = "1s"
connect = "127.0.0.1:{ports['zero']}"

[[route]]
host = "one.mygreatbank.test"
identity = "us"
protocol = "h2"
h2_connections = 1
connect_timeout = "1s"
connect = "127.0.0.1:{ports['one']}"

[[route]]
host = "idle.mygreatbank.test"
identity = "us"
protocol = "h2"
idle_timeout = "1s"
response_timeout = "10s"
connect = "127.0.0.1:{ports['main']}"

[[route]]
host = "silent.mygreatbank.test"
identity = "us"
protocol = "h2"
connect_timeout = "1s"
response_timeout = "2s"
connect = "127.0.0.1:{ports['silent']}"

[[route]]
host = "api.mygreatbank.test"
identity = "us"
protocol = "h2"
response_timeout = "5s"
connect = "127.0.0.1:{ports['main']}"
""")
        proxy = harness.start_proxy(procs, f"{d}/proxy.conf", f"{d}/proxy.log", proxy_port)
    except BaseException:
        procs.stop_all()
        raise
    ENV.update(procs=procs, proxy=proxy, dir=d, port=proxy_port, url=f"http://127.0.0.1:{proxy_port}", admin=admin_port)


def tearDownModule():
    fixture.stop_processes(ENV)


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", "-x", ENV["url"], *args], capture_output=True, env=harness.clean_env(), timeout=timeout)


def session():
    return fixture.proxy_session(ENV["url"])


def server_log():
    return json.loads(session().get(f"{URL}/_log", timeout=10).text)


def raw_exchange(request, timeout=10):
    """Sends raw bytes to the proxy, returns everything it answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", ENV["port"]), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
        return out


class Attacks(fixture.ProxyStaysUp, unittest.TestCase):
    env = ENV

    def assert_still_serving(self):
        r = curl("-i", f"{URL}/headers")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())

    # --- a hostile upstream ---

    def test_slow_client_gets_the_whole_download(self):
        # A client that reads steadily but slowly: the proxy pauses and resumes reading the stream again and
        # again, often in the same turn as it took bytes out of it. Every byte the client took must come back to
        # the stream's window, or the window shrinks to nothing and the download stalls until the response timeout
        # (5 s) cuts it. Without a content-length the body is re-chunked: that is where it showed.
        for path in ("/nolen/", "/sized/"):
            with self.subTest(path=path):
                n = 32 << 20
                received = 0
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                    s.settimeout(8)
                    s.connect(("127.0.0.1", ENV["port"]))
                    s.sendall(f"GET {URL}{path}{n} HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n".encode())
                    try:
                        while received < n:
                            chunk = s.recv(65536)
                            if not chunk:
                                break
                            received += len(chunk)
                            if chunk.endswith(b"\r\n0\r\n\r\n"):
                                break
                            time.sleep(0.003)
                    except (socket.timeout, ConnectionResetError):
                        pass
                # The body, plus the head and the chunk framing.
                self.assertGreaterEqual(received, n, f"the download stalled after {received} bytes")

    def test_data_before_headers_is_502(self):
        r = curl("-i", f"{URL}/data-before-headers")
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        self.assert_still_serving()

    def test_data_beyond_content_length_truncates(self):
        r = curl("-i", f"{URL}/over-cl")
        self.assertIn(r.returncode, (18, 56), (r.returncode, r.stdout, r.stderr.decode()))
        self.assertNotIn(b"56789", r.stdout)
        self.assert_still_serving()

    def test_trailers_without_end_stream_truncate(self):
        r = curl("--raw", "-i", f"{URL}/trailers-no-end")
        # Never the last chunk: the client must see a truncation.
        self.assertNotIn(b"\r\n0\r\n", r.stdout, r.stdout)
        self.assertIn(r.returncode, (18, 56), (r.returncode, r.stderr.decode()))
        self.assert_still_serving()

    def test_connection_cut_without_close_notify_mid_chunked_body_truncates(self):
        r = curl("--raw", "-i", f"{URL}/nolen-drop")
        self.assertIn(b"transfer-encoding: chunked", r.stdout.lower())
        self.assertNotIn(b"\r\n0\r\n", r.stdout)
        self.assertIn(r.returncode, (18, 56), (r.returncode, r.stderr.decode()))
        self.assert_still_serving()

    def test_connection_dropped_after_the_request_says_so(self):
        # The server read the request's HEADERS (the TLS handshake and the SETTINGS exchange long done), then cut the
        # TCP connection, with or without a GOAWAY first. The 502 must say that, not blame the TLS handshake (or the
        # client certificate), and name the GOAWAY's error code when one came. The request is not sent again: the
        # server may have acted on it.
        for path, goaway in (("/drop-after-request", None), ("/goaway-drop", "ENHANCE_YOUR_CALM")):
            with self.subTest(path=path):
                session().get(f"{URL}/_clear", timeout=10)  # also warms the connection: SETTINGS exchanged
                r = session().get(f"{URL}{path}", timeout=10)
                status = r.headers.get("Proxy-Status", "")
                self.assertEqual(r.status_code, 502, r.text)
                self.assertIn("error=connection_terminated", status)
                for text in (status, r.text):
                    self.assertNotIn("TLS handshake", text)
                    self.assertRegex(text, r"(closed|reset) the HTTP/2 connection (\(\w+\) )?after the request was sent, "
                                           r"before any response")
                    if goaway:
                        self.assertIn(f"GOAWAY {goaway}", text)
                    else:
                        self.assertNotIn("GOAWAY", text)
                streams = [e for e in server_log() if e["event"] == "stream" and e["path"] == path]
                self.assertEqual(len(streams), 1, streams)
        self.assert_still_serving()

    def test_connection_dropped_during_the_upload_says_so(self):
        # As above, while the request body (4 MiB, far more than the stream's window) is still going out.
        body = os.path.join(ENV["dir"], "upload.bin")
        with open(body, "wb") as f:
            f.write(b"u" * (4 << 20))
        r = curl("-i", "--data-binary", f"@{body}", "-H", "Expect:", f"{URL}/drop-after-request")
        out = r.stdout.decode(errors="replace")
        self.assertIn("HTTP/1.1 502", out, r.stderr.decode())
        self.assertNotIn("TLS handshake", out)
        self.assertRegex(out, r"(closed|reset) the HTTP/2 connection (\(\w+\) )?while the request body was being sent, "
                              r"before any response")
        self.assert_still_serving()

    def test_continuation_flood_closes_that_connection_only(self):
        r = curl("-i", f"{URL}/continuation-flood")
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        self.assert_still_serving()

    def test_hpack_bomb_is_cut_off(self):
        r = curl("-i", f"{URL}/hpack-bomb")
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        self.assertNotIn("x-bomb", r.stdout.decode().lower())
        self.assert_still_serving()

    def test_status_101_never_switches_the_client(self):
        r = curl("-i", f"{URL}/status-101")
        out = r.stdout.decode("latin-1")
        self.assertNotIn("HTTP/1.1 101", out)
        self.assert_still_serving()

    def test_rst_after_100_continue_is_502(self):
        r = curl("-i", "-H", "Expect: 100-continue", "--data-binary", "x" * 100, f"{URL}/rst-after-100")
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        self.assertIn("INTERNAL_ERROR", r.stdout.decode())
        self.assert_still_serving()

    def test_rst_no_error_after_a_complete_response_keeps_the_response(self):
        # RFC 9113 §8.1: a server may answer in full and then RST_STREAM NO_ERROR the rest of the upload.
        with socket.create_connection(("127.0.0.1", ENV["port"]), timeout=10) as s:
            s.sendall(f"POST {URL}/rst-no-error HTTP/1.1\r\nHost: api.mygreatbank.test\r\nContent-Length: 1000000\r\n\r\n".encode())
            s.sendall(b"a" * 1000)
            head, body = harness.read_response(s)
        self.assertIn(b" 200 ", head.split(b"\r\n", 1)[0], head)
        self.assertEqual(body, b"done")
        self.assert_still_serving()

    def test_goaway_naming_the_stream_lets_it_finish(self):
        r = curl("-i", f"{URL}/goaway-keep")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())
        self.assertIn("kept", r.stdout.decode())
        self.assert_still_serving()

    def test_goaway_zero_every_time_is_retried_once_then_502(self):
        session().get(f"{URL}/_clear", timeout=10)
        started = time.time()
        r = curl("-i", f"{URL}/goaway-zero-always", timeout=20)
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        self.assertLess(time.time() - started, 10)
        tries = [e for e in server_log() if e["event"] == "stream" and e["path"] == "/goaway-zero-always"]
        self.assertLessEqual(len(tries), 2, tries)
        self.assert_still_serving()

    def test_max_concurrent_streams_zero_answers_503_within_the_connect_timeout(self):
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda i: session().get("http://zero.mygreatbank.test/headers", timeout=20), range(32)))
        self.assertEqual({r.status_code for r in results}, {503}, [r.text[:200] for r in results][:3])
        self.assertLess(time.time() - started, 8)

    def test_max_concurrent_streams_one_under_32_clients(self):
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda i: session().get("http://one.mygreatbank.test/headers", timeout=20), range(32)))
        codes = [r.status_code for r in results]
        self.assertTrue(set(codes) <= {200, 503}, codes)
        self.assertIn(200, codes)
        self.assertLess(time.time() - started, 8)
        self.assertEqual(session().get("http://one.mygreatbank.test/headers", timeout=10).status_code, 200)

    def test_a_reused_connection_does_not_keep_its_idle_timeout_for_the_next_stream(self):
        # The connection goes idle (idle_timeout 1 s armed), a new stream comes before it passes and the server
        # takes 2.5 s to answer, well within response_timeout (10 s): the idle timer must not cut the stream.
        s = session()
        self.assertEqual(s.get("http://idle.mygreatbank.test/headers", timeout=10).status_code, 200)
        time.sleep(0.3)
        r = s.get("http://idle.mygreatbank.test/slow/2500", timeout=15)
        self.assertEqual((r.status_code, r.text), (200, "slow"), r.text[:300])

    def test_a_server_that_never_sends_settings_is_answered_not_hung(self):
        # TLS and ALPN h2 complete, then not one frame: streams wait for the server's SETTINGS; that wait must end
        # (connect or response timeout), never hang the client.
        started = time.time()
        r = curl("-i", "http://silent.mygreatbank.test/headers", "-m", "15", timeout=20)
        out = r.stdout.decode()
        self.assertRegex(out, r"HTTP/1.1 50[234]", (r.returncode, r.stderr.decode()))
        self.assertLess(time.time() - started, 8)

    def test_two_identities_and_two_sni_names_never_share_a_connection(self):
        s = session()
        seen = {}
        for host in ("api", "eu", "sni2"):
            for _ in range(3):
                data = json.loads(s.get(f"http://{host}.mygreatbank.test/headers", timeout=10).text)
                seen.setdefault(host, set()).add((data["conn"], data["subject"], data["sni"]))
        for host, conns in seen.items():
            self.assertEqual(len({c[1:] for c in conns}), 1, (host, conns))
        self.assertIn("fusion-eu", next(iter(seen["eu"]))[1])
        self.assertIn("fusion-us", next(iter(seen["api"]))[1])
        self.assertEqual(next(iter(seen["sni2"]))[2], "sni2.mygreatbank.test")
        ids = {host: {c[0] for c in conns} for host, conns in seen.items()}
        self.assertFalse(ids["api"] & ids["eu"], ids)
        self.assertFalse(ids["api"] & ids["sni2"], ids)
        self.assertFalse(ids["eu"] & ids["sni2"], ids)

    def test_complete_streams_are_not_reset(self):
        # An exchange ends on the last DATA of its response, a moment before nghttp2 reports the END_STREAM of the
        # same frame: the stream must not be cancelled then (the server would see a RST_STREAM per request). (A
        # server that sends END_STREAM in a later frame, after a complete content-length, still sees a CANCEL.)
        s = session()
        s.get(f"{URL}/_clear", timeout=10)
        for path in ["/sized/100"] * 10 + ["/nolen/100"]:
            r = s.get(f"{URL}{path}", timeout=10)
            self.assertEqual(r.status_code, 200, r.text[:200])
        time.sleep(0.3)
        resets = [e for e in server_log() if e["event"] in ("reset", "raw-reset") and e["path"].startswith(("/sized", "/nolen"))]
        self.assertEqual(resets, [])

    # --- a hostile client ---

    def test_client_leaving_mid_upload_resets_its_stream_only(self):
        session().get(f"{URL}/_clear", timeout=10)
        with socket.create_connection(("127.0.0.1", ENV["port"]), timeout=10) as s:
            s.sendall(f"POST {URL}/hang HTTP/1.1\r\nHost: api.mygreatbank.test\r\nContent-Length: 1000000\r\n\r\n".encode())
            s.sendall(b"u" * 100000)
            time.sleep(0.5)
        time.sleep(0.5)
        log = server_log()
        resets = [e for e in log if e["event"] == "reset" and e["path"] == "/hang"]
        self.assertTrue(resets, log)
        self.assertEqual(resets[0]["code"], 8)  # CANCEL
        self.assert_still_serving()

    def test_smuggling_fields_never_reach_the_server(self):
        request = (f"GET {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\nConnection: keep-alive, X-Secret-Hop\r\n"
                   "X-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n"
                   "Upgrade-Insecure-Requests: 1\r\nX-UPPER: Yes\r\n\r\n").encode()
        out = raw_exchange(request, timeout=3)
        self.assertIn(b" 200 ", out.split(b"\r\n", 1)[0], out[:300])
        fields = json.loads(out.split(b"\r\n\r\n", 1)[1])["fields"]
        names = [k for k, _ in fields]
        for forbidden in ("connection", "x-secret-hop", "keep-alive", "proxy-connection", "host", "transfer-encoding", "upgrade"):
            self.assertNotIn(forbidden, names, fields)
        self.assertTrue(all(k == k.lower() for k in names), names)
        self.assertEqual(names[:4], [":method", ":scheme", ":authority", ":path"])

    def test_te_trailers_reaches_the_server_and_other_te_values_do_not(self):
        # RFC 9113 §8.2.2: TE may appear in HTTP/2 with the value "trailers" only (gRPC servers require it).
        for value, expected in (("trailers", ["te", "trailers"]), ("gzip, Trailers", ["te", "trailers"]), ("gzip", None)):
            with self.subTest(te=value):
                out = raw_exchange(f"GET {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\nTE: {value}\r\n"
                                   "Connection: TE\r\n\r\n".encode(), timeout=3)
                self.assertIn(b" 200 ", out.split(b"\r\n", 1)[0], out[:300])
                fields = json.loads(out.split(b"\r\n\r\n", 1)[1])["fields"]
                te = [f for f in fields if f[0] == "te"]
                self.assertEqual(te, [expected] if expected else [], fields)
                self.assertNotIn("connection", [k for k, _ in fields])

    def test_te_and_content_length_together_are_refused(self):
        out = raw_exchange((f"POST {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\nTransfer-Encoding: chunked\r\n"
                            "Content-Length: 5\r\n\r\n0\r\n\r\n").encode(), timeout=3)
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])

    def test_pseudo_field_names_from_the_client_are_refused(self):
        for name in (b":path", b":authority", b":method"):
            with self.subTest(name=name):
                out = raw_exchange(f"GET {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\n".encode()
                                   + name + b": /_log\r\n\r\n", timeout=3)
                self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:300])

    def test_two_host_fields_or_a_nul_in_a_value_never_reach_the_server(self):
        cases = {
            "two Host fields": f"GET {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\nHost: eu.mygreatbank.test\r\n\r\n".encode(),
            "NUL in a value": f"GET {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\nX-A: a\x00b\r\n\r\n".encode(),
            "bare LF in a value": f"GET {URL}/headers HTTP/1.1\r\nHost: api.mygreatbank.test\r\nX-A: a\nx-b: c\r\n\r\n".encode(),
        }
        for name, request in cases.items():
            with self.subTest(case=name):
                out = raw_exchange(request, timeout=3)
                if out.startswith(b"HTTP/1.1 400"):
                    continue
                self.assertIn(b" 200 ", out.split(b"\r\n", 1)[0], out[:300])
                data = json.loads(out.split(b"\r\n\r\n", 1)[1])
                fields = dict((k, v) for k, v in data["fields"])
                self.assertEqual(fields[":authority"], "api.mygreatbank.test", data)
                self.assertFalse(any("\x00" in v or "\n" in v for _, v in data["fields"]), data)
                self.assertNotIn("x-b", fields, data)

    def test_host_that_differs_from_the_target_does_not_pick_the_authority(self):
        # The route is chosen by the absolute-form target (api, identity us); the Host field names another host
        # (eu, identity eu). The server must see the target's authority, with the route's certificate.
        out = raw_exchange(f"GET {URL}/headers HTTP/1.1\r\nHost: eu.mygreatbank.test\r\n\r\n".encode(), timeout=3)
        if out.startswith(b"HTTP/1.1 400"):
            return  # refused outright: fine
        self.assertIn(b" 200 ", out.split(b"\r\n", 1)[0], out[:300])
        data = json.loads(out.split(b"\r\n\r\n", 1)[1])
        authority = dict((k, v) for k, v in data["fields"])[":authority"]
        self.assertIn("fusion-us", data["subject"])
        self.assertEqual(authority, "api.mygreatbank.test", data)

    def test_shutdown_with_streams_in_flight_exits_cleanly(self):
        # Last: a hanging stream and a slow download in flight, then SIGTERM; the proxy must exit, not crash.
        socks = []
        for path in ("/hang", "/sized/8388608"):
            s = socket.create_connection(("127.0.0.1", ENV["port"]), timeout=10)
            s.sendall(f"GET {URL}{path} HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n".encode())
            socks.append(s)
        time.sleep(0.5)
        os.kill(ENV["proxy"].pid, signal.SIGHUP)  # a reload with streams in flight first
        time.sleep(0.5)
        self.assert_still_serving()
        proxy = ENV["proxy"]
        proxy.send_signal(signal.SIGTERM)
        try:
            code = proxy.wait(timeout=40)
        finally:
            for s in socks:
                s.close()
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertNotIn("AddressSanitizer", log)
        self.assertEqual(code, 0, log[-2000:])
        ENV["proxy"] = None

    def test_zz_no_sanitizer_report(self):
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertNotIn("AddressSanitizer", log)
        self.assertNotIn("Fatal error", log)


# The shutdown test stops the proxy: run it after all the others.
def load_tests(loader, tests, pattern):
    names = sorted(loader.getTestCaseNames(Attacks), key=lambda n: (n == "test_shutdown_with_streams_in_flight_exits_cleanly", n))
    suite = unittest.TestSuite()
    for n in names:
        suite.addTest(Attacks(n))
    return suite


if __name__ == "__main__":
    harness.run_suite()
