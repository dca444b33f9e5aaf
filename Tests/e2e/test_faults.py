#!/usr/bin/env python3
"""Faults around the request path, tried as an operator and as an attacker would: taken ports, a second
instance on the same ports, liveness while draining, wrong passwords arriving in bulk, reload gaps, secrets
that must never reach a log or an error body, private key permissions. Everything on loopback."""
import base64, concurrent.futures, hashlib, os, re, signal, socket, subprocess, sys, tempfile, threading, time
import unittest, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import tear_down, with_upstream  # noqa: E402

ENV = {}
HOST = "api.mygreatbank.test"


def setUpModule():
    ENV.update(with_upstream("mtls-proxy-faults-"))


def tearDownModule():
    tear_down(ENV)


def routes(extra_route=""):
    return f"""
{harness.US_IDENTITY}[[route]]
host = "{HOST}"
identity = "us"
connect = "127.0.0.1:{ENV['up']}"
{extra_route}"""


def start_own(test, name, port):
    """`mtls-proxy run` with `name`.conf of the module's folder (its output in `name`.log), listening on `port`;
    stopped when `test` ends. Returns the process."""
    fx = ENV["fixture"].beside(test)
    fx.ports[name] = port
    return fx.proxy(name, port=name)


def write(path, text, mode=None):
    harness.write_file(path, text, mode)


def proxy_get(port, path="/hello", headers=None, timeout=10, source=None):
    """One GET through the proxy on a fresh connection; returns (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None)
    try:
        head = f"GET http://{HOST}{path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        s.sendall((head + "\r\n").encode())
        return read_response(s)
    finally:
        s.close()


def basic(user, password):
    """The Proxy-Authorization header for `user` and `password`, as a headers dict for proxy_get."""
    return {"Proxy-Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def raw_exchange(port, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        return read_response(s)
    finally:
        s.close()


def read_response(s):
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def run_proxy(config, timeout=15):
    """Runs `mtls-proxy run` expected to fail at start-up; returns (exit code, stderr+stdout lines)."""
    try:
        r = subprocess.run([harness.proxy_binary(), "run", "--config", config], capture_output=True, text=True,
                           timeout=timeout, env=harness.clean_env(SWIFT_BACKTRACE="enable=no"))
    except subprocess.TimeoutExpired:
        return None, [f"still running after {timeout}s"]
    return r.returncode, [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]


class TakenPorts(unittest.TestCase):
    """Point 1: a listener that cannot bind ends the start with one line naming the address and the cause."""

    def check_taken(self, which):
        d = ENV["dir"]
        ports = {k: harness.free_port() for k in ("proxy", "admin", "sidecar")}
        holder = socket.socket()
        holder.bind(("127.0.0.1", ports[which]))
        holder.listen(1)
        try:
            write(f"{d}/taken-{which}.conf", f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 2
[admin]
listen = "127.0.0.1:{ports['admin']}"
[[listener]]
listen = "127.0.0.1:{ports['sidecar']}"
upstream = "https://{HOST}"
""" + routes())
            code, lines = run_proxy(f"{d}/taken-{which}.conf")
            self.assertEqual(code, 1, lines)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(f"127.0.0.1:{ports[which]}: address already in use", lines[0])
            self.assertNotIn("double free", "\n".join(lines))
            # Nothing is left listening on the other ports.
            for name, port in ports.items():
                if name != which:
                    with self.assertRaises(OSError):
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        finally:
            holder.close()

    def test_admin_port_taken(self):
        self.check_taken("admin")

    def test_forward_port_taken(self):
        self.check_taken("proxy")

    def test_sidecar_port_taken(self):
        self.check_taken("sidecar")


class SecondInstance(unittest.TestCase):
    """Point 2: a second process on the same addresses is refused; the first keeps every request."""

    def test_second_instance_is_refused(self):
        d = ENV["dir"]
        port, sidecar = harness.free_port(), harness.free_port()
        text = f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 2
[[listener]]
listen = "127.0.0.1:{sidecar}"
upstream = "https://{HOST}"
""" + routes()
        write(f"{d}/first.conf", text)
        start_own(self, "first", port)
        code, lines = run_proxy(f"{d}/first.conf")
        self.assertEqual(code, 1, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"127.0.0.1:{port}: address already in use", lines[0])
        # Another config on the sidecar address only.
        write(f"{d}/second.conf", text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{harness.free_port()}"))
        code, lines = run_proxy(f"{d}/second.conf")
        self.assertEqual(code, 1, lines)
        self.assertIn(f"127.0.0.1:{sidecar}: address already in use", lines[0])
        statuses = [proxy_get(port)[0] for _ in range(12)]
        self.assertEqual(statuses, [200] * 12)


def start_activated(procs, sockets, config, log_path):
    """Starts the proxy the way systemd socket activation does: the sockets as descriptors 3, 4, ... with
    LISTEN_PID and LISTEN_FDS set for the proxy's own process id."""
    fds = [s.fileno() for s in sockets]
    moves = " ".join(f"{3 + i}<&{fd}" for i, fd in enumerate(fds))
    script = (f"exec {moves}; export LISTEN_PID=$$ LISTEN_FDS={len(fds)}; "
              f"exec '{harness.proxy_binary()}' run --config '{config}'")
    with open(log_path, "ab") as log:
        return procs.start(["bash", "-c", script], pass_fds=fds, stdout=log, stderr=subprocess.STDOUT)


class ZeroDowntimeUpgrade(unittest.TestCase):
    """Point 2, the README's upgrade recipe: the listening sockets belong to a supervisor (systemd socket
    activation); the new proxy starts on them while the old one drains, and no request fails."""

    def test_new_proxy_on_inherited_sockets_while_the_old_drains(self):
        d = ENV["dir"]
        listen, admin = socket.socket(), socket.socket()
        for s in (listen, admin):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
        port, admin_port = listen.getsockname()[1], admin.getsockname()[1]
        write(f"{d}/activated.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 2
drain_timeout = "20s"
[admin]
listen = "127.0.0.1:{admin_port}"
""" + routes())
        procs = harness.Processes()
        failures, statuses = [], []
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    statuses.append(proxy_get(port, "/hello", timeout=20)[0])
                except OSError as e:
                    failures.append(repr(e))
                time.sleep(0.01)

        try:
            old = start_activated(procs, [listen, admin], f"{d}/activated.conf", f"{d}/old.log")
            harness.wait_for_port(port)
            self.assertEqual(proxy_get(port)[0], 200)
            # A request in flight on the old proxy when it is told to drain.
            slow = {}
            t_slow = threading.Thread(target=lambda: slow.update(r=proxy_get(port, "/drip?size=100000&ms=3000", timeout=30)))
            t_slow.start()
            t = threading.Thread(target=traffic)
            t.start()
            time.sleep(0.5)
            new = start_activated(procs, [listen, admin], f"{d}/activated.conf", f"{d}/new.log")
            self.assertTrue(wait_for(lambda: "listening on" in harness.read(f"{d}/new.log"), timeout=20), harness.read(f"{d}/new.log"))
            old.send_signal(signal.SIGTERM)
            self.assertEqual(old.wait(timeout=30), 0)
            served_after = len(statuses)
            time.sleep(1.0)
            stop.set()
            t.join(30)
            t_slow.join(30)
            self.assertEqual(failures, [])
            self.assertEqual(set(statuses), {200}, statuses)
            self.assertGreater(len(statuses), served_after, "the new proxy served after the old one left")
            self.assertEqual((slow["r"][0], len(slow["r"][2])), (200, 100000))
            self.assertEqual(admin_get(admin_port, "/readyz")[0], 200)
            self.assertIsNone(new.poll())
        finally:
            stop.set()
            procs.stop_all()
            listen.close()
            admin.close()


def admin_get(port, path):
    return harness.http_get(port, path)


class DrainLiveness(unittest.TestCase):
    """Point 3: /healthz stays 200 during a drain longer than the health staleness limit; /readyz is 503."""

    def test_healthz_stays_ok_through_a_long_drain(self):
        d = ENV["dir"]
        port, admin = harness.free_port(), harness.free_port()
        write(f"{d}/drain.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 2
drain_timeout = "30s"
[admin]
listen = "127.0.0.1:{admin}"
""" + routes())
        proxy = start_own(self, "drain", port)
        result = {}

        def download():
            result["r"] = proxy_get(port, "/drip?size=200000&ms=9000", timeout=30)

        t = threading.Thread(target=download)
        t.start()
        time.sleep(1.0)
        proxy.send_signal(signal.SIGTERM)
        time.sleep(6.5)
        self.assertEqual(admin_get(admin, "/healthz"), (200, "ok\n"))
        status, body = admin_get(admin, "/readyz")
        self.assertEqual(status, 503)
        self.assertIn("draining", body)
        t.join(30)
        self.assertEqual(result["r"][0], 200)
        self.assertEqual(len(result["r"][2]), 200000)
        self.assertEqual(proxy.wait(timeout=15), 0)


class KeyPermissions(unittest.TestCase):
    """Point 7: every private key the proxy reads draws the same warning when others can read it."""

    def test_interception_ca_key_readable_by_others_is_reported(self):
        d = ENV["dir"]
        os.makedirs(f"{d}/ca7", exist_ok=True)
        for f in ("local-ca.pem", "local-ca.key"):
            if os.path.exists(f"{d}/ca7/{f}"):
                os.unlink(f"{d}/ca7/{f}")
        port = harness.free_port()
        write(f"{d}/perm.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 1
[intercept]
ca_cert = "ca7/local-ca.pem"
ca_key = "ca7/local-ca.key"
""" + routes())
        r = subprocess.run([harness.proxy_binary(), "ca", "init", "--config", f"{d}/perm.conf"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        os.chmod(f"{d}/ca7/local-ca.key", 0o644)
        r = subprocess.run([harness.proxy_binary(), "check", "--config", f"{d}/perm.conf"], capture_output=True,
                           text=True, timeout=30)
        self.assertIn("local-ca.key", r.stdout + r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"warning: .*local-ca\.key is readable by everyone \(mode 644\)")
        start_own(self, "perm", port)
        time.sleep(0.3)
        self.assertRegex(harness.read(f"{d}/perm.log"), r"warning .*local-ca\.key is readable by everyone \(mode 644\)")



class LeakyUpstream(threading.Thread):
    """A TLS upstream whose answers carry a secret in header values the proxy must refuse, chosen by path."""

    ANSWERS = {
        "/te": "HTTP/1.1 200 OK\r\nTransfer-Encoding: x-{s}, chunked\r\n\r\n0\r\n\r\n",
        "/cl": "HTTP/1.1 200 OK\r\nContent-Length: {s}\r\n\r\n",
        "/ctl": "HTTP/1.1 200 OK\r\nX-Token: {s}\x01\r\nContent-Length: 2\r\n\r\nok",
        "/status": "HTTP/1.1 2{s} OK\r\nContent-Length: 2\r\n\r\nok",
    }

    def __init__(self, pki, secret):
        super().__init__(daemon=True)
        import ssl
        self.secret = secret
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(f"{pki}/server.pem", f"{pki}/server.key")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = tls.recv(65536)
                if not data:
                    return
                buf += data
            path = buf.split(b" ")[1].decode().split("?")[0]
            tls.sendall(self.ANSWERS.get(path, self.ANSWERS["/te"]).format(s=self.secret).encode())
            time.sleep(0.2)
            tls.close()
        except Exception:  # noqa: BLE001
            pass


class Secrets(unittest.TestCase):
    """Point 6: nothing from a query, a header value or a body reaches a log line or an error body."""

    maxDiff = None

    def test_no_planted_secret_in_any_log_line_or_error_body(self):
        d = ENV["dir"]
        secret = "SeKrEt" + hashlib.sha256(os.urandom(8)).hexdigest()[:16]
        leaky = LeakyUpstream(f"{d}/pki", secret)
        leaky.start()
        port, sidecar, authed, admin = (harness.free_port() for _ in range(4))
        write(f"{d}/users6", f"bob:sha256:{hashlib.sha256(b'right').hexdigest()}\n")
        extra = f"""
[[route]]
host = "leaky.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{leaky.port}"
[[route]]
host = "blocked.mygreatbank.test"
action = "deny"
[[route]]
host = "closed.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{harness.free_port()}"
"""
        write(f"{d}/secrets.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 1
max_header_bytes = 4096
[admin]
listen = "127.0.0.1:{admin}"
[log]
level = "debug"
[[listener]]
listen = "127.0.0.1:{sidecar}"
upstream = "https://{HOST}"
""" + routes(extra))
        write(f"{d}/secrets-auth.conf", f"""
[proxy]
listen = "127.0.0.1:{authed}"
workers = 1
auth_file = "users6"
""" + routes(extra))
        procs = harness.Processes()
        bodies = []
        try:
            harness.start_proxy(procs, f"{d}/secrets.conf", f"{d}/secrets.log", port)
            harness.start_proxy(procs, f"{d}/secrets-auth.conf", f"{d}/secrets-auth.log", authed)
            q = f"access_token={secret}"
            auth = "Basic " + base64.b64encode(f"bob:{secret}".encode()).decode()
            cases = [
                (port, f"GET /v1/accounts?{q} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"GET /x?u=http://a/{q} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"GET {secret}://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"POST http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip-{secret}, chunked\r\n\r\n", 501),
                (port, f"POST http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: {secret}\r\n\r\n", 400),
                (port, f"POST http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {secret}\r\n\r\n", 400),
                (port, f"POST http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
                (port, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nX-Api-Key: {secret}\x01\r\n\r\n", 400),
                (port, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nX-Api-Key: {secret}\r\n  folded\r\n\r\n", 400),
                (port, f"GET http://{HOST}/?{q}#frag HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"GET http://{HOST}/a/../b?{q} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"GET http://user:{secret}@{HOST}/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {secret * 400}\r\n\r\n", 431),
                (port, f"GET http://{HOST}/?{q} HTTP/9.9\r\nHost: {HOST}\r\n\r\n", 505),
                (port, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {secret}\r\nHost: {HOST}\r\n\r\n", 400),
                (port, f"GET http://blocked.mygreatbank.test/?{q} HTTP/1.1\r\nHost: blocked.mygreatbank.test\r\nAuthorization: {secret}\r\n\r\n", 403),
                (port, f"GET http://closed.mygreatbank.test/?{q} HTTP/1.1\r\nHost: closed.mygreatbank.test\r\nCookie: {secret}\r\n\r\n", 502),
                # The proxy answers these with a 502, or (data path as of this writing) closes without one.
                (port, f"GET http://leaky.mygreatbank.test/te?{q} HTTP/1.1\r\nHost: leaky.mygreatbank.test\r\nConnection: close\r\n\r\n", (502, 0)),
                (port, f"GET http://leaky.mygreatbank.test/cl?{q} HTTP/1.1\r\nHost: leaky.mygreatbank.test\r\nConnection: close\r\n\r\n", (502, 0)),
                (port, f"GET http://leaky.mygreatbank.test/ctl?{q} HTTP/1.1\r\nHost: leaky.mygreatbank.test\r\n\r\n", 502),
                (port, f"GET http://leaky.mygreatbank.test/status?{q} HTTP/1.1\r\nHost: leaky.mygreatbank.test\r\n\r\n", 502),
                (port, f"POST http://{HOST}/echo?{q} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz{secret}\r\n", 400),
                (port, f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nX-Api-Key: {secret}\r\n\r\n", 403),
                (sidecar, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (sidecar, f"GET /?{q}#x HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 400),
                (sidecar, f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nX-Api-Key: {secret}\r\n\r\n", 405),
                (authed, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: {auth}\r\n\r\n", 407),
                (authed, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {secret}\r\n\r\n", 407),
                (authed, f"GET http://{HOST}/?{q} HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: {secret}\r\n\r\n", 407),
            ]
            statuses = []
            for target, request, expected in cases:
                status, headers, body = raw_exchange(target, request.encode("latin-1"), timeout=5)
                if isinstance(expected, tuple):
                    expected = status if status in expected else expected[0]
                statuses.append((request.split("\r\n")[0][:50], status, expected))
                bodies.append(f"{status} {headers} {body.decode('latin-1')}")
            for path in ("/metrics", "/healthz", f"/nope?{q}"):
                bodies.append(repr(admin_get(admin, path)))
            time.sleep(0.5)
        finally:
            procs.stop_all()
            leaky.sock.close()
        self.assertEqual([(line, s) for line, s, e in statuses], [(line, e) for line, s, e in statuses])
        logs = harness.read(f"{d}/secrets.log") + harness.read(f"{d}/secrets-auth.log")
        self.assertGreater(len(logs.splitlines()), len(cases), "every error leaves an access log line")
        for text in [*logs.splitlines(), *bodies]:
            self.assertNotIn(secret.lower(), text.lower())


def wait_for(predicate, timeout=15.0, step=0.2):
    return harness.wait_until(predicate, timeout, step)


class ReloadGaps(unittest.TestCase):
    """Point 5: after a failed reload the watcher follows the files the newest config names; a change of
    nameservers applies on reload."""

    def test_files_named_by_a_failed_config_are_watched(self):
        d = ENV["dir"]
        port = harness.free_port()
        os.makedirs(f"{d}/later", exist_ok=True)
        for ext in ("pem", "key"):
            if os.path.exists(f"{d}/later/eu.{ext}"):
                os.unlink(f"{d}/later/eu.{ext}")
        head = f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n'
        write(f"{d}/gap.conf", head + routes())
        start_own(self, "gap", port)
        self.assertEqual(proxy_get(port, "/whoami")[1].get("x-client-subject"), "fusion-us")
        # The new config names files that do not exist yet: the reload fails, the old config serves.
        tmp = f"{d}/gap.conf.tmp"
        write(tmp, head + routes().replace("pki/fusion-us.pem", "later/eu.pem").replace("pki/fusion-us.key", "later/eu.key"))
        os.replace(tmp, f"{d}/gap.conf")
        self.assertTrue(wait_for(lambda: "failed, still serving the previous config" in harness.read(f"{d}/gap.log")))
        self.assertEqual(proxy_get(port, "/whoami")[1].get("x-client-subject"), "fusion-us")
        # The files appear: the proxy notices them by itself (no SIGHUP) and presents the new identity.
        import shutil
        shutil.copy(f"{d}/pki/fusion-eu.key", f"{d}/later/eu.key")
        os.chmod(f"{d}/later/eu.key", 0o600)
        shutil.copy(f"{d}/pki/fusion-eu.pem", f"{d}/later/eu.pem")
        self.assertTrue(wait_for(lambda: proxy_get(port, "/whoami")[1].get("x-client-subject") == "fusion-eu", timeout=10),
                        harness.read(f"{d}/gap.log"))

    def test_a_listeners_upstream_changes_on_reload(self):
        d = ENV["dir"]
        port, sidecar = harness.free_port(), harness.free_port()
        eu = f"""
[identities.eu]
cert = "pki/fusion-eu.pem"
key = "pki/fusion-eu.key"
[[route]]
host = "eu.mygreatbank.test"
identity = "eu"
connect = "127.0.0.1:{ENV['up']}"
"""

        def conf(upstream):
            return (f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 2\n[[listener]]\nlisten = "127.0.0.1:{sidecar}"\n'
                    f'upstream = "https://{upstream}"\n' + routes(eu))
        write(f"{d}/side.conf", conf(HOST))
        proxy = start_own(self, "side", port)

        def who():
            return raw_exchange(sidecar, f"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())[1].get("x-client-subject")
        self.assertEqual(who(), "fusion-us")
        write(f"{d}/side.conf", conf("eu.mygreatbank.test"))
        proxy.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "reloaded (" in harness.read(f"{d}/side.log")))
        self.assertTrue(wait_for(lambda: who() == "fusion-eu", timeout=5), harness.read(f"{d}/side.log"))

    def test_nameservers_change_on_reload(self):
        d = ENV["dir"]
        port = harness.free_port()
        first, second = harness.LoopbackDNS(), harness.LoopbackDNS()

        def conf(dns):
            return f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 1
{harness.us_identity(dns.port)}[[route]]
host = "*.loopback.test"
identity = "us"
allow_private = true
"""
        write(f"{d}/dns.conf", conf(first))
        procs = harness.Processes()
        try:
            proxy = harness.start_proxy(procs, f"{d}/dns.conf", f"{d}/dns.log", port)
            url = f"http://svc.loopback.test:{ENV['up']}/whoami"

            def get():
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(f"GET {url} HTTP/1.1\r\nHost: svc.loopback.test:{ENV['up']}\r\nConnection: close\r\n\r\n".encode())
                try:
                    return read_response(s)[0]
                finally:
                    s.close()

            self.assertEqual(get(), 200)
            self.assertTrue(first.queries)
            write(f"{d}/dns.conf", conf(second))
            proxy.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: harness.read(f"{d}/dns.log").count("reloaded (") >= 1))
            time.sleep(0.5)
            before = len(first.queries)
            self.assertEqual(get(), 200)
            self.assertTrue(second.queries, "the new nameserver was never asked")
            self.assertEqual(len(first.queries), before, "the old nameserver is still asked")
        finally:
            procs.stop_all()
            first.close()
            second.close()


bcrypt_hash = harness.bcrypt_hash  # the suites that import it from here


class WrongPasswords(unittest.TestCase):
    """Point 4: wrong passwords (bcrypt, cost 12) arriving in bulk from one address neither stall the event
    loop for a good client nor get hashed without limit: failures are rate-limited per client address."""

    def test_good_client_stays_fast_while_bad_credentials_arrive(self):
        d = ENV["dir"]
        alice = bcrypt_hash("right-horse", 12)
        if alice is None:
            self.skipTest("htpasswd (apache2-utils) is not installed to make a bcrypt hash")
        port = harness.free_port()
        write(f"{d}/users4", f"alice:{alice}\nbob:sha256:{hashlib.sha256(b'battery').hexdigest()}\n")
        write(f"{d}/auth4.conf", f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nauth_file = "users4"\n' + routes())
        good_alice = basic("alice", "right-horse")
        good_bob = basic("bob", "battery")
        procs = harness.Processes()
        try:
            harness.start_proxy(procs, f"{d}/auth4.conf", f"{d}/auth4.log", port)
            self.assertEqual(proxy_get(port, headers=good_alice, timeout=30)[0], 200)  # alice's header is now known

            bad_statuses = []

            def bad(i):
                wrong = basic("alice", f"wrong-{i}")
                return proxy_get(port, headers=wrong, timeout=60, source="127.0.0.2")[0]

            latencies = []
            stop = threading.Event()

            def good():
                i = 0
                while not stop.is_set():
                    i += 1
                    t = time.monotonic()
                    status = proxy_get(port, headers=good_alice if i % 2 else good_bob, timeout=30)[0]
                    latencies.append((time.monotonic() - t, status))
                    time.sleep(0.05)

            g = threading.Thread(target=good)
            g.start()
            with concurrent.futures.ThreadPoolExecutor(36) as pool:
                bad_statuses = list(pool.map(bad, range(36)))
            time.sleep(0.5)
            stop.set()
            g.join(60)
            self.assertGreater(len(latencies), 5)
            self.assertTrue(all(status == 200 for _, status in latencies), latencies)
            worst = max(t for t, _ in latencies)
            print(f"\n  good client: {len(latencies)} requests, worst {worst:.3f} s; wrong credentials: "
                  f"{bad_statuses.count(407)} x 407, {bad_statuses.count(429)} x 429", file=sys.stderr)
            self.assertLess(worst, 0.5, f"a good client waited {worst:.2f} s while wrong passwords arrived")
            self.assertTrue(set(bad_statuses) <= {407, 429}, bad_statuses)
            self.assertIn(429, bad_statuses, "failures from one address are not rate-limited")
            # The limit is per address: another client address still authenticates.
            self.assertEqual(proxy_get(port, headers=good_bob, source="127.0.0.3")[0], 200)
        finally:
            stop_all = procs.stop_all
            stop_all()

if __name__ == "__main__":
    harness.run_suite()
