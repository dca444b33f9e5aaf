#!/usr/bin/env python3
"""Running it for real: sidecar listeners, the admin endpoint and its metrics, access log settings, explain,
the health command, environment overrides, graceful drain, and the Kubernetes example."""
import json, os, re, signal, socket, subprocess, sys, tempfile, threading, time, unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import EU_KEYS, US_KEYS, Fixture, loopback, proxy_section, route, table, tear_down, upstream_section  # noqa: E402
import requests  # noqa: E402

ENV = {}


def setUpModule():
    with Fixture("mtls-proxy-ops-", ports=("proxy", "sidecar", "denied_sidecar", "admin", "up", "closed")) as fx:
        ports = fx.ports
        fx.python_upstream("up", ca="ca", require=True)
        up = ports["up"]
        config = ("\n" + proxy_section(ports["proxy"], workers=2, admin=ports["admin"])
                  + table("[log]", access="access.log", format="text") + upstream_section() + US_KEYS
                  + table("[[listener]]", listen=loopback(ports["sidecar"]), upstream="https://api.mygreatbank.test")
                  + table("[[listener]]", listen=loopback(ports["denied_sidecar"]), upstream="https://blocked.mygreatbank.test:8443")
                  + route("api.mygreatbank.test", name="bank API", identity="us", connect=up)
                  + EU_KEYS
                  + route("resume.mygreatbank.test", identity="us", connect=up, idle_timeout="1s")
                  + route("resume-eu.mygreatbank.test", identity="eu", connect=up, idle_timeout="1s")
                  + route("refused.mygreatbank.test", identity="us", connect=ports["closed"])
                  + route("*", action="deny"))
        proxy = fx.proxy("proxy", config, wait=("admin",))
    ENV.update(fx.env(proxy=proxy, url=f"http://127.0.0.1:{ports['proxy']}"))


def tearDownModule():
    tear_down(ENV)


def admin(path):
    return harness.http_get(ENV['ports']['admin'], path)


def metric(text, name, **labels):
    """The value of one series, 0 if absent."""
    return harness.metric(text, name, 0.0, **labels)


def cli(*args, env=None):
    return harness.run_cli(*args, timeout=30, env=env)


class SidecarListener(unittest.TestCase):
    def test_origin_form_goes_to_the_fixed_upstream_with_the_route_identity(self):
        r = requests.get(f"http://127.0.0.1:{ENV['ports']['sidecar']}/headers?x=1", timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["X-Client-Subject"], "fusion-us")
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(seen["host"], "api.mygreatbank.test")
        self.assertEqual(r.json()["request_line"], "GET /headers?x=1 HTTP/1.1")

    def test_the_route_table_still_decides(self):
        r = requests.get(f"http://127.0.0.1:{ENV['ports']['denied_sidecar']}/", timeout=10)
        self.assertEqual(r.status_code, 403)
        self.assertIn("http_request_denied", r.headers["Proxy-Status"])

    def test_absolute_form_is_refused_on_a_fixed_listener(self):
        r = subprocess.run(["curl", "-sS", "-i", "-x", f"http://127.0.0.1:{ENV['ports']['sidecar']}", "http://other.test/"],
                           capture_output=True, text=True, env=harness.clean_env())
        self.assertIn("400 Bad Request", r.stdout)
        # It says what the listener is for and where the proxy is, and never echoes the target.
        self.assertIn("takes paths", r.stdout)
        self.assertIn("use the forward listener", r.stdout)
        self.assertNotIn("other.test", r.stdout)


class Admin(unittest.TestCase):
    def test_health_and_readiness(self):
        self.assertEqual(admin("/healthz"), (200, "ok\n"))
        self.assertEqual(admin("/readyz"), (200, "ready\n"))
        self.assertEqual(admin("/nope")[0], 404)

    def test_metrics_move_as_requests_pass(self):
        _, before = admin("/metrics")
        s = requests.Session()
        for _ in range(3):
            self.assertEqual(s.get("http://api.mygreatbank.test/whoami", proxies={"http": ENV["url"]}, timeout=10).status_code, 200)
        requests.get("http://elsewhere.test/", proxies={"http": ENV["url"]}, timeout=10)
        _, after = admin("/metrics")
        delta = lambda name, **l: metric(after, name, **l) - metric(before, name, **l)  # noqa: E731
        self.assertEqual(delta("mtls_proxy_requests_total", route="bank API", identity="us", code_class="2xx"), 3)
        self.assertEqual(delta("mtls_proxy_requests_total", route="route[5] *", identity="", code_class="4xx"), 1)
        self.assertGreaterEqual(delta("mtls_proxy_upstream_connections_total", result="reused"), 2)
        self.assertGreaterEqual(metric(after, "mtls_proxy_upstream_connections_total", result="opened"), 1)
        self.assertGreaterEqual(metric(after, "mtls_proxy_tls_handshakes_total", kind="full"), 1)
        self.assertGreaterEqual(delta("mtls_proxy_request_duration_seconds_count", route="bank API"), 3)
        self.assertGreater(delta("mtls_proxy_bytes_total", direction="out"), 0)
        serial = subprocess.run(["openssl", "x509", "-in", f"{ENV['dir']}/pki/fusion-us.pem", "-noout", "-serial"],
                                capture_output=True, text=True).stdout.strip().split("=")[1]
        not_after = subprocess.run(["openssl", "x509", "-in", f"{ENV['dir']}/pki/fusion-us.pem", "-noout", "-enddate", "-dateopt", "iso_8601"],
                                   capture_output=True, text=True).stdout
        expiry = metric(after, "mtls_proxy_certificate_expiry_timestamp_seconds", identity="us", serial=serial, active="true")
        self.assertGreater(expiry, time.time() + 300 * 86400, not_after)
        self.assertEqual(metric(after, "mtls_proxy_identity_certificate_valid", identity="us"), 1)
        self.assertIn("mtls_proxy_client_connections_active", after)
        self.assertIn("mtls_proxy_config_reloads_total", after)

    def test_failed_upstream_connections_are_counted_by_reason(self):
        _, before = admin("/metrics")
        r = requests.get("http://refused.mygreatbank.test/", proxies={"http": ENV["url"]}, timeout=10)
        self.assertEqual(r.status_code, 502)
        _, after = admin("/metrics")
        failed = lambda text: metric(text, "mtls_proxy_upstream_connections_total", result="failed", reason="connect")  # noqa: E731
        self.assertEqual(failed(after) - failed(before), 1)


class SessionResumption(unittest.TestCase):
    def test_resumed_after_the_pool_idles_out_and_never_across_identities(self):
        get = lambda host: requests.get(f"http://{host}/whoami", proxies={"http": ENV["url"]}, timeout=10)  # noqa: E731
        self.assertEqual(get("resume.mygreatbank.test").headers["X-Client-Subject"], "fusion-us")
        time.sleep(2.5)  # idle_timeout 1s: the pooled connection is closed
        _, before = admin("/metrics")
        self.assertEqual(get("resume.mygreatbank.test").headers["X-Client-Subject"], "fusion-us")
        _, after = admin("/metrics")
        resumed = lambda t: metric(t, "mtls_proxy_tls_handshakes_total", kind="resumed")  # noqa: E731
        full = lambda t: metric(t, "mtls_proxy_tls_handshakes_total", kind="full")  # noqa: E731
        self.assertEqual(resumed(after) - resumed(before), 1)
        self.assertEqual(full(after) - full(before), 0)
        # Another identity to the same upstream: its own full handshake, and the upstream sees its certificate.
        r = get("resume-eu.mygreatbank.test")
        self.assertEqual(r.headers["X-Client-Subject"], "fusion-eu")
        _, last = admin("/metrics")
        self.assertEqual(full(last) - full(after), 1)
        self.assertEqual(resumed(last) - resumed(after), 0)


class AccessLog(unittest.TestCase):
    def test_text_lines_in_the_configured_file_without_query_strings(self):
        seen = harness.read(f"{ENV['dir']}/access.log").count("/whoami")
        requests.get("http://api.mygreatbank.test/whoami?token=secret", proxies={"http": ENV["url"]}, timeout=10)
        # Each worker writes its access log lines in batches, within 100 ms: wait for this one.
        deadline = time.time() + 10
        while time.time() < deadline and harness.read(f"{ENV['dir']}/access.log").count("/whoami") <= seen:
            time.sleep(0.05)
        lines = harness.read(f"{ENV['dir']}/access.log").splitlines()
        line = [l for l in lines if "/whoami" in l][-1]
        self.assertIn('"GET http://api.mygreatbank.test:443/whoami" 200 route="bank API" identity=us serial=', line)
        self.assertNotIn("secret", harness.read(f"{ENV['dir']}/access.log"))
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1:\d+ ")


class Explain(unittest.TestCase):
    def test_mtls_route(self):
        r = cli("explain", "http://api.mygreatbank.test/v1/accounts?x=1", "--config", f"{ENV['dir']}/proxy.conf")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"route\s+bank API: first matching route, on host api.mygreatbank.test")
        self.assertRegex(r.stdout, r"outcome\s+mutual TLS presenting identity us")
        self.assertRegex(r.stdout, r"certificate\s+#1 serial [0-9A-F]+, CN=fusion-us")
        self.assertRegex(r.stdout, r"dial\s+127\.0\.0\.1:\d+ \(the route's connect address\)")
        self.assertIn("timeouts", r.stdout)

    def test_denied_url_exits_0(self):
        r = cli("explain", "http://elsewhere.test/", "--config", f"{ENV['dir']}/proxy.conf")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"skipped\s+bank API: host api.mygreatbank.test does not match elsewhere.test")
        self.assertIn("deny: the proxy answers 403", r.stdout)

    def test_bad_url_exits_non_zero(self):
        r = cli("explain", "ftp://x/", "--config", f"{ENV['dir']}/proxy.conf")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not supported", r.stderr)


class Commands(unittest.TestCase):
    def test_health_command(self):
        r = cli("health", "--config", f"{ENV['dir']}/proxy.conf")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"))
        r = cli("health", "--ready", "--admin", f"127.0.0.1:{ENV['ports']['admin']}")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ready"))
        r = cli("health", "--admin", f"127.0.0.1:{harness.free_port()}")
        self.assertEqual(r.returncode, 1)

    def test_environment_overrides(self):
        env = harness.clean_env(MTLS_PROXY_CONFIG=f"{ENV['dir']}/proxy.conf")
        r = cli("check", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"config {ENV['dir']}/proxy.conf: OK", r.stdout)
        r = cli("check", env=dict(env, MTLS_PROXY_LISTEN="127.0.0.1:4567"))
        self.assertIn("listen 127.0.0.1:4567", r.stdout)
        r = cli("check", env=dict(env, MTLS_PROXY_LISTEN="0.0.0.0:4567"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("MTLS_PROXY_LISTEN", r.stderr)
        r = cli("check", env=dict(env, MTLS_PROXY_LOG_LEVEL="loud"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("environment: MTLS_PROXY_LOG_LEVEL: expected one of trace, debug, info", r.stderr)


class Drain(unittest.TestCase):
    def test_sigterm_lets_the_response_in_flight_finish_and_refuses_new_connections(self):
        d = ENV["dir"]
        port, admin_port = harness.free_port(), harness.free_port()
        text = harness.read(f"{d}/proxy.conf")
        text = text.replace(f"127.0.0.1:{ENV['ports']['proxy']}", f"127.0.0.1:{port}")
        text = text.replace(f"127.0.0.1:{ENV['ports']['admin']}", f"127.0.0.1:{admin_port}")
        text = re.sub(r"\[\[listener\]\][^\[]*", "", text)
        with open(f"{d}/drain.conf", "w") as f:
            f.write(text)
        procs = harness.Processes()
        try:
            proxy = harness.start_proxy(procs, f"{d}/drain.conf", f"{d}/drain.log", port)
            result = {}

            def download():
                r = requests.get("http://api.mygreatbank.test/drip?size=1600000&ms=2500", proxies={"http": f"http://127.0.0.1:{port}"}, timeout=30)
                result["status"], result["size"] = r.status_code, len(r.content)

            t = threading.Thread(target=download)
            t.start()
            time.sleep(0.7)
            proxy.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as r:
                self.assertEqual(r.status, 200)
            with self.assertRaises(urllib.error.HTTPError) as ready:
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=5)
            self.assertEqual(ready.exception.code, 503)
            self.assertIn("draining", ready.exception.read().decode())
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)
            t.join(30)
            self.assertEqual(result, {"status": 200, "size": 1600000})
            self.assertEqual(proxy.wait(timeout=15), 0)
        finally:
            procs.stop_all()


class Kubernetes(unittest.TestCase):
    def test_sidecar_example(self):
        import yaml
        with open(os.path.join(harness.ROOT, "deploy", "kubernetes", "sidecar.yaml")) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        kinds = {d["kind"]: d for d in docs}
        self.assertEqual(set(kinds), {"ConfigMap", "Deployment", "NetworkPolicy"})
        pod = kinds["Deployment"]["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        workflow, proxy = containers["workflow"], containers["mtls-proxy"]
        env = {e["name"]: e["value"] for e in workflow["env"]}
        self.assertEqual(env["HTTP_PROXY"], "http://127.0.0.1:3128")
        # The probes run `mtls-proxy health` in the container, on 127.0.0.1; the admin endpoint also listens on
        # the pod IP for Prometheus, behind allow_clients and the NetworkPolicy (test_deploy checks those).
        self.assertEqual(proxy["readinessProbe"]["exec"]["command"][1:5], ["health", "--ready", "--admin", "127.0.0.1:9901"])
        self.assertEqual(proxy["livenessProbe"]["exec"]["command"][1], "health")
        self.assertIn('listen = "0.0.0.0:9901"', kinds["ConfigMap"]["data"]["proxy.conf"])
        mounts = {m["name"]: m for m in proxy["volumeMounts"]}
        self.assertTrue(all(m["readOnly"] for m in mounts.values()))
        self.assertNotIn("subPath", mounts["config"])  # so ConfigMap updates reach the running proxy
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["certs"]["secret"]["secretName"], "mtls-proxy-certs")
        self.assertEqual(volumes["config"]["configMap"]["name"], kinds["ConfigMap"]["metadata"]["name"])
        config_path = proxy["args"][proxy["args"].index("--config") + 1]
        self.assertEqual(os.path.dirname(config_path), mounts["config"]["mountPath"])
        self.assertGreater(pod["terminationGracePeriodSeconds"], 30)
        # The embedded proxy.conf is valid: `check` gets past parsing and stops only at the certificate files,
        # which exist in the pod, not here.
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write(kinds["ConfigMap"]["data"]["proxy.conf"])
        r = cli("check", "--config", f.name)
        self.assertEqual(r.returncode, 1)
        self.assertIn("identities.us.cert: cannot read /etc/mtls-proxy/certs/fusion-us.pem", r.stderr)


if __name__ == "__main__":
    harness.run_suite()
