#!/usr/bin/env python3
"""Operating it unattended: --version and the build_info metric, check/certs as JSON, every config mistake at
once, help that fits 80 columns, the man page, the places looked at for a config, the expiry calendar
(parsed with the icalendar package), and renewal with `csr` (verified with openssl, signed by a test CA and
staged)."""
import json, os, re, shutil, signal, stat, subprocess, sys, tempfile, time, unittest, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, tear_down  # noqa: E402

ENV = {}
DAY = 86400


def setUpModule():
    ENV.update(Fixture("mtls-proxy-cli-ops-").env())


def tearDownModule():
    tear_down(ENV, remove=True)


def write(name, text):
    return harness.write_file(f"{ENV['dir']}/{name}", text)


def own(test, **ports):
    """A fixture of `test`'s own in the module's folder (stopped when the test ends) with `ports` (name=port)."""
    fx = ENV["fixture"].beside(test)
    fx.ports.update(ports)
    return fx


def run(*args, cwd=None, env=None):
    return harness.run_cli(*args, timeout=60, cwd=cwd, env=env if env is not None else harness.clean_env())


def utc_in(seconds):
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + seconds))


def dated_cert(name, cn, start, end):
    """A client certificate from the test CA with the given validity (UTC YYYYMMDDHHMMSSZ)."""
    harness.pki_shell(f"pki_cert_dated '{ENV['dir']}/pki' {name} {cn} {start} {end}")
    return f"pki/{name}.pem", f"pki/{name}.key"


def sign_csr(csr, out, start, end):
    """Has the test CA sign `csr` (as a client certificate) with the given validity, like a real CA would."""
    pki = f"{ENV['dir']}/pki"
    db = tempfile.mkdtemp(dir=ENV["dir"], prefix="ca-db-")
    os.makedirs(f"{db}/new")
    open(f"{db}/index.txt", "w").close()
    with open(f"{db}/serial", "w") as f:
        f.write(os.urandom(16).hex() + "\n")
    with open(f"{db}/ca.cnf", "w") as f:
        f.write(f"""[ca]
default_ca = test
[test]
database = {db}/index.txt
new_certs_dir = {db}/new
certificate = {pki}/ca.pem
private_key = {pki}/ca.key
serial = {db}/serial
default_md = sha256
policy = anything
unique_subject = no
email_in_dn = no
preserve = yes
[anything]
O = optional
CN = supplied
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = clientAuth
""")
    subprocess.run(["openssl", "ca", "-batch", "-config", f"{db}/ca.cnf", "-extensions", "client", "-notext",
                    "-startdate", start, "-enddate", end, "-in", csr, "-out", out],
                   check=True, capture_output=True)


def openssl_fingerprint(path):
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1]


def openssl_serial(path):
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"], capture_output=True, text=True,
                         check=True).stdout
    return out.strip().split("=", 1)[1]


BASE = harness.US_API_CONFIG

SUBCOMMANDS = [[], ["run"], ["check"], ["certs"], ["explain"], ["health"], ["ca"], ["ca", "init"], ["csr"],
               ["version"]]


class Version(unittest.TestCase):
    def test_version_flag_short_flag_and_subcommand_agree(self):
        outputs = []
        for args in (["--version"], ["-V"], ["version"]):
            r = run(*args)
            self.assertEqual(r.returncode, 0, f"{args}: {r.stderr}")
            outputs.append(r.stdout)
        self.assertEqual(outputs[0], outputs[1])
        self.assertEqual(outputs[0], outputs[2])
        text = outputs[0]
        self.assertRegex(text, r"^mtls-proxy \d+\.\d+\.\d+ \(commit [0-9a-f]{7,40}(-dirty)?\)\n|^mtls-proxy \d+\.\d+\.\d+ \(commit unknown\)\n")
        self.assertRegex(text, r"\nswift 6\.\d+")
        openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split()[1]
        self.assertIn(f"\nopenssl {openssl}\n", text)
        libevent = subprocess.run(["pkg-config", "--modversion", "libevent"], capture_output=True, text=True).stdout.strip()
        if libevent:
            self.assertIn(f"\nlibevent {libevent}", text)

    def test_the_commit_is_the_one_built_by_scripts_build(self):
        # What the binary itself says decides: scripts/build records the commit and the full Swift version; a plain
        # `swift build` records neither ("commit unknown", the compiler's major.minor), and then there is nothing
        # to compare. scripts/test builds with scripts/build and sets MTLS_PROXY_EXPECT_BUILD_INFO, so that there
        # a binary without build info fails instead.
        version = run("--version").stdout
        commit = re.search(r"\(commit (\S+)\)", version).group(1)
        if commit == "unknown" and not os.environ.get("MTLS_PROXY_EXPECT_BUILD_INFO"):
            self.skipTest("the binary carries no build info (a plain `swift build`, not scripts/build): commit unknown")
        self.assertNotEqual(commit, "unknown", "MTLS_PROXY_EXPECT_BUILD_INFO is set but the binary has no build info")
        swift = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout
        recorded = re.search(r"Swift version (\d+\.\d+(\.\d+)?)", swift)
        if recorded:
            self.assertIn(f"\nswift {recorded.group(1)}\n", version)
        head = subprocess.run(["git", "-C", harness.ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
        if head.returncode != 0:
            self.skipTest(f"not a git checkout: the binary says commit {commit}, with no HEAD to compare it to")
        self.assertEqual(commit.removesuffix("-dirty"), head.stdout.strip())

    def test_build_info_metric(self):
        proxy_port, admin_port = harness.free_port(), harness.free_port()
        config = write("build-info.conf", BASE + f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\n'
                                                  f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n')
        own(self, proxy=proxy_port, admin=admin_port).proxy("build-info", port="proxy", wait=("admin",))
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        version = run("--version").stdout.splitlines()
        number, commit = re.match(r"mtls-proxy (\S+) \(commit (\S+)\)", version[0]).groups()
        openssl = version[2].split(" ", 1)[1]
        libevent = version[3].split(" ", 1)[1]
        lines = [line for line in metrics.splitlines() if line.startswith("mtls_proxy_build_info{")]
        self.assertEqual(len(lines), 1, metrics)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', lines[0]))
        self.assertEqual(labels, {"version": number, "commit": commit, "openssl": openssl, "libevent": libevent})
        self.assertTrue(lines[0].endswith(" 1") or lines[0].endswith(" 1.0"), lines[0])


class CheckJSON(unittest.TestCase):
    def check_json(self, config, *extra):
        r = run("check", "--config", config, "--format", "json", *extra)
        return r.returncode, json.loads(r.stdout), r

    def test_a_good_config(self):
        code, report, r = self.check_json(write("json-good.conf", BASE))
        self.assertEqual(code, 0, r.stderr)
        self.assertEqual(report["schema"], "mtls-proxy.check/1")
        self.assertTrue(report["valid"])
        self.assertEqual(report["errors"], [])
        self.assertEqual(report["verdict"], {"status": "ok", "exit_code": 0, "warn_days": 30, "fail_on": "warning"})
        self.assertNotIn("local_ca", report)
        [identity] = report["identities"]
        self.assertEqual((identity["name"], identity["health"], identity["active"]), ("us", "ok", 1))
        [cert] = identity["certificates"]
        pem = f"{ENV['dir']}/pki/fusion-us.pem"
        self.assertEqual(cert["state"], "active")
        self.assertEqual(cert["subject"], "CN=fusion-us,O=mtls-proxy test")
        self.assertEqual(cert["issuer"], "CN=mtls-proxy test CA,O=mtls-proxy test")
        self.assertEqual(cert["sha256"], openssl_fingerprint(pem))
        self.assertEqual(cert["serial"], openssl_serial(pem))
        self.assertIn(cert["days_left"], (364, 365))
        self.assertEqual(cert["file"], pem)
        self.assertRegex(cert["not_after"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert["not_after_unix"])), cert["not_after"])
        routes = [{k: v for k, v in r.items() if k != "trust"} for r in report["routes"]]
        self.assertEqual(routes, [{"index": 1, "label": "route[1] api.mygreatbank.test", "host": "api.mygreatbank.test",
                                   "action": "mtls", "identity": "us", "protocol": "http/1.1"}])
        self.assertEqual(report["routes"][0]["trust"]["revocation"], "off")  # the trust fields: test_upstream_trust

    def test_expiring_staged_expired_and_the_exit_codes(self):
        old = dated_cert("json-old", "fusion-us", utc_in(-400 * DAY), utc_in(-DAY))
        soon = dated_cert("json-soon", "fusion-us", utc_in(-300 * DAY), utc_in(10 * DAY))
        config = write("json-soon.conf", BASE.replace('cert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"\n', "")
                       + f'[[identities.us.certificates]]\ncert = "{old[0]}"\nkey = "{old[1]}"\n'
                       + f'[[identities.us.certificates]]\ncert = "{soon[0]}"\nkey = "{soon[1]}"\n')
        code, report, _ = self.check_json(config)
        self.assertEqual(code, 2)
        self.assertEqual(report["verdict"]["status"], "expiring_without_successor")
        self.assertEqual(report["verdict"]["exit_code"], 2)
        self.assertEqual([c["state"] for c in report["identities"][0]["certificates"]], ["expired", "active"])
        self.assertLess(report["identities"][0]["certificates"][0]["days_left"], 0)

        staged = dated_cert("json-staged", "fusion-us", utc_in(5 * DAY), utc_in(400 * DAY))
        with open(config, "a") as f:
            f.write(f'[[identities.us.certificates]]\ncert = "{staged[0]}"\nkey = "{staged[1]}"\n')
        code, report, _ = self.check_json(config)
        self.assertEqual(code, 0)
        certificates = report["identities"][0]["certificates"]
        self.assertEqual([c["state"] for c in certificates], ["expired", "active", "next"])
        self.assertEqual(certificates[2]["takes_over_at"], certificates[2]["not_before"])
        self.assertEqual(report["identities"][0]["next"]["certificate"], 3)

        nothing = write("json-nothing.conf", BASE.replace("pki/fusion-us.pem", old[0]).replace("pki/fusion-us.key", old[1]))
        code, report, _ = self.check_json(nothing)
        self.assertEqual(code, 3)
        self.assertEqual(report["verdict"]["status"], "no_valid_certificate")
        self.assertNotIn("active", report["identities"][0])
        # The same exit codes as the text form.
        self.assertEqual(run("check", "--config", nothing).returncode, 3)
        self.assertEqual(run("check", "--config", config, "--warn-days", "0").returncode, 0)

    def test_fail_on_error_exits_non_zero_only_for_what_run_refuses(self):
        """A start-up gate (the systemd unit's ExecStartPre) must not refuse a config that `run` serves: with
        `--fail-on error`, an expiring certificate or an identity with no valid one exits 0 (the report still
        says what is wrong), while a config or file error still exits 1. Plain `check` keeps 0/1/2/3."""
        soon = dated_cert("failon-soon", "fusion-us", utc_in(-300 * DAY), utc_in(10 * DAY))
        later = dated_cert("failon-later", "fusion-us", utc_in(10 * DAY), utc_in(400 * DAY))
        expiring = write("failon-soon.conf", BASE.replace("pki/fusion-us.pem", soon[0]).replace("pki/fusion-us.key", soon[1]))
        future = write("failon-later.conf", BASE.replace("pki/fusion-us.pem", later[0]).replace("pki/fusion-us.key", later[1]))
        for config, plain, status in ((expiring, 2, "expiring_without_successor"), (future, 3, "no_valid_certificate")):
            self.assertEqual(run("check", "--config", config).returncode, plain)
            self.assertEqual(run("check", "--config", config, "--fail-on", "warning").returncode, plain)
            r = run("check", "--config", config, "--fail-on", "error")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("config " + config + ": OK", r.stdout)
            self.assertRegex(r.stdout, "WARNING|NO VALID CERTIFICATE")  # still reported, in the table's verdicts
            code, report, r = self.check_json(config, "--fail-on", "error")
            self.assertEqual(code, 0, r.stderr)
            self.assertEqual(report["verdict"], {"status": status, "exit_code": 0, "warn_days": 30, "fail_on": "error"})
        code, report, _ = self.check_json(expiring)
        self.assertEqual(report["verdict"], {"status": "expiring_without_successor", "exit_code": 2, "warn_days": 30,
                                             "fail_on": "warning"})
        # What run refuses is still refused: a config error, a certificate file that is not there.
        bad = write("failon-bad.conf", BASE + "[log]\nlevel = \"loud\"\n")
        missing = write("failon-missing.conf", BASE.replace("pki/fusion-us.pem", "pki/nowhere.pem"))
        for config in (bad, missing):
            r = run("check", "--config", config, "--fail-on", "error")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            code, report, _ = self.check_json(config, "--fail-on", "error")
            self.assertEqual((code, report["verdict"]["status"], report["verdict"]["exit_code"]), (1, "config_error", 1))
            r = run("run", "--config", config)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        r = run("check", "--config", expiring, "--fail-on", "never")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--fail-on", r.stderr)

    def test_config_errors_as_json(self):
        config = write("json-bad.conf", BASE.replace('[[route]]', 'bogus = 1\n[[route]]') + "[log]\nlevel = \"loud\"\n")
        code, report, _ = self.check_json(config)
        self.assertEqual(code, 1)
        self.assertFalse(report["valid"])
        self.assertEqual(report["verdict"], {"status": "config_error", "exit_code": 1, "warn_days": 30, "fail_on": "warning"})
        self.assertEqual([(e["key"], e["line"]) for e in report["errors"]], [("identities.us.bogus", 7), ("log.level", 12)])

    def test_local_ca_when_intercepting(self):
        config = write("json-ca.conf", BASE + '[intercept]\nca_cert = "state/ca.pem"\nca_key = "state/ca.key"\n')
        os.makedirs(f"{ENV['dir']}/state", exist_ok=True)
        self.assertEqual(run("ca", "init", "--config", config).returncode, 0)
        code, report, r = self.check_json(config)
        self.assertEqual(code, 0, r.stderr)
        ca = report["local_ca"]
        self.assertEqual(ca["cert_file"], f"{ENV['dir']}/state/ca.pem")
        self.assertEqual(ca["sha256"], openssl_fingerprint(f"{ENV['dir']}/state/ca.pem"))
        self.assertGreater(ca["days_left"], 800)
        # The calendar has the local CA's expiry too.
        import importlib.util
        if importlib.util.find_spec("icalendar"):
            import icalendar
            events = icalendar.Calendar.from_ical(run("certs", "--config", config, "--ics").stdout.encode()).walk("VEVENT")
            self.assertEqual(sum(1 for e in events if str(e["SUMMARY"]).startswith("mtls-proxy: local CA expires")), 1)

    def test_certs_as_json(self):
        config = write("json-certs.conf", BASE.replace("[[route]]", '[identities.eu]\ncert = "pki/fusion-eu.pem"\nkey = "pki/fusion-eu.key"\n[[route]]'))
        r = run("certs", "--config", config, "--format", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["schema"], "mtls-proxy.certs/1")
        self.assertEqual([i["name"] for i in report["identities"]], ["eu", "us"])
        report = json.loads(run("certs", "eu", "--config", config, "--format", "json").stdout)
        self.assertEqual([i["name"] for i in report["identities"]], ["eu"])
        self.assertEqual(report["identities"][0]["certificates"][0]["sha256"], openssl_fingerprint(f"{ENV['dir']}/pki/fusion-eu.pem"))


class AllMistakesAtOnce(unittest.TestCase):
    BAD = BASE.replace('[[route]]', '[proxy]\nworkers = "two"\n[[route]]').replace('identity = "us"', 'identiy = "us"') + """
[[route]]
host = "b.example.com"
action = "tls"
connect_timeout = 5
"""

    def test_check_reports_every_mistake_with_file_line_and_key(self):
        config = write("many.conf", self.BAD)
        r = run("check", "--config", config)
        self.assertEqual(r.returncode, 1)
        lines = r.stderr.splitlines()
        self.assertIn(f"mtls-proxy: {config}:8: proxy.workers: expected an integer, got a string", lines)
        self.assertIn(f"mtls-proxy: {config}:9: route[1].identity: missing: set identity = \"NAME\" for mTLS, or action = \"tls\" or \"deny\"", lines)
        self.assertTrue(any(line.startswith(f"mtls-proxy: {config}:11: route[1].identiy: unknown key; did you mean `identity`?") for line in lines), r.stderr)
        self.assertIn(f'mtls-proxy: {config}:16: route[2].connect_timeout: durations are strings with a unit: write connect_timeout = "5s" (also "250ms", "2m", "1h"), got an integer', lines)
        self.assertIn(f"mtls-proxy: 4 mistakes in {config}", lines)

    def test_a_failed_reload_logs_every_mistake(self):
        proxy_port = harness.free_port()
        config = write("reload-many.conf", BASE + f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\n')
        log = f"{ENV['dir']}/reload-many.log"
        p = own(self, proxy=proxy_port).proxy("reload-many", port="proxy")
        with open(config, "w") as f:
            f.write(BASE.replace('identity = "us"', 'identiy = "us"') + f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\nworkers = "two"\n')
        os.kill(p.pid, signal.SIGHUP)
        # The file watcher may also reload while the file is being written (a half-written config fails
        # with other mistakes): wait for the reload of the whole file, not for the first failure.
        harness.wait_until(lambda: "proxy.workers: expected an integer" in harness.read(log), 30, 0.2)
        text = harness.read(log)
        self.assertIn("still serving the previous config", text)
        self.assertIn(f"{config}:9: route[1].identiy: unknown key; did you mean `identity`?", text)
        self.assertIn(f"{config}:12: proxy.workers: expected an integer, got a string", text)

    def test_no_config_found_names_every_place_looked_at(self):
        if os.path.exists("/etc/mtls-proxy/proxy.conf"):
            self.skipTest("/etc/mtls-proxy/proxy.conf exists on this machine")
        empty = tempfile.mkdtemp(dir=ENV["dir"], prefix="empty-")
        env = {k: v for k, v in harness.clean_env().items() if k != "MTLS_PROXY_CONFIG"}
        r = run("check", cwd=empty, env=env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no config file found. Looked at:", r.stderr)
        self.assertRegex(r.stderr, r"--config\s+not given")
        self.assertRegex(r.stderr, r"\$MTLS_PROXY_CONFIG\s+not set")
        self.assertRegex(r.stderr, rf"\./proxy\.conf \({re.escape(os.path.realpath(empty))}/proxy\.conf\)\s+not found")
        self.assertRegex(r.stderr, r"/etc/mtls-proxy/proxy\.conf\s+not found")
        report = json.loads(run("check", "--format", "json", cwd=empty, env=env).stdout)
        self.assertIn("no config file found; looked at --config (not given)", report["errors"][0]["message"])


class Help(unittest.TestCase):
    def test_every_help_fits_80_columns(self):
        for columns in ("80", None):
            env = harness.clean_env()
            env.pop("COLUMNS", None)
            if columns:
                env["COLUMNS"] = columns
            for args in SUBCOMMANDS:
                r = run(*args, "--help", env=env)
                self.assertEqual(r.returncode, 0, f"{args}: {r.stderr}")
                self.assertIn("USAGE:", r.stdout)
                for line in r.stdout.splitlines():
                    self.assertLessEqual(len(line), 80, f"mtls-proxy {' '.join(args)} --help: {line!r}")

    def test_text_is_filled_and_lists_keep_their_indent_at_80_columns(self):
        """What the issue calls wrapping badly: a line broken where the next word would still have fit (the help
        text had its own line breaks, which the parser then wrapped again), or a list item whose continuation
        loses the item's indent."""
        env = dict(harness.clean_env(), COLUMNS="80")
        for args in SUBCOMMANDS:
            text = run(*args, "--help", env=env).stdout
            head = text.split("\nUSAGE:")[0].splitlines()
            for line, following in zip(head, head[1:]):
                if not line.strip() or not following.strip():
                    continue
                where = f"mtls-proxy {' '.join(args)} --help: {line!r} / {following!r}"
                if line.startswith(" "):
                    self.assertTrue(following.startswith(" "), f"a list item's continuation lost its indent: {where}")
                elif not following.startswith(" "):
                    # argument-parser fills lines to 79 columns.
                    self.assertGreaterEqual(len(line) + 1 + len(following.split()[0]), 80, f"broken before the line is full: {where}")

    def test_check_help_lists_every_exit_code_on_its_own_line(self):
        text = run("check", "--help").stdout
        for code in "0123":
            self.assertRegex(text, rf"\n  {code}  \S")

    def test_shell_completion_scripts(self):
        for shell, marker in (("bash", "complete"), ("zsh", "#compdef mtls-proxy"), ("fish", "complete -c 'mtls-proxy'")):
            r = run("--generate-completion-script", shell)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(marker, r.stdout)
            self.assertIn("csr", r.stdout)

    def test_the_man_page_is_generated_from_the_current_help(self):
        page = harness.read(os.path.join(harness.ROOT, "docs", "mtls-proxy.1"))
        dump = json.loads(run("--experimental-dump-help").stdout)

        def walk(command, path):
            yield path, command
            for sub in command.get("subcommands", []):
                yield from walk(sub, path + [sub["commandName"]])

        for path, command in walk(dump["command"], []):
            if path:
                self.assertIn(path[-1], page, f"subcommand {' '.join(path)} not in docs/mtls-proxy.1")
            for argument in command.get("arguments", []):
                for name in argument.get("names", []):
                    if name["kind"] == "long" and name["name"] not in ("help", "version", "experimental-dump-help"):
                        self.assertIn(name["name"], page, f"--{name['name']} of {' '.join(path) or 'mtls-proxy'} not in the man page")
        if shutil.which("man"):
            r = subprocess.run(["man", "-l", "-P", "cat", os.path.join(harness.ROOT, "docs", "mtls-proxy.1")],
                               capture_output=True, text=True, env=dict(harness.clean_env(), MANWIDTH="80"))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("mtls-proxy", r.stdout)


class Calendar(unittest.TestCase):
    def test_ics_has_an_expiry_and_a_takeover_event_with_two_alarms_each_unless_superseded(self):
        try:
            import icalendar
        except ImportError:
            self.skipTest("the icalendar package is not installed (scripts/lib/deps.sh installs it)")
        staged = dated_cert("ics-staged", "fusion-us", utc_in(20 * DAY), utc_in(420 * DAY))
        config = write("ics.conf", BASE + f'[[identities.us.certificates]]\ncert = "{staged[0]}"\nkey = "{staged[1]}"\n'
                       + '[identities.eu]\ncert = "pki/fusion-eu.pem"\nkey = "pki/fusion-eu.key"\n')
        path = f"{ENV['dir']}/expiry.ics"
        with open(path, "wb") as f:  # mtls-proxy certs --ics > expiry.ics
            r = subprocess.run([harness.proxy_binary(), "certs", "--config", config, "--ics"], stdout=f,
                               stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(path, "rb") as f:
            raw = f.read()
        # RFC 5545: CRLF line ends, content lines of at most 75 octets.
        self.assertTrue(raw.endswith(b"END:VCALENDAR\r\n"))
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))
        self.assertTrue(all(len(line) <= 75 for line in raw.split(b"\r\n")))
        calendar = icalendar.Calendar.from_ical(raw)
        self.assertEqual(str(calendar["VERSION"]), "2.0")
        events = list(calendar.walk("VEVENT"))
        # us: current expiry, staged expiry, staged takeover; eu: expiry.
        self.assertEqual(len(events), 4, [str(e["SUMMARY"]) for e in events])
        pki = f"{ENV['dir']}/pki"
        expected = {
            ("us", openssl_serial(f"{pki}/fusion-us.pem"), "expires"),
            ("us", openssl_serial(f"{ENV['dir']}/{staged[0]}"), "expires"),
            ("us", openssl_serial(f"{ENV['dir']}/{staged[0]}"), "switches"),
            ("eu", openssl_serial(f"{pki}/fusion-eu.pem"), "expires"),
        }
        seen = set()
        uids = set()
        for event in events:
            summary = str(event["SUMMARY"])
            m = re.match(r"mtls-proxy: identity (\w+) .*(expires|switches).*\((CN=fusion-\w+,O=mtls-proxy test), serial ([0-9A-F]+)\)$", summary)
            self.assertIsNotNone(m, summary)
            seen.add((m.group(1), m.group(4), m.group(2)))
            uids.add(str(event["UID"]))
            alarms = sorted(alarm.decoded("TRIGGER").days for alarm in event.walk("VALARM"))
            # The current us certificate is superseded by the staged one before it expires: no reminders. The
            # takeover is 20 days ahead: its 30-day reminder would be past, so only the 7-day one is there.
            superseded = m.group(1) == "us" and m.group(2) == "expires" and m.group(4) == openssl_serial(f"{ENV['dir']}/pki/fusion-us.pem")
            self.assertEqual(alarms, [] if superseded else [-7] if m.group(2) == "switches" else [-30, -7], summary)
            for alarm in event.walk("VALARM"):
                self.assertEqual(str(alarm["ACTION"]), "DISPLAY")
        self.assertEqual(seen, expected)
        self.assertEqual(len(uids), 4)
        # The expiry event is at the certificate's notAfter; the takeover at the staged one's notBefore.
        not_after = subprocess.run(["openssl", "x509", "-in", f"{pki}/fusion-eu.pem", "-noout", "-enddate", "-dateopt", "iso_8601"],
                                   capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        eu = [e for e in events if "identity eu" in str(e["SUMMARY"])][0]
        self.assertEqual(eu.decoded("DTSTART").strftime("%Y-%m-%d %H:%M:%SZ"), not_after)
        takeover = [e for e in events if "switches" in str(e["SUMMARY"])][0]
        not_before = subprocess.run(["openssl", "x509", "-in", f"{ENV['dir']}/{staged[0]}", "-noout", "-startdate", "-dateopt", "iso_8601"],
                                    capture_output=True, text=True).stdout.strip().split("=", 1)[1]
        self.assertEqual(takeover.decoded("DTSTART").strftime("%Y-%m-%d %H:%M:%SZ"), not_before)
        # The same certificates give the same UIDs: importing again updates instead of duplicating.
        again = icalendar.Calendar.from_ical(run("certs", "--config", config, "--ics").stdout.encode())
        self.assertEqual({str(e["UID"]) for e in again.walk("VEVENT")}, uids)


    def test_a_certificate_expiring_in_5_days_keeps_its_event_without_reminders_in_the_past(self):
        try:
            import icalendar
        except ImportError:
            self.skipTest("the icalendar package is not installed (scripts/lib/deps.sh installs it)")
        # Reminders are 30 and 7 days before: both would lie in the past for a certificate 5 days from expiry.
        soon = dated_cert("ics-soon", "fusion-soon", utc_in(-300 * DAY), utc_in(5 * DAY))
        config = write("ics-soon.conf", BASE.replace('cert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"',
                                                     f'cert = "{soon[0]}"\nkey = "{soon[1]}"'))
        r = run("certs", "--config", config, "--ics")
        self.assertEqual(r.returncode, 0, r.stderr)
        events = list(icalendar.Calendar.from_ical(r.stdout.encode()).walk("VEVENT"))
        self.assertEqual(len(events), 1, r.stdout)
        self.assertIn("fusion-soon", str(events[0]["SUMMARY"]))
        self.assertEqual(list(events[0].walk("VALARM")), [], r.stdout)
        self.assertNotIn("TRIGGER", r.stdout)

    def test_a_certificate_superseded_before_it_expires_has_no_alarm_and_says_by_which(self):
        try:
            import icalendar
        except ImportError:
            self.skipTest("the icalendar package is not installed (scripts/lib/deps.sh installs it)")
        staged = dated_cert("ics-next", "fusion-us", utc_in(20 * DAY), utc_in(420 * DAY))
        config = write("ics-superseded.conf", BASE + f'[[identities.us.certificates]]\ncert = "{staged[0]}"\nkey = "{staged[1]}"\n')
        events = list(icalendar.Calendar.from_ical(run("certs", "--config", config, "--ics").stdout.encode()).walk("VEVENT"))
        current, new = openssl_serial(f"{ENV['dir']}/pki/fusion-us.pem"), openssl_serial(f"{ENV['dir']}/{staged[0]}")
        takeover_day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 20 * DAY))
        [replaced] = [e for e in events if str(e["UID"]).startswith("expiry-") and f"serial {current})" in str(e["SUMMARY"])]
        self.assertIn(f"superseded on {takeover_day} by serial {new}", str(replaced["SUMMARY"]))
        self.assertEqual(list(replaced.walk("VALARM")), [])
        # The staged certificate's own expiry and its takeover keep their reminders (the takeover, 20 days ahead,
        # only the 7-day one: the 30-day one would be past).
        for event in events:
            if event is not replaced:
                expected = [-7] if str(event["UID"]).startswith("takeover-") else [-30, -7]
                self.assertEqual(sorted(a.decoded("TRIGGER").days for a in event.walk("VALARM")), expected, str(event["SUMMARY"]))
        # With prefer = "oldest" the current one stays until it expires: its expiry keeps its alarms.
        oldest = write("ics-oldest.conf", harness.read(config).replace('[identities.us]', '[identities.us]\nprefer = "oldest"'))
        events = list(icalendar.Calendar.from_ical(run("certs", "--config", oldest, "--ics").stdout.encode()).walk("VEVENT"))
        [expiry] = [e for e in events if str(e["UID"]).startswith("expiry-") and f"serial {current})" in str(e["SUMMARY"])]
        self.assertNotIn("superseded", str(expiry["SUMMARY"]))
        self.assertEqual(len(list(expiry.walk("VALARM"))), 2)


class StagedCertificates(unittest.TestCase):
    """Uploading next year's certificate: --pem --staged and --serial print exactly the one(s) asked for, and
    `certs --all` says each certificate's state."""

    @classmethod
    def setUpClass(cls):
        cls.old = dated_cert("st-old", "fusion-us", utc_in(-400 * DAY), utc_in(-DAY))
        cls.earlier = dated_cert("st-earlier", "fusion-us", utc_in(-100 * DAY), utc_in(200 * DAY))
        cls.staged = dated_cert("st-staged", "fusion-us", utc_in(5 * DAY), utc_in(400 * DAY))
        cls.config = write("staged.conf", BASE.replace('cert = "pki/fusion-us.pem"\nkey = "pki/fusion-us.key"\n', "")
                           + "".join(f'[[identities.us.certificates]]\ncert = "{c}"\nkey = "{k}"\n'
                                     for c, k in [("pki/fusion-us.pem", "pki/fusion-us.key"), cls.old, cls.earlier, cls.staged]))

    def pem_of(self, relative):
        return harness.read(f"{ENV['dir']}/{relative}")

    def test_pem_staged_is_exactly_the_staged_certificate(self):
        r = run("certs", "us", "--pem", "--staged", "--config", self.config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, self.pem_of(self.staged[0]))

    def test_pem_serial_is_exactly_that_certificate_in_any_spelling(self):
        serial = openssl_serial(f"{ENV['dir']}/{self.staged[0]}")
        colons = ":".join(serial[i:i + 2] for i in range(0, len(serial), 2)).lower()
        for spelling in (serial, serial.lower(), colons):
            r = run("certs", "us", "--pem", "--serial", spelling, "--config", self.config)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, self.pem_of(self.staged[0]), spelling)
        # Without an identity, every identity is searched; a certificate two identities share is printed once.
        shared = write("serial-shared.conf", harness.read(self.config) + f'[identities.twin]\ncert = "{self.staged[0]}"\nkey = "{self.staged[1]}"\n')
        r = run("certs", "--pem", "--serial", colons, "--config", shared)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, self.pem_of(self.staged[0]))
        r = run("certs", "us", "--pem", "--serial", "ABCDEF", "--config", self.config)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no certificate of identity us has serial ABCDEF", r.stderr)
        self.assertIn(serial, r.stderr)
        self.assertEqual(r.stdout, "")

    def test_staged_when_nothing_is_staged_is_an_error(self):
        r = run("certs", "us", "--pem", "--staged", "--config", write("nothing-staged.conf", BASE))
        self.assertEqual(r.returncode, 1)
        self.assertIn("identity us has no staged certificate", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_staged_over_every_identity_leaves_out_those_without_one(self):
        config = write("staged-two.conf", harness.read(self.config) + '[identities.eu]\ncert = "pki/fusion-eu.pem"\nkey = "pki/fusion-eu.key"\n')
        r = run("certs", "--staged", "--config", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("identity us", r.stdout)
        self.assertNotIn("identity eu", r.stdout)
        self.assertIn(openssl_serial(f"{ENV['dir']}/{self.staged[0]}"), r.stdout)
        self.assertEqual(run("certs", "--staged", "--config", write("staged-none.conf", BASE)).returncode, 1)
        r = run("certs", "us", "--all", "--staged", "--config", config)
        self.assertEqual(r.returncode, 64)
        self.assertIn("--all, --staged and --serial are alternatives", r.stderr)
        r = run("certs", "us", "--serial", "not-hex", "--config", config)
        self.assertEqual(r.returncode, 64)
        self.assertIn("--serial takes a serial number in hex", r.stderr)

    def test_all_shows_each_state(self):
        r = run("certs", "us", "--all", "--config", self.config)
        self.assertEqual(r.returncode, 0, r.stderr)
        takeover = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 5 * DAY))
        self.assertRegex(r.stdout, r"#1 active ")
        self.assertRegex(r.stdout, r"#2 expired ")
        self.assertRegex(r.stdout, r"#3 superseded ")
        self.assertRegex(r.stdout, rf"#4 staged, takes over {takeover} \d\d:\d\d UTC ")


class Renewal(unittest.TestCase):
    def csr(self, config, out, *extra):
        return run("csr", "us", "--config", config, "--out", out, *extra)

    def test_ec_key_and_csr_with_the_active_subject_verified_by_openssl(self):
        config = write("renew-ec.conf", BASE)
        out = f"{ENV['dir']}/renew-ec"
        r = self.csr(config, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        [key] = [f for f in os.listdir(out) if f.endswith(".key")]
        [csr] = [f for f in os.listdir(out) if f.endswith(".csr")]
        key, csr = f"{out}/{key}", f"{out}/{csr}"
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertIn(key, r.stdout)
        self.assertIn(csr, r.stdout)
        verify = subprocess.run(["openssl", "req", "-verify", "-in", csr, "-noout", "-subject"], capture_output=True, text=True)
        self.assertEqual(verify.returncode, 0, verify.stderr)
        self.assertIn("verify OK", verify.stdout + verify.stderr)
        active_subject = subprocess.run(["openssl", "x509", "-in", f"{ENV['dir']}/pki/fusion-us.pem", "-noout", "-subject"],
                                        capture_output=True, text=True).stdout.strip()
        self.assertEqual(verify.stdout.strip(), active_subject)
        text = subprocess.run(["openssl", "pkey", "-in", key, "-noout", "-text"], capture_output=True, text=True).stdout
        self.assertIn("prime256v1", text)
        # The CSR's public key is the key's.
        pub_csr = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-pubkey"], capture_output=True, text=True).stdout
        pub_key = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], capture_output=True, text=True).stdout
        self.assertEqual(pub_csr, pub_key)

        # Never overwrites: a second run fails and leaves both files as they were.
        before = harness.read(key), harness.read(csr)
        again = self.csr(config, out)
        self.assertEqual(again.returncode, 1)
        self.assertIn("never overwritten", again.stderr)
        self.assertEqual((harness.read(key), harness.read(csr)), before)

    def test_rsa_sizes(self):
        config = write("renew-rsa.conf", BASE)
        out = f"{ENV['dir']}/renew-rsa"
        r = self.csr(config, out, "--rsa", "3072")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("RSA 3072", r.stdout)
        [csr] = [f"{out}/{f}" for f in os.listdir(out) if f.endswith(".csr")]
        text = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-text", "-verify"], capture_output=True, text=True)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("(3072 bit)", text.stdout)
        bad = self.csr(config, f"{ENV['dir']}/renew-rsa-bad", "--rsa", "1024")
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("2048 or 3072", bad.stderr)
        self.assertFalse(os.path.exists(f"{ENV['dir']}/renew-rsa-bad"))

    def test_signed_by_the_ca_and_staged_with_the_printed_lines(self):
        config = write("renew-stage.conf", BASE)
        out = f"{ENV['dir']}/renew-stage"
        r = self.csr(config, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        block = re.search(r"^\[\[identities\.us\.certificates\]\]\ncert = \"(.*)\"\nkey = \"(.*)\"\n", r.stdout, re.M)
        self.assertIsNotNone(block, r.stdout)
        cert_path = block.group(1)
        csr = cert_path[:-4] + ".csr"
        # The CA issues it valid from tomorrow: it is staged, and takes over then.
        sign_csr(csr, cert_path, utc_in(DAY), utc_in(400 * DAY))
        with open(config, "a") as f:
            f.write("\n" + block.group(0))
        check = run("check", "--config", config, "--format", "json")
        self.assertEqual(check.returncode, 0, check.stderr)
        certificates = json.loads(check.stdout)["identities"][0]["certificates"]
        self.assertEqual([c["state"] for c in certificates], ["active", "next"])
        self.assertEqual(certificates[1]["file"], cert_path)
        self.assertEqual(certificates[1]["takes_over_at"], certificates[1]["not_before"])
        self.assertEqual(certificates[1]["subject"], certificates[0]["subject"])
        text = run("check", "--config", config)
        self.assertRegex(text.stdout, r"us: presents #1 .*\n\s+#2 takes over at ")

    def test_issued_now_it_is_presented_to_an_upstream_that_requires_client_certificates(self):
        proxy_port, up_port = harness.free_port(), harness.free_port()
        out = f"{ENV['dir']}/renew-now"
        config = write("renew-now.conf", BASE.replace('identity = "us"', f'identity = "us"\nconnect = "127.0.0.1:{up_port}"')
                       + f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\n')
        r = self.csr(config, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        block = re.search(r"^\[\[identities\.us\.certificates\]\]\ncert = \"(.*)\"\nkey = \"(.*)\"\n", r.stdout, re.M)
        cert_path = block.group(1)
        # Issued now, after the current certificate (made a moment ago): with prefer = "newest" it is presented.
        time.sleep(1.5)
        sign_csr(cert_path[:-4] + ".csr", cert_path, utc_in(0), utc_in(400 * DAY))
        with open(config, "a") as f:
            f.write("\n" + block.group(0))
        report = json.loads(run("check", "--config", config, "--format", "json").stdout)
        self.assertEqual(report["identities"][0]["active"], 2)  # the newest valid one is presented
        fx = own(self, proxy=proxy_port, up=up_port)
        fx.python_upstream("up", ca="ca", require=True)
        fx.proxy("renew-now", port="proxy")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"}))
        with opener.open(f"http://api.mygreatbank.test:{up_port}/whoami", timeout=20) as resp:
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.headers["X-Client-Subject"], "fusion-us")
        self.assertIn(openssl_serial(cert_path), harness.read(f"{ENV['dir']}/renew-now.log"))


if __name__ == "__main__":
    harness.run_suite()
