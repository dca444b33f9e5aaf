#!/usr/bin/env python3
"""The HTTP/2 upstream pool against real servers on loopback that require and verify the client certificate:
PING liveness of idle connections (a server that goes mute is retired, one that answers keeps its connection),
`protocol = "auto"` to an HTTP/1.1-only server (the first request, a POST with a body too, goes over HTTP/1.1),
a refused stream retried on another connection, the metrics of a stream counted for its own route, the bounded
queue's 503, nginx with `http2` and `ssl_verify_client on` (GET, POST, 4 MiB upload, 8 MiB download by SHA-256,
a wrong identity refused) and `git clone` through an `h2` route."""
import concurrent.futures, hashlib, json, os, shutil, ssl, subprocess, sys, threading, time, unittest, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture, harness  # noqa: E402
from fixture import HAVE_H2, NO_H2  # noqa: E402
ENV = {}
os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")
NGINX_DOWNLOAD = os.urandom(8 << 20)

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx-h2.pid;
error_log {dir}/nginx-h2-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name nginx.mygreatbank.test;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        ssl_client_certificate {pki}/ca.pem;
        ssl_verify_client on;
        client_max_body_size 64m;
        root {dir}/www;
        add_header X-Client-Subject $ssl_client_s_dn always;
        add_header X-Client-Verify $ssl_client_verify always;
        add_header X-Protocol $server_protocol always;
        location = /whoami {{ return 200 "$server_protocol $ssl_client_verify $ssl_client_s_dn\\n"; }}
        location = /post {{ return 200 "$request_method $content_length\\n"; }}
        location /dav/ {{ dav_methods PUT; create_full_put_path on; }}
        location / {{ }}
    }}
}}
"""


class ALPNSwitch(harness.TLSUpstream):
    """An HTTP/1.1 server (client certificate required) that selects http/1.1 in ALPN on its first connection and
    would select h2 on later ones if offered (a rolling upgrade behind one address). It answers every request
    with the ALPN protocol selected on that connection, then closes it."""

    def __init__(self, pki):
        super().__init__(pki)
        self.later = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.later.load_cert_chain(f"{pki}/server.pem", f"{pki}/server.key")
        self.later.load_verify_locations(f"{pki}/ca.pem")
        self.later.verify_mode = ssl.CERT_REQUIRED
        self.later.set_alpn_protocols(["h2", "http/1.1"])
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.count = 0
        self.lock = threading.Lock()

    def handle(self, raw):
        with self.lock:
            self.count += 1
            if self.count == 2:
                self.ctx = self.later
        super().handle(raw)

    def serve(self, conn):
        head, _ = harness.read_head(conn)
        if head is None:
            return
        body = f"{conn.selected_alpn_protocol()}\n".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def setUpModule():
    if not HAVE_H2:
        return
    d = harness.folder_with_pki("mtls-proxy-h2-pool-")
    pki = f"{d}/pki"
    procs = harness.Processes()
    proxy_port, admin_port = harness.free_port(), harness.free_port()
    ports = dict(main=harness.free_port(), one=harness.free_port(), h11=harness.free_port(), nginx=harness.free_port())
    try:
        os.makedirs(f"{d}/gitroot", exist_ok=True)
        for name, streams in (("main", 100), ("one", 1)):
            fixture.start_tls_script(procs, pki, "h2hostile.py", ports[name], "--max-streams", str(streams),
                                     "--git-root", f"{d}/gitroot", log=f"{d}/{name}.log")
        harness.start_python_upstream(procs, pki, ports["h11"], ca="ca", require=True)
        switch = ALPNSwitch(pki)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "www/dav"):
            os.makedirs(f"{d}/{sub}", exist_ok=True)
        with open(f"{d}/www/download.bin", "wb") as f:
            f.write(NGINX_DOWNLOAD)
        with open(f"{d}/nginx-h2.conf", "w") as f:
            f.write(NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", dir=d, pki=pki, port=ports["nginx"]))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.start([nginx, "-c", f"{d}/nginx-h2.conf", "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_for_port(ports["nginx"])
        with open(f"{d}/proxy.conf", "w") as f:
            f.write(f"""
{fixture.json_log_proxy(proxy_port, admin_port)}
[identities.rogue]
cert = "pki/rogue.pem"
key = "pki/rogue.key"

[[route]]
name = "mute"
host = "mute.mygreatbank.test"
identity = "us"
protocol = "h2"
idle_timeout = "30s"
response_timeout = "8s"
h2_ping_interval = "400ms"
h2_ping_timeout = "400ms"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "held"
host = "held.mygreatbank.test"
identity = "us"
protocol = "h2"
idle_timeout = "30s"
response_timeout = "8s"
h2_ping_interval = "1s"
h2_ping_timeout = "1500ms"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "alive"
host = "alive.mygreatbank.test"
identity = "us"
protocol = "h2"
idle_timeout = "30s"
h2_ping_interval = "300ms"
h2_ping_timeout = "1s"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "quietidle"
host = "quietidle.mygreatbank.test"
identity = "us"
protocol = "h2"
idle_timeout = "1200ms"
h2_ping_interval = "200ms"
h2_ping_timeout = "1s"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "refused"
host = "refused.mygreatbank.test"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "ra"
host = "shared.mygreatbank.test"
path = "/headers"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "rb"
host = "shared.mygreatbank.test"
path = "/rst-after-100"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "queue"
host = "queue.mygreatbank.test"
identity = "us"
protocol = "h2"
h2_connections = 1
connect_timeout = "6s"
connect = "127.0.0.1:{ports['one']}"

[[route]]
name = "autopost"
host = "autopost.mygreatbank.test"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{ports['h11']}"

[[route]]
name = "autoget"
host = "autoget.mygreatbank.test"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{ports['h11']}"

[[route]]
name = "automany"
host = "automany.mygreatbank.test"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{ports['h11']}"

[[route]]
name = "autobig"
host = "autobig.mygreatbank.test"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{ports['h11']}"

[[route]]
name = "autoswitch"
host = "autoswitch.mygreatbank.test"
identity = "us"
protocol = "auto"
connect = "127.0.0.1:{switch.port}"

[[route]]
name = "git"
host = "git.mygreatbank.test"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ports['main']}"

[[route]]
name = "nginx"
host = "nginx.mygreatbank.test"
identity = "us"
protocol = "h2"
connect = "127.0.0.1:{ports['nginx']}"

[[route]]
name = "nginx-rogue"
host = "rogue.mygreatbank.test"
identity = "rogue"
protocol = "h2"
connect = "127.0.0.1:{ports['nginx']}"
""")
        # A debug build waits for at most 4 streams per key (instead of 1024), for the queue test.
        os.environ["MTLS_PROXY_TEST_FAULT"] = "h2-queue-4"
        try:
            proxy = harness.start_proxy(procs, f"{d}/proxy.conf", f"{d}/proxy.log", proxy_port)
        finally:
            del os.environ["MTLS_PROXY_TEST_FAULT"]
    except BaseException:
        procs.stop_all()
        raise
    ENV.update(procs=procs, proxy=proxy, dir=d, port=proxy_port, url=f"http://127.0.0.1:{proxy_port}", admin=admin_port)


def tearDownModule():
    fixture.stop_processes(ENV)


def session():
    return fixture.proxy_session(ENV["url"])


def server_log(host="refused.mygreatbank.test"):
    return json.loads(session().get(f"http://{host}/_log", timeout=10).text)


def metrics():
    return urllib.request.urlopen(f"http://127.0.0.1:{ENV['admin']}/metrics", timeout=5).read().decode()


def opened_upstreams():
    return harness.metric(metrics(), "mtls_proxy_upstream_connections_total", absent=0.0, result="opened")


class Pool(fixture.ProxyStaysUp, unittest.TestCase):
    env = ENV

    # 1. PING liveness

    def test_a_mute_server_is_retired_by_ping_and_the_next_request_opens_a_fresh_connection(self):
        s = session()
        muted = s.get("http://mute.mygreatbank.test/mute", timeout=10)
        self.assertEqual(muted.status_code, 200, muted.text[:200])
        conn = muted.json()["conn"]
        time.sleep(1.5)  # interval (0.4 s) + timeout (0.4 s), with room for a loaded machine
        started = time.time()
        r = s.get("http://mute.mygreatbank.test/headers", timeout=4)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertNotEqual(r.json()["conn"], conn, "the request went to the mute connection")
        self.assertLess(time.time() - started, 3)
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertIn("did not answer a PING within 400 ms", log)
        self.assertGreaterEqual(harness.metric(metrics(), "mtls_proxy_h2_upstream_ping_timeouts_total", absent=0.0, route="mute"), 1)

    def test_a_request_during_an_unanswered_ping_waits_for_it_then_goes_to_a_fresh_connection(self):
        # PING at 1 s of silence, retired 1.5 s later: a request at 1.6 s finds the PING unanswered. It must not be
        # sent on that connection (it would be lost with it); it waits and goes to a fresh one.
        s = session()
        muted = s.get("http://held.mygreatbank.test/mute", timeout=10)
        self.assertEqual(muted.status_code, 200, muted.text[:200])
        conn = muted.json()["conn"]
        time.sleep(1.6)
        r = s.get("http://held.mygreatbank.test/headers", timeout=6)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertNotEqual(r.json()["conn"], conn, "the request went to the mute connection")

    def test_explain_shows_the_routes_ping_settings(self):
        r = subprocess.run([harness.proxy_binary(), "explain", "--config", f"{ENV['dir']}/proxy.conf", "http://mute.mygreatbank.test/x"],
                           capture_output=True, timeout=30)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        self.assertIn("an idle HTTP/2 connection silent 400ms is sent a PING; no answer within 400ms retires it", out)

    def test_a_client_leaving_while_its_request_waits_for_a_ping_answer_leaves_nothing_behind(self):
        import socket
        s = session()
        muted = s.get("http://held.mygreatbank.test/mute", timeout=10)
        self.assertEqual(muted.status_code, 200, muted.text[:200])
        time.sleep(1.3)  # the PING is out (at 1 s), unanswered until 2.5 s
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", ENV["port"]), timeout=5) as c:
                c.sendall(b"GET http://held.mygreatbank.test/headers HTTP/1.1\r\nHost: held.mygreatbank.test\r\n\r\n")
                time.sleep(0.05)
        time.sleep(1.5)  # past the retirement
        r = s.get("http://held.mygreatbank.test/headers", timeout=6)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertNotEqual(r.json()["conn"], muted.json()["conn"])

    def test_a_server_that_answers_pings_keeps_its_connection(self):
        s = session()
        first = s.get("http://alive.mygreatbank.test/headers", timeout=10)
        self.assertEqual(first.status_code, 200, first.text[:200])
        conn = first.json()["conn"]
        time.sleep(1.5)
        second = s.get("http://alive.mygreatbank.test/headers", timeout=10)
        self.assertEqual(second.status_code, 200, second.text[:200])
        self.assertEqual(second.json()["conn"], conn, "an answered PING must not cost the connection")
        pings = [e for e in server_log() if e["event"] == "ping" and e["conn"] == conn]
        self.assertGreaterEqual(len(pings), 2, "no PING reached the server")

    def test_pings_do_not_keep_an_idle_connection_past_its_idle_timeout(self):
        s = session()
        first = s.get("http://quietidle.mygreatbank.test/headers", timeout=10)
        conn = first.json()["conn"]
        time.sleep(2.5)  # idle_timeout 1.2 s, PINGs every 0.2 s answered
        second = s.get("http://quietidle.mygreatbank.test/headers", timeout=10)
        self.assertEqual(second.status_code, 200, second.text[:200])
        self.assertNotEqual(second.json()["conn"], conn, "the idle connection outlived idle_timeout")

    # 3. REFUSED_STREAM retried on another connection

    def test_a_refused_stream_is_retried_on_another_connection(self):
        s = session()
        s.get("http://refused.mygreatbank.test/_clear", timeout=10)
        r = s.get("http://refused.mygreatbank.test/refuse-first", timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        streams = [e for e in server_log() if e["event"] == "stream" and e["path"] == "/refuse-first"]
        self.assertEqual(len(streams), 2, streams)
        self.assertNotEqual(streams[0]["conn"], streams[1]["conn"], "the retry went to the connection that refused it")
        self.assertEqual(r.json()["conn"], streams[1]["conn"])

    def test_a_stream_above_goaways_last_stream_is_retried_on_a_new_connection(self):
        s = session()
        s.get("http://refused.mygreatbank.test/_clear", timeout=10)
        r = s.get("http://refused.mygreatbank.test/goaway-zero-always", timeout=10)
        self.assertEqual(r.status_code, 502, r.text[:300])  # every connection says GOAWAY 0: tried twice, then 502
        streams = [e for e in server_log() if e["event"] == "stream" and e["path"] == "/goaway-zero-always"]
        self.assertEqual(len(streams), 2, streams)
        self.assertNotEqual(streams[0]["conn"], streams[1]["conn"], "the retry went to the connection that said GOAWAY")

    # 4. metrics of a stream count for its own route

    def test_stream_metrics_count_for_the_streams_own_route(self):
        before = metrics()
        s = session()
        self.assertEqual(s.get("http://shared.mygreatbank.test/headers", timeout=10).status_code, 200)
        r = s.get("http://shared.mygreatbank.test/rst-after-100", timeout=10)
        self.assertEqual(r.status_code, 502, r.text[:300])
        after = metrics()

        def delta(name, route):
            return harness.metric(after, name, absent=0.0, route=route) - harness.metric(before, name, absent=0.0, route=route)
        self.assertEqual(delta("mtls_proxy_h2_upstream_streams_total", "ra"), 1)
        self.assertEqual(delta("mtls_proxy_h2_upstream_streams_total", "rb"), 1)
        self.assertEqual(delta("mtls_proxy_h2_upstream_stream_resets_total", "rb"), 1)
        self.assertEqual(delta("mtls_proxy_h2_upstream_stream_resets_total", "ra"), 0)

    # 5. the bounded queue

    def test_beyond_the_waiting_limit_requests_are_answered_503_at_once_and_nothing_leaks(self):
        log = harness.read(f"{ENV['dir']}/proxy.log")
        if "h2 wait queue holds 4" not in log:
            self.skipTest("a release build ignores MTLS_PROXY_TEST_FAULT (the queue limit cannot be lowered)")
        # One stream at a time (the server's limit, one connection): 1 in flight, 4 waiting, 3 refused.
        clients_before = harness.metric(metrics(), "mtls_proxy_client_connections_active", absent=0.0)

        def get(i):
            started = time.time()
            with session() as s:
                r = s.get("http://queue.mygreatbank.test/slow/600", headers={"Connection": "close"}, timeout=20)
            return r, time.time() - started
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(get, range(8)))
        codes = sorted(r.status_code for r, _ in results)
        self.assertEqual(codes, [200] * 5 + [503] * 3, [r.text[:200] for r, _ in results])
        for r, took in results:
            if r.status_code == 503:
                self.assertIn("connection_limit_reached", r.headers.get("Proxy-Status", ""))
                self.assertIn("4 requests already wait for one", r.headers.get("Proxy-Status", ""))
                self.assertLess(took, 0.5, "a refusal must not wait")
        with session() as s:
            r = s.get("http://queue.mygreatbank.test/headers", headers={"Connection": "close"}, timeout=10)
            self.assertEqual(r.status_code, 200)
        ok = harness.wait_until(lambda: harness.metric(metrics(), "mtls_proxy_client_connections_active", absent=0.0) <= clients_before,
                                5, 0.1)
        self.assertTrue(ok, ("client connections left open", clients_before,
                             harness.metric(metrics(), "mtls_proxy_client_connections_active", absent=0.0),
                             subprocess.run(["ss", "-tnp", f"( sport = :{ENV['port']} or dport = :{ENV['port']} )"], capture_output=True).stdout.decode()))

    # 2. protocol = "auto" to an HTTP/1.1-only server

    def test_auto_first_request_a_post_with_a_body_goes_over_http11_on_that_connection(self):
        body = os.urandom(200_000)
        opened = opened_upstreams()
        r = session().post("http://autopost.mygreatbank.test/echo", data=body, timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertIn(hashlib.sha256(body).hexdigest(), r.text)
        self.assertEqual(opened_upstreams() - opened, 1, "the request needed a second connection")
        # Later requests go over HTTP/1.1 directly, on the pooled connection.
        r = session().post("http://autopost.mygreatbank.test/echo", data=b"again", timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertIn(hashlib.sha256(b"again").hexdigest(), r.text)

    def test_auto_first_request_a_get_goes_over_http11_on_that_connection(self):
        opened = opened_upstreams()
        r = session().get("http://autoget.mygreatbank.test/whoami", timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertIn("fusion-us", r.text)
        self.assertEqual(opened_upstreams() - opened, 1, "the request needed a second connection")

    def test_auto_once_known_as_http11_offers_only_http11(self):
        # Later connections to a server known to speak HTTP/1.1 carry HTTP/1.1: they must not offer h2, or a server
        # that starts selecting it (a rolling upgrade) would get HTTP/1.1 bytes on an HTTP/2 connection.
        s = session()
        first = s.get("http://autoswitch.mygreatbank.test/1", timeout=10)
        self.assertEqual((first.status_code, first.text), (200, "http/1.1\n"))
        for i in range(2):
            r = s.get(f"http://autoswitch.mygreatbank.test/{i + 2}", timeout=10)
            self.assertEqual((r.status_code, r.text), (200, "http/1.1\n"), "the proxy offered h2 on an HTTP/1.1 connection")

    def test_auto_many_first_requests_at_once_all_go_over_http11(self):
        bodies = [os.urandom(50_000 + i) for i in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda b: session().post("http://automany.mygreatbank.test/echo", data=b, timeout=10), bodies))
        for body, r in zip(bodies, results):
            self.assertEqual(r.status_code, 200, r.text[:300])
            self.assertIn(hashlib.sha256(body).hexdigest(), r.text)

    def test_auto_first_request_a_4mib_chunked_upload_with_expect_100_continue(self):
        # The body waits in the HTTP/2 stream (the client held back at the watermarks) until the server's choice
        # of HTTP/1.1 is known, then all of it moves to the HTTP/1.1 connection.
        upload = os.urandom(4 << 20)
        path = f"{ENV['dir']}/auto-up.bin"
        with open(path, "wb") as f:
            f.write(upload)
        c = subprocess.run(["curl", "-sS", "-x", ENV["url"], "-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
                            "--data-binary", f"@{path}", "http://autobig.mygreatbank.test/echo"],
                           capture_output=True, env=harness.clean_env(), timeout=30)
        self.assertIn(hashlib.sha256(upload).hexdigest(), c.stdout.decode(), (c.stdout.decode()[:300], c.stderr.decode()))

    # 6. nginx with http2 and ssl_verify_client on

    def test_nginx_h2_verifies_the_proxys_identity(self):
        r = session().get("http://nginx.mygreatbank.test/whoami", timeout=10)
        self.assertEqual(r.status_code, 200, r.text[:300])
        self.assertRegex(r.text, r"^HTTP/2.0 SUCCESS .*CN=fusion-us")

    def test_nginx_h2_refuses_a_wrong_identity(self):
        r = session().get("http://rogue.mygreatbank.test/whoami", timeout=10)
        self.assertNotEqual(r.status_code, 200, r.text[:300])
        self.assertNotIn("SUCCESS", r.text)
        # nginx completes the handshake and answers 400 for a certificate it cannot verify (another CA).
        self.assertEqual(r.status_code, 400, r.text[:300])
        self.assertIn("SSL certificate error", r.text)
        # The proxy's own identity on the same server, meanwhile, is verified.
        ok = session().get("http://nginx.mygreatbank.test/whoami", timeout=10)
        self.assertIn("SUCCESS", ok.text)

    def test_nginx_h2_post_upload_and_download(self):
        s = session()
        r = s.post("http://nginx.mygreatbank.test/post", data=b"x" * 1000, timeout=10)
        self.assertEqual((r.status_code, r.text), (200, "POST 1000\n"))
        upload = os.urandom(4 << 20)
        r = s.put("http://nginx.mygreatbank.test/dav/upload.bin", data=upload, timeout=30)
        self.assertIn(r.status_code, (201, 204), r.text[:300])
        with open(f"{ENV['dir']}/www/dav/upload.bin", "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(upload).hexdigest())
        r = s.get("http://nginx.mygreatbank.test/download.bin", timeout=30)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers.get("X-Protocol"), "HTTP/2.0")
        self.assertEqual(hashlib.sha256(r.content).hexdigest(), hashlib.sha256(NGINX_DOWNLOAD).hexdigest())
        # curl with Expect: 100-continue and chunked upload as well.
        with open(f"{ENV['dir']}/up.bin", "wb") as f:
            f.write(upload)
        c = subprocess.run(["curl", "-sS", "-x", ENV["url"], "-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
                            "-T", f"{ENV['dir']}/up.bin", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://nginx.mygreatbank.test/dav/chunked.bin"], capture_output=True, env=harness.clean_env(), timeout=30)
        self.assertIn(c.stdout.decode(), ("201", "204"), c.stderr.decode())
        with open(f"{ENV['dir']}/www/dav/chunked.bin", "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(upload).hexdigest())

    # 7. git through an h2 route

    def test_git_clone_through_an_h2_route(self):
        if not shutil.which("git"):
            self.skipTest("git not installed (scripts/lib/deps.sh)")
        d = ENV["dir"]
        work = f"{d}/git-src"
        env = harness.clean_env(GIT_CONFIG_NOSYSTEM="1", HOME=d, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")

        def git(*args, cwd=None, extra=None):
            r = subprocess.run(["git", *args], cwd=cwd, env=dict(env, **(extra or {})), capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 0, (args, r.stderr.decode()[-2000:]))
            return r.stdout.decode().strip()
        git("init", "-q", "-b", "main", work)
        for i in range(3):
            with open(f"{work}/file{i}.txt", "w") as f:
                f.write(f"content {i}\n" * 1000)
            git("add", ".", cwd=work)
            git("commit", "-q", "-m", f"commit {i}", cwd=work)
        head = git("rev-parse", "HEAD", cwd=work)
        git("clone", "-q", "--bare", work, f"{d}/www/repo.git")
        git("update-server-info", cwd=f"{d}/www/repo.git")
        # As users set it: HTTP_PROXY in the environment (git honours http_proxy).
        git("clone", "-q", "http://nginx.mygreatbank.test/repo.git", f"{d}/git-clone",
            extra=dict(http_proxy=ENV["url"], HTTP_PROXY=ENV["url"]))
        self.assertEqual(git("rev-parse", "HEAD", cwd=f"{d}/git-clone"), head)
        self.assertEqual(git("log", "--format=%s", cwd=f"{d}/git-clone").splitlines(), ["commit 2", "commit 1", "commit 0"])
        # And with http.proxy in git's config.
        git("-c", f"http.proxy={ENV['url']}", "clone", "-q", "http://nginx.mygreatbank.test/repo.git", f"{d}/git-clone2")
        self.assertEqual(git("rev-parse", "HEAD", cwd=f"{d}/git-clone2"), head)

    def test_git_smart_http_clone_and_push_through_an_h2_route(self):
        # git's own protocol (smart HTTP: git http-backend behind an HTTP/2 server that verifies the client
        # certificate): POSTs with request bodies both ways, as git servers speak it.
        if not shutil.which("git"):
            self.skipTest("git not installed (scripts/lib/deps.sh)")
        d = ENV["dir"]
        env = harness.clean_env(GIT_CONFIG_NOSYSTEM="1", HOME=d, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com", http_proxy=ENV["url"])

        def git(*args, cwd=None):
            r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 0, (args, r.stderr.decode()[-2000:]))
            return r.stdout.decode().strip()
        src = f"{d}/smart-src"
        git("init", "-q", "-b", "main", src)
        with open(f"{src}/big.bin", "wb") as f:
            f.write(os.urandom(2 << 20))  # a pack larger than git's 1 MiB post buffer: a chunked upload
        git("add", ".", cwd=src)
        git("commit", "-q", "-m", "first", cwd=src)
        git("clone", "-q", "--bare", src, f"{d}/gitroot/smart.git")
        git("config", "http.receivepack", "true", cwd=f"{d}/gitroot/smart.git")
        clone = f"{d}/smart-clone"
        git("clone", "-q", "http://git.mygreatbank.test/git/smart.git", clone)
        self.assertEqual(git("rev-parse", "HEAD", cwd=clone), git("rev-parse", "HEAD", cwd=src))
        with open(f"{clone}/more.bin", "wb") as f:
            f.write(os.urandom(2 << 20))
        git("add", ".", cwd=clone)
        git("commit", "-q", "-m", "second", cwd=clone)
        git("push", "-q", "origin", "main", cwd=clone)
        self.assertEqual(git("rev-parse", "main", cwd=f"{d}/gitroot/smart.git"), git("rev-parse", "HEAD", cwd=clone))
        git("fsck", "--strict", cwd=f"{d}/gitroot/smart.git")
        paths = {e["path"] for e in server_log() if e["event"] == "stream"}
        self.assertIn("/git/smart.git/git-upload-pack", paths)  # the smart protocol's POSTs, as HTTP/2 streams
        self.assertIn("/git/smart.git/git-receive-pack", paths)

    def test_zz_no_sanitizer_report(self):
        log = harness.read(f"{ENV['dir']}/proxy.log")
        self.assertNotIn("AddressSanitizer", log)
        self.assertNotIn("Fatal error", log)


if __name__ == "__main__":
    harness.run_suite()
