#!/usr/bin/env python3
"""HTTP/2 to the upstream (protocol = "h2"): workflows speak HTTP/1.1 to the proxy, the proxy speaks HTTP/2 over
mutual TLS to real HTTP/2 servers on loopback: h2server.py (the Python `h2` library; it requires and verifies the
client certificate, and counts streams per connection per client subject) and nghttpd (which requires one).
Clients: curl and Python requests. Faults are sent by h2server.py on cue (see its docstring)."""
import concurrent.futures, hashlib, json, os, shutil, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture, harness  # noqa: E402
from fixture import HAVE_H2, NO_H2  # noqa: E402
NGHTTPD = shutil.which("nghttpd")
ENV = {}


def body_bytes(n):
    block = bytes(range(256)) * 64
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


def setUpModule():
    if not HAVE_H2:
        return
    d = harness.folder_with_pki("mtls-proxy-h2-")
    pki = f"{d}/pki"
    procs = harness.Processes()
    proxy_port, h2_port, ng_port, h11_port = harness.free_port(), harness.free_port(), harness.free_port(), harness.free_port()
    admin_port, ms_port = harness.free_port(), harness.free_port()
    try:
        fixture.start_tls_script(procs, pki, "h2server.py", h2_port, log=f"{d}/h2server.log")
        # The same server speaking only HTTP/1.1 (ALPN http/1.1).
        fixture.start_tls_script(procs, pki, "h2server.py", h11_port, "--http11-only", log=f"{d}/h11server.log")
        # The same server taking 2 streams at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS = 2).
        fixture.start_tls_script(procs, pki, "h2server.py", ms_port, "--max-streams", "2", log=f"{d}/msserver.log")
        ng_route = ""
        if NGHTTPD:
            os.makedirs(f"{d}/htdocs/ng")
            with open(f"{d}/htdocs/ng/big.bin", "wb") as f:
                f.write(body_bytes(8 << 20))
            procs.start([NGHTTPD, "--verify-client", "-d", f"{d}/htdocs", str(ng_port), f"{pki}/server.key", f"{pki}/server.pem"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            harness.wait_for_port(ng_port)
            ng_route = f"""
[[route]]
host = "api.mygreatbank.test"
path = "/ng"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ng_port}"
"""
        with open(f"{d}/proxy.conf", "w") as f:
            f.write(f"""
{fixture.json_log_proxy(proxy_port, admin_port, max_header_bytes=262144)}
[identities.eu]
cert = "pki/fusion-eu.pem"
key = "pki/fusion-eu.key"

[[route]]
host = "api.mygreatbank.test"
path = "/eu"
identity = "eu"
protocol = "h2"
connect = "127.0.0.1:{h2_port}"
{ng_route}
[[route]]
host = "api.mygreatbank.test"
path = "/rt"
identity = "us"
protocol = "h2"
response_timeout = "1s"
connect = "127.0.0.1:{h2_port}"

[[route]]
host = "api.mygreatbank.test"
path = "/ms"
identity = "us"
protocol = "h2"
h2_connections = 2
connect_timeout = "1s"
connect = "127.0.0.1:{ms_port}"

[[route]]
host = "api.mygreatbank.test"
path = "/autoh2"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{h2_port}"

[[route]]
host = "api.mygreatbank.test"
path = "/auto11"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{h11_port}"

[[route]]
host = "api.mygreatbank.test"
path = "/h2to11"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{h11_port}"

[[route]]
host = "sni2.mygreatbank.test"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{h2_port}"

[[route]]
name = "h2 main"
host = "api.mygreatbank.test"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{h2_port}"
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


def requests_session():
    return fixture.proxy_session(ENV["url"])


URL = "http://api.mygreatbank.test"


def stats():
    import requests
    r = requests_session().get(f"{URL}/_stats", timeout=10)
    return json.loads(r.text)


def reset_stats():
    requests_session().get(f"{URL}/_reset", timeout=10)


def subject_streams(data, cn):
    return next((v for k, v in data.items() if k.endswith(f"commonName={cn}")), [])


@unittest.skipUnless(HAVE_H2, NO_H2)
class H2Upstream(unittest.TestCase):
    def test_get_with_curl(self):
        r = curl("-i", f"{URL}/hello")
        out = r.stdout.decode()
        self.assertIn("HTTP/1.1 200", out, r.stderr.decode())
        self.assertIn("hello organizationName=mtls-proxy test,commonName=fusion-us GET", out)

    def test_head_has_no_body_and_keeps_its_length(self):
        r = curl("-I", f"{URL}/hello")
        out = r.stdout.decode().lower()
        self.assertIn("http/1.1 200", out, r.stderr.decode())
        self.assertIn("content-length:", out)

    def test_response_without_length_is_chunked_for_http11_clients(self):
        r = curl("-i", "--raw", f"{URL}/bytes/1000")
        head = r.stdout.split(b"\r\n\r\n", 1)[0].decode().lower()
        self.assertIn("transfer-encoding: chunked", head)

    def test_32_concurrent_clients_one_identity_one_connection(self):
        reset_stats()
        time.sleep(0.2)
        def one(i):
            return requests_session().get(f"{URL}/slow/400", timeout=30)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(32)))
        self.assertEqual([r.status_code for r in results], [200] * 32)
        streams = subject_streams(stats(), "fusion-us")
        # The _reset and _stats requests ride on the same connection: 32 + 2 streams on one connection.
        self.assertEqual(len([n for n in streams if n > 0]), 1, streams)
        self.assertGreaterEqual(max(streams), 32, streams)

    def test_another_sni_name_never_shares_a_connection(self):
        # Same identity, same server, same dialled address; another host name, so another SNI: its own connection,
        # whatever connection coalescing would allow (the server's certificate covers both names).
        s = requests_session()
        self.assertEqual(s.get(f"{URL}/hello", timeout=10).status_code, 200)
        self.assertEqual(s.get("http://sni2.mygreatbank.test/hello", timeout=10).status_code, 200)
        data = json.loads(s.get(f"{URL}/_sni_stats", timeout=10).text)
        self.assertGreaterEqual(sum(subject_streams(data.get("sni2.mygreatbank.test", {}), "fusion-us")), 1, data)
        self.assertGreaterEqual(sum(subject_streams(data.get("api.mygreatbank.test", {}), "fusion-us")), 1, data)

    def test_max_concurrent_streams_then_more_connections_then_a_bounded_wait(self):
        # The server takes 2 streams per connection; the route allows 2 connections: 4 at once are served on
        # two connections, 2 streams each.
        def one(path):
            return requests_session().get(f"{URL}{path}", timeout=30)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, ["/ms/slow/600"] * 4))
        self.assertEqual([r.status_code for r in results], [200] * 4)
        streams = subject_streams(json.loads(one("/ms/_stats").text), "fusion-us")
        self.assertEqual(len(streams), 2, streams)
        self.assertEqual(sorted(streams)[0], 2, streams)
        # 8 at once: 4 served, 4 wait for a free stream longer than connect_timeout (1 s) and get 503.
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, ["/ms/slow/2500"] * 8))
        codes = sorted(r.status_code for r in results)
        self.assertEqual(codes, [200] * 4 + [503] * 4, [r.text[:200] for r in results])
        refused = next(r for r in results if r.status_code == 503)
        self.assertIn("connection_limit_reached", refused.headers.get("Proxy-Status", ""))
        self.assertIn("h2_connections = 2", refused.text)
        self.assertEqual(len(subject_streams(json.loads(one("/ms/_stats").text), "fusion-us")), 2)
        self.assertLess(time.time() - started, 10)

    def test_two_identities_never_share_a_connection(self):
        s = requests_session()
        us = s.get(f"{URL}/hello", timeout=10)
        eu = s.get(f"{URL}/eu/hello", timeout=10)
        self.assertIn("commonName=fusion-us", us.text)
        self.assertIn("commonName=fusion-eu", eu.text)
        data = stats()
        self.assertTrue(subject_streams(data, "fusion-eu"), data)
        self.assertTrue(subject_streams(data, "fusion-us"), data)

    def test_post_with_expect_100_continue(self):
        payload = os.urandom(200_000)
        with tempfile.NamedTemporaryFile() as f:
            f.write(payload)
            f.flush()
            r = curl("-i", "-H", "Expect: 100-continue", "--data-binary", f"@{f.name}", f"{URL}/echo")
        out = r.stdout
        self.assertIn(b"HTTP/1.1 100 Continue", out, r.stderr.decode())
        self.assertIn(b"HTTP/1.1 200", out)
        self.assertIn(hashlib.sha256(payload).hexdigest().encode(), out)

    def test_4MiB_upload_with_requests(self):
        payload = os.urandom(4 << 20)
        r = requests_session().post(f"{URL}/echo", data=payload, timeout=60)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["x-body-sha256"], hashlib.sha256(payload).hexdigest())
        self.assertEqual(hashlib.sha256(r.content).hexdigest(), hashlib.sha256(payload).hexdigest())

    def test_4MiB_chunked_upload_with_curl(self):
        payload = os.urandom(4 << 20)
        with tempfile.NamedTemporaryFile() as f:
            f.write(payload)
            f.flush()
            r = curl("-D", "-", "-o", "/dev/null", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f.name}", f"{URL}/echo")
        self.assertIn(hashlib.sha256(payload).hexdigest(), r.stdout.decode(), r.stderr.decode())

    def test_8MiB_download_sha256(self):
        expected = hashlib.sha256(body_bytes(8 << 20)).hexdigest()
        for path in ("/bytes/8388608", "/sized/8388608"):
            with self.subTest(path=path):
                r = curl(f"{URL}{path}")
                self.assertEqual(len(r.stdout), 8 << 20, r.stderr.decode())
                self.assertEqual(hashlib.sha256(r.stdout).hexdigest(), expected)
        r = requests_session().get(f"{URL}/bytes/8388608", timeout=60)
        self.assertEqual(hashlib.sha256(r.content).hexdigest(), expected)

    @unittest.skipUnless(NGHTTPD, "nghttpd not installed (Debian nghttp2-server)")
    def test_nghttpd_8MiB_download_sha256(self):
        r = curl("-D", "-", f"{URL}/ng/big.bin", "-o", f"{ENV['dir']}/ng.out")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())
        with open(f"{ENV['dir']}/ng.out", "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(body_bytes(8 << 20)).hexdigest())

    def test_slow_client_holds_back_only_its_own_stream(self):
        import socket
        # A client that asks for 8 MiB and reads nothing.
        s = socket.create_connection(("127.0.0.1", ENV["port"]))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET http://api.mygreatbank.test/bytes/8388608 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
        time.sleep(0.5)
        try:
            # Others on the same connection go on.
            started = time.time()
            r = requests_session().get(f"{URL}/sized/1000000", timeout=10)
            self.assertEqual(len(r.content), 1000000)
            self.assertLess(time.time() - started, 5)
        finally:
            s.close()


    def test_a_100KiB_request_head_goes_over_h2(self):
        r = requests_session().get(f"{URL}/hello", headers={"X-Large": "z" * 100_000}, timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])

    def test_a_head_over_the_servers_header_list_limit_is_431_naming_it(self):
        # h2server.py advertises SETTINGS_MAX_HEADER_LIST_SIZE = 200000.
        r = requests_session().get(f"{URL}/hello", headers={"X-Large": "z" * 220_000}, timeout=10)
        self.assertEqual(r.status_code, 431, r.text[:300])
        self.assertIn("SETTINGS_MAX_HEADER_LIST_SIZE", r.headers.get("Proxy-Status", ""))

    def test_access_log_names_the_protocol_and_stream(self):
        curl(f"{URL}/hello?secret=1")
        time.sleep(0.5)
        lines = [l for l in harness.json_log_lines(f"{ENV['dir']}/proxy.log") if l.get("path") == "/hello"]
        self.assertTrue(lines)
        self.assertEqual(lines[-1]["upstream_protocol"], "h2")
        self.assertEqual(lines[-1]["upstream_stream"] % 2, 1)  # streams the client opens are odd
        self.assertNotIn("secret", json.dumps(lines[-1]))

    def test_websocket_upgrade_falls_back_to_http11(self):
        import socket
        s = socket.create_connection(("127.0.0.1", ENV["port"]), timeout=10)
        try:
            s.sendall(b"GET http://api.mygreatbank.test/ws HTTP/1.1\r\nHost: api.mygreatbank.test\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            self.assertIn(b"x-upstream-protocol: http/1.1", head.lower())
            s.sendall(b"ping over the relay")
            echoed = b""
            while len(echoed) < len(b"ping over the relay"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                echoed += chunk
            self.assertEqual(echoed, b"ping over the relay")
        finally:
            s.close()

    def test_auto_uses_h2_when_the_server_selects_it(self):
        r = curl("-i", f"{URL}/autoh2/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())
        self.assertIn("fusion-us GET", r.stdout.decode())

    def test_auto_falls_back_to_http11_when_the_server_selects_it(self):
        for _ in range(2):
            r = curl("-i", f"{URL}/auto11/x")
            out = r.stdout.decode()
            self.assertIn("HTTP/1.1 200", out, r.stderr.decode())
            self.assertIn("http/1.1 /auto11/x", out)

    def test_h2_route_to_a_server_without_h2_is_502_naming_alpn(self):
        r = curl("-i", f"{URL}/h2to11/x")
        out = r.stdout.decode()
        self.assertIn("HTTP/1.1 502", out, r.stderr.decode())
        self.assertIn("did not select h2 in ALPN", out)


CLIENTS_DIR = os.path.join(harness.HERE, "clients")


def driver(args, tag):
    """Runs a client driver of the client matrix (Tests/e2e/clients) through the proxy; its JSON result."""
    upload = f"{ENV['dir']}/upload.bin"
    if not os.path.exists(upload):
        with open(upload, "wb") as f:  # text: the drivers read the echo back as a string
            f.write(os.urandom(2 << 20).hex().encode())
    env = harness.clean_env(HTTP_PROXY=ENV["url"], http_proxy=ENV["url"], BASE=URL, TAG=tag, UPLOAD=upload,
                            DOWNLOAD_SIZE=str(8 << 20), CA="")
    env["NODE_PATH"] = ":".join(x for x in (env.get("NODE_PATH"), "/usr/share/nodejs") if x)
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise AssertionError(f"{args[0]} printed no result (exit {r.returncode}): {r.stderr.strip()[-800:]}")
    return json.loads(lines[-1]), hashlib.sha256(open(upload, "rb").read()).hexdigest()


@unittest.skipUnless(HAVE_H2, NO_H2)
class H2ClientMatrix(unittest.TestCase):
    """The client matrix's drivers through an h2 route: GET, POST, a 4 MiB upload with Expect: 100-continue,
    keep-alive, an 8 MiB download with its SHA-256."""

    def check(self, result, upload_sha):
        self.assertEqual(result["get"].get("status"), 200, result)
        self.assertIn("fusion-us", result["get"]["body"])
        self.assertEqual(result["post"].get("status"), 200, result)
        self.assertIn('"items"', result["post"]["body"])
        self.assertEqual(result["upload"].get("status"), 200, result)
        self.assertEqual(result["keepalive"].get("statuses"), [200, 200], result)
        self.assertEqual(result["download"].get("status"), 200, result)
        self.assertEqual(result["download"].get("bytes"), 8 << 20, result)
        self.assertEqual(result["download"].get("sha256"), hashlib.sha256(body_bytes(8 << 20)).hexdigest())

    @unittest.skipUnless(shutil.which("node"), "node not installed")
    def test_node_http(self):
        result, sha = driver(["node", os.path.join(CLIENTS_DIR, "node_clients.js"), "http"], "node-http")
        self.check(result, sha)
        self.assertEqual(result["upload"].get("expect"), "100-continue", result)

    @unittest.skipUnless(shutil.which("node") and os.path.isdir("/usr/share/nodejs/undici"), "node undici not installed (Debian node-undici)")
    def test_node_undici(self):
        result, sha = driver(["node", os.path.join(CLIENTS_DIR, "node_clients.js"), "undici"], "node-undici")
        self.check(result, sha)

    def test_python_libraries(self):
        for lib, module in (("requests", "requests"), ("urllib", "urllib"), ("httpx", "httpx"), ("aiohttp", "aiohttp")):
            with self.subTest(lib=lib):
                try:
                    __import__(module)
                except ImportError:
                    self.skipTest(f"python {module} not installed")
                result, sha = driver([sys.executable, os.path.join(CLIENTS_DIR, "py_clients.py"), lib], f"py-{lib}")
                self.check(result, sha)

    @unittest.skipUnless(shutil.which("javac") and shutil.which("java"), "no JDK (javac) installed")
    def test_java(self):
        out = f"{ENV['dir']}/java"
        os.makedirs(out, exist_ok=True)
        r = subprocess.run(["javac", "-d", out, os.path.join(CLIENTS_DIR, "JavaClient.java")], capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr[-800:])
        props = ["-Dhttp.proxyHost=127.0.0.1", f"-Dhttp.proxyPort={ENV['port']}"]
        for api in ("httpclient", "urlconnection"):
            with self.subTest(api=api):
                result, sha = driver(["java", *props, "-cp", out, "JavaClient", api], f"java-{api}")
                self.check(result, sha)

    @unittest.skipUnless(shutil.which("go"), "go not installed (Debian golang-go)")
    def test_go(self):
        out = f"{ENV['dir']}/go"
        os.makedirs(out, exist_ok=True)
        r = subprocess.run(["go", "build", "-o", f"{out}/go_client", os.path.join(CLIENTS_DIR, "go_client.go")],
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, GO111MODULE="off"))
        self.assertEqual(r.returncode, 0, r.stderr[-800:])
        result, sha = driver([f"{out}/go_client"], "go")
        self.check(result, sha)
        self.assertEqual(result["upload"].get("expect"), "100-continue", result)


@unittest.skipUnless(HAVE_H2, NO_H2)
class H2UpstreamFaults(unittest.TestCase):
    def test_rst_stream_before_head_is_502_naming_the_h2_error(self):
        r = curl("-i", f"{URL}/rst-before")
        out = r.stdout.decode()
        self.assertIn("HTTP/1.1 502", out, r.stderr.decode())
        status = next((l for l in out.splitlines() if l.lower().startswith("proxy-status:")), "")
        self.assertIn("INTERNAL_ERROR", status)

    def test_rst_stream_after_head_truncates(self):
        r = curl(f"{URL}/rst-after")
        # curl: 18 (partial file) or 56 (receive failure): never a clean end.
        self.assertIn(r.returncode, (18, 56), (r.returncode, r.stderr.decode()))

    def test_short_body_against_content_length_truncates(self):
        r = curl(f"{URL}/short")
        self.assertIn(r.returncode, (18, 56), (r.returncode, r.stderr.decode()))

    def test_goaway_unprocessed_stream_is_retried_on_a_new_connection(self):
        r = curl("-i", f"{URL}/goaway")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())
        self.assertIn("after goaway", r.stdout.decode())

    def test_oversized_header_list_closes_that_connection_only(self):
        r = curl("-i", f"{URL}/big-header")
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        r = curl("-i", f"{URL}/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())

    def test_metrics_count_connections_streams_and_resets_by_route(self):
        curl(f"{URL}/hello")
        curl(f"{URL}/rst-before")
        status, text = harness.http_get(ENV["admin"], "/metrics")
        self.assertEqual(status, 200)
        self.assertGreaterEqual(harness.metric(text, "mtls_proxy_h2_upstream_connections_total", 0, route="h2 main"), 1)
        self.assertGreaterEqual(harness.metric(text, "mtls_proxy_h2_upstream_streams_total", 0, route="h2 main"), 2)
        self.assertGreaterEqual(harness.metric(text, "mtls_proxy_h2_upstream_stream_resets_total", 0, route="h2 main"), 1)

    def test_no_response_within_the_response_timeout_is_504(self):
        started = time.time()
        r = curl("-i", f"{URL}/rt/slow/4000")
        self.assertIn("HTTP/1.1 504", r.stdout.decode(), r.stderr.decode())
        self.assertLess(time.time() - started, 3.5)
        # The connection is still good for the next request.
        r = curl("-i", f"{URL}/rt/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())

    def test_connection_cut_mid_body_truncates_and_the_next_request_reconnects(self):
        r = curl(f"{URL}/drop")
        self.assertIn(r.returncode, (18, 56), (r.returncode, r.stderr.decode()))
        r = curl("-i", f"{URL}/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())

    def test_early_413_during_an_upload_reaches_the_client(self):
        r = requests_session().post(f"{URL}/early-413", data=os.urandom(4 << 20), timeout=30)
        self.assertEqual(r.status_code, 413)
        r = curl("-i", f"{URL}/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())

    def test_client_leaving_mid_download_cancels_only_its_stream(self):
        import socket
        s = socket.create_connection(("127.0.0.1", ENV["port"]))
        s.sendall(b"GET http://api.mygreatbank.test/bytes/8388608 HTTP/1.1\r\nHost: api.mygreatbank.test\r\n\r\n")
        s.recv(1000)
        s.close()
        r = curl("-i", f"{URL}/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())

    def test_a_flood_of_interim_responses_is_cut_off(self):
        # HEADERS are not flow-controlled: 5000 103 heads would all be queued for the client.
        r = curl("-i", f"{URL}/1xx-flood")
        out = r.stdout.decode("latin-1")
        self.assertLessEqual(out.count("HTTP/1.1 103"), 32)
        self.assertIn("HTTP/1.1 502", out, r.stderr.decode())
        self.assertIn("interim", out)

    def test_push_promise_closes_the_connection(self):
        r = curl("-i", f"{URL}/push")
        self.assertIn("HTTP/1.1 502", r.stdout.decode(), r.stderr.decode())
        r = curl("-i", f"{URL}/hello")
        self.assertIn("HTTP/1.1 200", r.stdout.decode(), r.stderr.decode())


if __name__ == "__main__":
    harness.run_suite()
