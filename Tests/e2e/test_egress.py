#!/usr/bin/env python3
"""Egress through a corporate HTTP proxy: a real Squid on loopback (its own config, ports, logs and hosts file in
the test's folder; Basic auth with basic_ncsa_auth), nginx requiring the client certificate behind it. The proxy
opens CONNECT through Squid and runs TLS with the route's certificate inside; Squid sees only the tunnel. Refusals
and failures of the corporate proxy name it (Proxy-Status next-hop, received-status), apart from the service's."""
import base64, json, os, re, pwd, shutil, signal, socket, ssl, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import US_KEYS, Fixture, get, proxy_section, route, table, tear_down, upstream_section  # noqa: E402

ENV = {}
SQUID = shutil.which("squid") or "/usr/sbin/squid"
try:
    import h2  # noqa: F401
    HAVE_H2 = True
except ImportError:
    HAVE_H2 = False
NCSA = "/usr/lib/squid/basic_ncsa_auth"
HTPASSWD = shutil.which("htpasswd")
PASSWORD = "c0rp-s3cret-Pw"
WRONG_PASSWORD = "not-the-pw-Xq"
HOSTS = ("api.mygreatbank.test", "status.example.com", "denied.mygreatbank.test", "wrongpw.mygreatbank.test",
         "slow.mygreatbank.test", "rotated.mygreatbank.test")


def missing_tools():
    missing = [name for name, path in (("squid", SQUID), ("basic_ncsa_auth", NCSA), ("htpasswd", HTPASSWD))
               if not path or not os.path.exists(path)]
    try:
        pwd.getpwnam("proxy")
    except KeyError:
        missing.append("the proxy user (Debian squid)")
    return missing


SQUID_CONF = """
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log squid
cache_store_log none
cache deny all
cache_mem 4 MB
coredump_dir {dir}
netdb_filename none
pinger_enable off
# Names come from this hosts file only: nothing is asked of a resolver outside the machine.
hosts_file {dir}/hosts
dns_nameservers 127.0.0.1
dns_timeout 2 seconds
shutdown_lifetime 0 seconds
auth_param basic program {ncsa} {dir}/passwd
auth_param basic realm corp
acl authed proxy_auth REQUIRED
acl CONNECT method CONNECT
# Squid refuses CONNECT to ports outside SSL_ports; the test services listen on loopback ports of their own.
acl SSL_ports port {ports}
acl allowed_dst dstdomain {allowed}
http_access deny CONNECT !SSL_ports
http_access deny !authed
http_access allow CONNECT allowed_dst
http_access deny all
"""


def start_squid(procs, directory, port, service_ports, allowed):
    """A Squid on 127.0.0.1:`port` in `directory` (made readable by Squid's own user), allowing CONNECT to
    `allowed` names on `service_ports` for user alice."""
    os.makedirs(directory, exist_ok=True)
    with open(f"{directory}/hosts", "w") as f:
        f.write("127.0.0.1 " + " ".join(HOSTS) + "\n")
    subprocess.run([HTPASSWD, "-bc", f"{directory}/passwd", "alice", PASSWORD], check=True, capture_output=True)
    with open(f"{directory}/squid.conf", "w") as f:
        f.write(SQUID_CONF.format(port=port, dir=directory, ncsa=NCSA, ports=" ".join(map(str, service_ports)),
                                  allowed=" ".join(allowed)))
    proxy_user = pwd.getpwnam("proxy")
    for name in ["."] + os.listdir(directory):
        os.chown(os.path.join(directory, name), proxy_user.pw_uid, proxy_user.pw_gid)
    p = procs.start([SQUID, "-N", "-f", f"{directory}/squid.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness.wait_for_port(port, timeout=20)
    return p


class SlowUpstream(harness.TLSUpstream):
    """Sends a response head and the first part of a long body, then trickles the rest."""

    def serve(self, conn):
        head, _ = harness.read_head(conn)
        if head is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        for _ in range(200):
            time.sleep(0.1)
            conn.sendall(b"b" * 10)


class SilentProxy(harness.ThreadedServer):
    """A 'corporate proxy' that accepts connections and never answers."""

    def handle(self, sock):
        time.sleep(10)
        sock.close()


def setUpModule():
    missing = missing_tools()
    if missing:
        raise unittest.SkipTest(f"not installed: {', '.join(missing)} (scripts/lib/deps.sh installs squid and apache2-utils)")
    with Fixture("mtls-proxy-egress-", ports=("proxy", "admin", "squid", "squid2", "mtls", "tls", "down", "h2")) as fx:
        d, procs, ports = fx.dir, fx.procs, fx.ports
        os.chmod(d, 0o755)  # Squid drops to its own user and must reach its folder inside
        fx.nginx(mtls="mtls", tls="tls")
        if HAVE_H2:  # an HTTP/2 service (Tests/e2e/h2server.py), reached through Squid as the others
            fx.tls_script("h2server.py", "h2", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports["slow"] = fx.server(SlowUpstream(fx.pki)).port
        ports["silent"] = fx.server(SilentProxy()).port
        start_squid(procs, f"{d}/squid", ports["squid"], [ports["mtls"], ports["tls"], ports["slow"], ports["h2"]],
                    ["api.mygreatbank.test", "status.example.com", "wrongpw.mygreatbank.test", "rotated.mygreatbank.test"])
        harness.write_file(f"{d}/corp.cred", f"alice:{PASSWORD}\n", mode=0o600)
        harness.write_file(f"{d}/wrong.cred", f"alice:{WRONG_PASSWORD}\n", mode=0o600)
        harness.write_file(f"{d}/rotated.cred", f"alice:{WRONG_PASSWORD}\n", mode=0o600)
        squid = f"http://127.0.0.1:{ports['squid']}"
        us = dict(identity="us")
        fx.proxy("proxy", proxy_section(ports["proxy"], workers=2, admin=ports["admin"]) + table("[log]", level="debug")
                 + upstream_section(proxy=squid, proxy_credentials_file="corp.cred") + US_KEYS + "".join([
                     route("api.mygreatbank.test", name="h2 through squid", port=ports["h2"], protocol="h2", **us),
                     route("api.mygreatbank.test", name="distrusting", port=ports["tls"], ca_file="pki/rogue-ca.pem", **us),
                     route("api.mygreatbank.test", idle_timeout="1s", **us),
                     route("status.example.com", port=ports["tls"], action="tls"),
                     route("blocked.example.com", port=ports["tls"], action="tls"),
                     route("denied.mygreatbank.test", **us),
                     route("wrongpw.mygreatbank.test", proxy_credentials_file="wrong.cred", **us),
                     route("rotated.mygreatbank.test", proxy_credentials_file="rotated.cred", **us),
                     route("10.20.30.40", action="tls"),
                     route("direct.mygreatbank.test", name="direct", proxy="direct", connect=ports["mtls"], **us),
                     route("slow.mygreatbank.test", proxy=f"http://127.0.0.1:{ports['squid2']}", proxy_credentials_file="corp.cred", **us),
                     route("down.mygreatbank.test", proxy=f"http://127.0.0.1:{ports['down']}", **us),
                     route("silent.mygreatbank.test", proxy=f"http://127.0.0.1:{ports['silent']}", connect_timeout="1s", **us),
                 ]), wait=("admin",))
    ENV.update(fx.env())


def tearDownModule():
    tear_down(ENV)


def request(host, port, path="/", session=None):
    """GET http://host:port/path through the proxy (on the open `session` if given): (status, headers dict, body)."""
    return get(ENV["ports"]["proxy"], f"{host}:{port}", path, close=False, session=session)


def squid_log(name="squid"):
    path = f"{ENV['dir']}/{name}/access.log"
    deadline = time.time() + 5  # Squid writes its log line when the tunnel closes, or on its buffer's schedule
    text = ""
    while time.time() < deadline:
        text = harness.read(path) if os.path.exists(path) else ""
        if text:
            break
        time.sleep(0.1)
    return text


class Egress(unittest.TestCase):
    def test_mtls_through_squid_reaches_the_service_with_the_client_certificate(self):
        mtls = ENV["ports"]["mtls"]
        status, headers, body = request("api.mygreatbank.test", mtls, "/secret-path?token=hunter2")
        self.assertEqual(status, 200, body)
        self.assertIn("CN=fusion-us", headers.get("x-client-subject", ""))
        self.assertEqual(headers.get("x-client-verify"), "SUCCESS")
        # Squid saw a tunnel for alice to the service, and nothing of the request inside it. It logs the tunnel
        # when it ends: the pooled connection closes after the route's 1s idle_timeout.
        pattern = rf"CONNECT api\.mygreatbank\.test:{mtls} alice"
        harness.wait_until(lambda: re.search(pattern, squid_log()), timeout=8, step=0.2)
        self.assertRegex(squid_log(), pattern)
        for squid_file in ("access.log", "cache.log"):
            content = harness.read(f"{ENV['dir']}/squid/{squid_file}")
            self.assertNotIn("secret-path", content)
            self.assertNotIn("hunter2", content)
            self.assertNotIn("GET ", content)

    @unittest.skipUnless(HAVE_H2, "python h2 library not installed (scripts/lib/deps.sh ensure_h2_deps)")
    def test_h2_through_squid_reaches_the_service_with_the_client_certificate(self):
        h2port = ENV["ports"]["h2"]
        for _ in range(2):
            status, headers, body = request("api.mygreatbank.test", h2port, "/hello")
            self.assertEqual(status, 200, body)
            self.assertIn("commonName=fusion-us", body if isinstance(body, str) else body.decode())
        # Both (and this one) went as streams on HTTP/2 connections through tunnels: at most one connection per
        # worker (this proxy runs 2), each carrying every stream its worker sent.
        status, _, stats = request("api.mygreatbank.test", h2port, "/_stats")
        self.assertEqual(status, 200, stats)
        counts = next(v for k, v in json.loads(stats).items() if k.endswith("commonName=fusion-us"))
        self.assertEqual(sum(counts), 3, counts)
        self.assertLessEqual(len(counts), 2, counts)

    def test_requests_reuse_the_tunnelled_connection(self):
        tls = ENV["ports"]["tls"]
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=15)
        try:
            for _ in range(3):
                status, _, body = request("status.example.com", tls, "/", session=s)
                self.assertEqual(status, 200, body)
                self.assertEqual(body, "status ok\n")
        finally:
            s.close()
        # Squid logs a CONNECT only when its tunnel ends; the proxy's access log says which requests reused one.
        def lines():
            return [l for l in harness.json_log_lines(f"{ENV['dir']}/proxy.log")
                    if l.get("host") == "status.example.com" and l.get("method") == "GET"]
        harness.wait_until(lambda: len(lines()) >= 3, timeout=5, step=0.1)
        lines = lines()
        self.assertGreaterEqual(len(lines), 3)
        self.assertEqual([l.get("reused") for l in lines[-3:]], [False, True, True], lines[-3:])

    def test_wrong_password_is_the_corporate_proxys_407_with_no_secret_anywhere(self):
        status, headers, body = request("wrongpw.mygreatbank.test", ENV["ports"]["mtls"])
        self.assertEqual(status, 502, body)
        ps = headers.get("proxy-status", "")
        self.assertIn("error=proxy_configuration_error", ps)
        self.assertIn(f'next-hop="127.0.0.1:{ENV["ports"]["squid"]}"', ps)
        self.assertIn("received-status=407", ps)
        self.assertIn("corporate proxy", body)
        self.assertIn("wrong.cred", body)
        secrets = [WRONG_PASSWORD, PASSWORD, base64.b64encode(f"alice:{WRONG_PASSWORD}".encode()).decode(),
                   base64.b64encode(f"alice:{PASSWORD}".encode()).decode()]
        log = harness.read(f"{ENV['dir']}/proxy.log")
        for secret in secrets:
            self.assertNotIn(secret, body)
            self.assertNotIn(secret, ps)
            self.assertNotIn(secret, log)

    def test_denied_destination_is_the_corporate_proxys_403(self):
        status, headers, body = request("denied.mygreatbank.test", ENV["ports"]["mtls"])
        self.assertEqual(status, 502, body)
        ps = headers.get("proxy-status", "")
        self.assertIn("error=http_request_denied", ps)
        self.assertIn("received-status=403", ps)
        self.assertIn(f'next-hop="127.0.0.1:{ENV["ports"]["squid"]}"', ps)
        self.assertIn("CONNECT denied.mygreatbank.test", body)

    def test_service_tls_failure_is_not_blamed_on_the_corporate_proxy(self):
        # Squid opens the tunnel; inside it the service's certificate fails the route's trust (a CA that did not
        # issue it): a TLS failure with the service, with no next-hop.
        status, headers, body = request("api.mygreatbank.test", ENV["ports"]["tls"])
        self.assertEqual(status, 502, body)
        ps = headers.get("proxy-status", "")
        self.assertIn("error=tls_certificate_error", ps)
        self.assertNotIn("next-hop", ps)
        self.assertIn("through the corporate proxy", body)

    def test_corporate_proxy_down_is_named(self):
        status, headers, body = request("down.mygreatbank.test", ENV["ports"]["mtls"])
        self.assertEqual(status, 502, body)
        ps = headers.get("proxy-status", "")
        self.assertIn("error=connection_refused", ps)
        self.assertIn(f'next-hop="127.0.0.1:{ENV["ports"]["down"]}"', ps)
        self.assertIn("corporate proxy", body)

    def test_corporate_proxy_that_never_answers_times_out_naming_it(self):
        started = time.time()
        status, headers, body = request("silent.mygreatbank.test", ENV["ports"]["mtls"])
        self.assertLess(time.time() - started, 5)
        self.assertEqual(status, 504, body)
        ps = headers.get("proxy-status", "")
        self.assertIn("error=connection_timeout", ps)
        self.assertIn(f'next-hop="127.0.0.1:{ENV["ports"]["silent"]}"', ps)
        self.assertIn("did not answer CONNECT", body)

    def test_direct_route_does_not_use_the_corporate_proxy(self):
        before = squid_log().count("direct.mygreatbank.test")
        status, headers, body = request("direct.mygreatbank.test", ENV["ports"]["mtls"])
        self.assertEqual(status, 200, body)
        self.assertIn("CN=fusion-us", headers.get("x-client-subject", ""))
        time.sleep(0.3)
        self.assertEqual(squid_log().count("direct.mygreatbank.test"), before)

    def test_blind_tunnel_goes_through_the_corporate_proxy(self):
        tls = ENV["ports"]["tls"]
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10)
        s.sendall(f"CONNECT status.example.com:{tls} HTTP/1.1\r\nHost: status.example.com:{tls}\r\n\r\n".encode())
        head, rest = harness.read_head(s)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(rest, b"")
        ctx = ssl.create_default_context(cafile=f"{ENV['dir']}/pki/ca.pem")
        t = ctx.wrap_socket(s, server_hostname="status.example.com")
        t.sendall(b"GET / HTTP/1.1\r\nHost: status.example.com\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = t.recv(65536)
            if not chunk:
                break
            data += chunk
        t.close()
        self.assertIn(b"status ok", data)
        pattern = rf"CONNECT status\.example\.com:{tls} alice"
        harness.wait_until(lambda: re.search(pattern, squid_log()), timeout=8, step=0.2)
        self.assertRegex(squid_log(), pattern)

    def test_blind_tunnel_refused_by_the_corporate_proxy_is_named(self):
        # A name Squid does not allow CONNECT to.
        s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10)
        s.sendall(f"CONNECT blocked.example.com:{ENV['ports']['tls']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, _ = harness.read_head(s)
        s.close()
        text = head.decode()
        self.assertTrue(text.startswith("HTTP/1.1 502"), text)
        self.assertIn("received-status=403", text)
        self.assertIn(f'next-hop="127.0.0.1:{ENV["ports"]["squid"]}"', text)

    def test_corporate_proxy_dying_mid_stream_cuts_the_response_and_recovers_as_refused(self):
        procs = harness.Processes()
        try:
            squid2 = start_squid(procs, f"{ENV['dir']}/squid2", ENV["ports"]["squid2"], [ENV["ports"]["slow"]],
                                 ["slow.mygreatbank.test"])
            s = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10)
            host = "slow.mygreatbank.test"
            s.sendall(f"GET http://{host}:{ENV['ports']['slow']}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head, rest = harness.read_head(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            got = len(rest)
            while got < 1000:
                got += len(s.recv(65536))
            os.killpg(squid2.pid, signal.SIGKILL)
            squid2.wait()
            started = time.time()
            closed = False
            while time.time() - started < 8:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                got += len(chunk)
            s.close()
            self.assertTrue(closed, "the client connection stayed open after the corporate proxy died")
            self.assertLess(got, 100000)
            status, headers, body = request(host, ENV["ports"]["slow"])
            self.assertEqual(status, 502, body)
            self.assertIn(f'next-hop="127.0.0.1:{ENV["ports"]["squid2"]}"', headers.get("proxy-status", ""))
            # The other corporate proxy's routes keep working.
            status, _, body = request("api.mygreatbank.test", ENV["ports"]["mtls"])
            self.assertEqual(status, 200, body)
        finally:
            procs.stop_all()

    def test_metrics_count_corporate_proxy_failures_apart(self):
        request("down.mygreatbank.test", ENV["ports"]["mtls"])
        status, text = harness.http_get(ENV["ports"]["admin"], "/metrics")
        self.assertEqual(status, 200)
        self.assertIn('reason="corporate_proxy"', text)

    def test_explain_shows_each_routes_egress(self):
        config = f"{ENV['dir']}/proxy.conf"
        mtls = ENV["ports"]["mtls"]
        out = harness.run_cli("explain", "--config", config, f"http://api.mygreatbank.test:{mtls}/x", timeout=30).stdout
        self.assertRegex(out, rf"egress\s+through the corporate proxy http://127\.0\.0\.1:{ENV['ports']['squid']} \(CONNECT api\.mygreatbank\.test:{mtls}, Proxy-Authorization from .*corp\.cred\)")
        self.assertIn("the SSRF guard does not see that address", out)
        self.assertNotIn(PASSWORD, out)
        out = harness.run_cli("explain", "--config", config, f"http://direct.mygreatbank.test:{mtls}/x", timeout=30).stdout
        self.assertRegex(out, r"egress\s+direct")
        out = harness.run_cli("explain", "--config", config, f"http://slow.mygreatbank.test:{mtls}/x", timeout=30).stdout
        self.assertIn(f"http://127.0.0.1:{ENV['ports']['squid2']}", out)

    def test_ssrf_guard_still_refuses_a_private_ip_literal_before_the_corporate_proxy_hears_of_it(self):
        # Refused before any connection: nothing goes to 10.20.30.40, nor to Squid.
        status, headers, body = request("10.20.30.40", 443)
        self.assertEqual(status, 403, body)
        self.assertIn("error=destination_ip_prohibited", headers.get("proxy-status", ""))
        self.assertIn("nothing was sent to the corporate proxy", body)
        time.sleep(0.3)
        self.assertNotIn("10.20.30.40", squid_log())

    def test_rotated_credentials_file_is_picked_up_by_the_reload(self):
        mtls = ENV["ports"]["mtls"]
        status, headers, body = request("rotated.mygreatbank.test", mtls)
        self.assertEqual(status, 502, body)
        self.assertIn("received-status=407", headers.get("proxy-status", ""))
        harness.write_file(f"{ENV['dir']}/rotated.cred", f"alice:{PASSWORD}\r\n", mode=0o600)  # CRLF, as some editors write
        got = harness.wait_until(lambda: request("rotated.mygreatbank.test", mtls)[0] == 200, timeout=10, step=0.3)
        self.assertTrue(got, "the new credentials were not used after the file changed")

    def check_with_credentials(self, content, mode):
        """`check` of a config whose corporate proxy's credentials file holds `content` with permissions `mode`."""
        d = tempfile.mkdtemp(prefix="mtls-proxy-egress-check-")
        harness.write_file(f"{d}/corp.cred", content, mode=mode)
        harness.write_file(f"{d}/proxy.conf", upstream_section(ca_file=None, proxy="http://127.0.0.1:3129", proxy_credentials_file="corp.cred")
                           + route("status.example.com", action="tls"))
        return harness.run_cli("check", "--config", f"{d}/proxy.conf", timeout=30)

    def test_check_warns_about_a_credentials_file_others_can_read(self):
        r = self.check_with_credentials(f"alice:{PASSWORD}\n", 0o644)
        text = r.stdout + r.stderr
        self.assertIn("proxy credentials file", text)
        self.assertIn("readable by everyone", text)
        self.assertNotIn(PASSWORD, text)

    def test_check_refuses_an_unreadable_credentials_file_without_quoting_it(self):
        r = self.check_with_credentials(f"{PASSWORD}\n", 0o600)
        self.assertNotEqual(r.returncode, 0)
        text = r.stdout + r.stderr
        self.assertIn("upstream.proxy_credentials_file", text)
        self.assertIn("user:password", text)
        self.assertNotIn(PASSWORD, text)


if __name__ == "__main__":
    harness.run_suite()
