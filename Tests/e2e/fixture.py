"""One suite's world on loopback, set up and torn down in one place: a temporary folder with a fresh PKI in
pki/, free ports by name, the upstreams (nginx with `ssl_verify_client on`, the Python TLS servers), the proxy
processes with their configs and logs, the local CA, and the loopback DNS server if asked for.

    def setUpModule():
        with Fixture("mtls-proxy-x-", ports=("proxy", "nginx_mtls", "nginx_tls")) as fx:
            fx.nginx()
            fx.proxy("proxy", proxy_section(fx.ports["proxy"]) + harness.US_IDENTITY
                     + route("api.mygreatbank.test", identity="us", connect=fx.ports["nginx_mtls"]))
        ENV.update(fx.env())

    def tearDownModule():
        tear_down(ENV)

Leaving the `with` block by an exception (a set-up that failed half-way) stops whatever had started; a test
that needs a world of its own uses `with Fixture.temporary(...) as fx:`, stopped when the block ends, and a test
that needs only a proxy (and upstreams) of its own in the suite's folder and PKI uses `ENV["fixture"].beside(self,
ports=(...))`, stopped when the test ends. `get` and `get_until` send a request through a proxy on a raw socket,
`SubjectUpstream` answers with the client certificate's subject, `concurrently` runs a burst of requests. The config
helpers (proxy_section, upstream_section, identity, certificates, route, table) write TOML the way the suites'
hand-written configs did, one `key = value` a line, so a test may still edit the text it gets."""
import contextlib, json, os, shlex, shutil, socket, subprocess, sys, threading

import harness

try:
    import h2  # noqa: F401 (only whether h2server.py and h2hostile.py can run)
    HAVE_H2 = True
except ImportError:
    HAVE_H2 = False
# Why an HTTP/2 suite skips when HAVE_H2 is false.
NO_H2 = "python h2 library not installed (scripts/lib/deps.sh ensure_h2_deps)"

# The [intercept] table of a proxy that intercepts CONNECT with a local CA kept in state/ beside its config
# (`Fixture.local_ca` makes that CA).
INTERCEPT = '[intercept]\nca_cert = "state/local-ca.pem"\nca_key = "state/local-ca.key"\n'


def toml_value(value):
    """A Python value as a TOML value: booleans, integers, strings quoted (with TOML's escapes), and lists of
    those as arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def table(header, **keys):
    """`[header]` (or `[[route]]` and the like, as given) and one `key = value` line per keyword, in order."""
    return header + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())


def loopback(port):
    """The loopback address with `port`, as `connect` and `listen` take it."""
    return f"127.0.0.1:{port}"


def proxy_section(port, workers=1, admin=None, intercept=False, **settings):
    """The [proxy] table listening on loopback `port` with `workers` (None: the proxy's default) and any other
    `settings`; then, if asked, [admin] on loopback `admin` and the [intercept] table for the local CA in state/."""
    if workers is not None:
        settings = dict(workers=workers, **settings)
    text = table("[proxy]", listen=loopback(port), **settings)
    if admin is not None:
        text += table("[admin]", listen=loopback(admin))
    return text + (INTERCEPT if intercept else "")


def json_log_proxy(port, admin, **settings):
    """The head of a config whose proxy answers the test on loopback `port` (one worker, and `settings`), has its
    admin listener on loopback `admin`, logs JSON lines and has the identity "us" (harness.US_IDENTITY)."""
    return proxy_section(port, admin=admin, **settings) + table("[log]", format="json") + harness.US_IDENTITY


def route(host, **keys):
    """One [[route]] for `host`; `connect` may be given as a port (dialled on loopback)."""
    if isinstance(keys.get("connect"), int):
        keys["connect"] = loopback(keys["connect"])
    return table("[[route]]", host=host, **keys)


def identity(name, files):
    """[identities.NAME] with the certificate and key `files`.pem and `files`.key (e.g. "pki/fusion-eu")."""
    return table(f"[identities.{name}]", cert=f"{files}.pem", key=f"{files}.key")


def certificates(name, *files):
    """Identity NAME with several certificates, one [[identities.NAME.certificates]] entry per stem in `files`
    (as identity() takes them), in that order."""
    return "".join(table(f"[[identities.{name}.certificates]]", cert=f"{stem}.pem", key=f"{stem}.key") for stem in files)


# Identities "us" (fusion-us) and "eu" (fusion-eu) from the PKI in pki/; US_KEYS is harness.US_IDENTITY without
# its [upstream] table.
US_KEYS = identity("us", "pki/fusion-us")
EU_KEYS = identity("eu", "pki/fusion-eu")


def upstream_section(ca_file="pki/ca.pem", **settings):
    """[upstream] trusting the test CA (pki/ca.pem, or `ca_file`; None: the system's trust store), with `settings`."""
    if ca_file is not None:
        settings = dict(ca_file=ca_file, **settings)
    return table("[upstream]", **settings)


def with_upstream(prefix):
    """The set-up of a suite whose tests start proxies of their own: a fixture with upstream.py (client
    certificates of the test CA required) on port "up"; returns what the suite keeps in ENV (`up`: the port)."""
    with Fixture(prefix, ports=("up",)) as fixture:
        fixture.python_upstream("up", ca="ca", require=True)
    return fixture.env(up=fixture.ports["up"])


class RequestUpstream(harness.TLSUpstream):
    """An in-process TLS upstream that requires a client certificate of the test CA and answers request after
    request on each connection: `answer(conn, head, path, rest)` gets a request's head, its path, and the bytes
    read after the head (the start of a body, or of the next request); it writes the response and returns the
    bytes to read the next request from, or None to end the connection."""

    def serve(self, conn):
        rest = b""
        while rest is not None:
            head, rest = harness.read_head(conn, rest)
            if head is None:
                return
            rest = self.answer(conn, head, head.split(b" ")[1].decode(), rest)

    def answer(self, conn, head, path, rest):
        raise NotImplementedError


class SubjectUpstream(harness.TLSUpstream):
    """An in-process TLS upstream that requires a client certificate of the test CA and answers every request
    with the TLS version and that certificate's subject ("TLSv1.3 organizationName=...,commonName=..."), so a
    test sees which key signed and over which version. `minimum` and `maximum` (ssl.TLSVersion) bound the versions
    it speaks; it issues no session tickets, so every handshake is a full one (a token or TPM key signs each)."""

    def __init__(self, pki, minimum=None, maximum=None):
        super().__init__(pki)
        if minimum is not None:
            self.ctx.minimum_version = minimum
        if maximum is not None:
            self.ctx.maximum_version = maximum
        self.ctx.num_tickets = 0

    def serve(self, conn):
        while True:
            head, _ = harness.read_head(conn)
            if head is None:
                return
            subject = ",".join(f"{k}={v}" for rdn in conn.getpeercert()["subject"] for k, v in rdn)
            respond(conn, f"{conn.version()} {subject}".encode())


def get(port, authority, path="/", close=True, session=None, timeout=15, headers=""):
    """GET http://AUTHORITY/PATH through the proxy on loopback `port`, on a raw socket (`session`: an open one,
    left open), `Connection: close` unless `close` is false; `headers` are extra header lines, each ending in
    CRLF. Returns (status, headers with lower-case names, body as latin-1 text) of a Content-Length response."""
    s = session or socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        connection = "Connection: close\r\n" if close else ""
        s.sendall(f"GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n{connection}{headers}\r\n".encode())
        head, body = harness.read_response(s)
    finally:
        if session is None:
            s.close()
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body.decode("latin-1")


def concurrently(work, args):
    """`work(arg)` for each of `args`, each on a thread of its own, all at once; their results in the order of
    `args` (an exception raised stands as its repr)."""
    results = [None] * len(args)

    def one(i, arg):
        try:
            results[i] = work(arg)
        except Exception as e:  # noqa: BLE001 (the caller asserts on the results)
            results[i] = repr(e)
    threads = [threading.Thread(target=one, args=(i, arg)) for i, arg in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def get_until(test, port, authority, predicate, timeout=8, step=0.2, path="/"):
    """GETs through the proxy on `port` until `predicate(status, proxy_status)` holds (a first answer may come
    while a CRL or a token is still on its way), failing `test` after `timeout`; returns [status, proxy_status]."""
    last = []

    def attempt():
        status, headers, _ = get(port, authority, path)
        last[:] = [status, headers.get("proxy-status", "")]
        return predicate(*last)
    test.assertTrue(harness.wait_until(attempt, timeout, step), f"{authority}: last answer {last}")
    return last


def respond(conn, body, status=b"200 OK", headers=b""):
    """Writes a response with a Content-Length body; `headers` are extra header lines, each ending in CRLF."""
    conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body)


def echo(conn):
    """Sends back whatever the peer sends until it closes (the far end of an upgraded connection)."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def start_tls_script(procs, pki, script, port, *args, log=None, cert="server", ca="ca", **popen):
    """One of the small TLS servers of this folder (h2server.py, h2hostile.py, ws_echo.py ...) on loopback `port`,
    with pki/`cert` and client certificates checked against pki/`ca`, and `args` after those; its output to
    nowhere, or its stderr to the file `log` (`popen` may say otherwise). Waits until it listens; returns it."""
    if log is not None:
        popen.setdefault("stderr", open(log, "w"))
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    process = procs.start([sys.executable, os.path.join(harness.HERE, script), "--port", str(port),
                           "--cert", f"{pki}/{cert}.pem", "--key", f"{pki}/{cert}.key", "--ca", f"{pki}/{ca}.pem", *args],
                          **popen)
    harness.wait_for_port(port)
    return process


def stop_processes(env):
    """tearDownModule's one line for a suite that keeps its harness.Processes in ENV["procs"] (nothing if its
    set-up never got that far)."""
    if "procs" in env:
        env["procs"].stop_all()


def proxy_session(url):
    """A requests session that sends everything through the proxy at `url` (plain http://), ignoring the
    environment's proxy variables."""
    import requests
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": url}
    return s


class ProxyStaysUp:
    """A mixin for a unittest.TestCase whose class attribute `env` is the suite's ENV (with "proxy", the process
    its set-up started, or nothing when it did not start one): skips without the h2 library, fails a test that
    starts without the proxy running or ends with it gone (a crash)."""
    env = {}

    def setUp(self):
        if not HAVE_H2:
            self.skipTest(NO_H2)
        self.assertIsNotNone(self.env.get("proxy"), "the proxy is not running")
        self.assertIsNone(self.env["proxy"].poll(), "the proxy is not running")

    def tearDown(self):
        if HAVE_H2 and self.env.get("proxy") is not None:
            self.assertIsNone(self.env["proxy"].poll(), "the proxy exited (crash?)")


def tear_down(env, remove=False):
    """tearDownModule's one line: stops and closes what the suite's fixture started (nothing if it never did);
    with `remove`, deletes its folder too (for suites that leave large files behind)."""
    fixture = env.get("fixture")
    if fixture is not None:
        fixture.close(remove=remove)


class Fixture:
    def __init__(self, prefix=None, ports=(), dns=False, folder=None):
        """A new folder named after `prefix` with a fresh PKI, or the existing `folder` (and its PKI) as it is."""
        self.dir = folder or harness.folder_with_pki(prefix)
        self.pki = f"{self.dir}/pki"
        self.procs = harness.Processes()
        self.ports = {name: harness.free_port() for name in ports}
        self.servers = []  # in-process servers (harness.ThreadedServer and its kind), closed by close()
        self.dns = None
        if dns:
            self.dns = harness.LoopbackDNS()
            self.servers.append(self.dns)

    @classmethod
    @contextlib.contextmanager
    def temporary(cls, prefix, **options):
        """A fixture for one test: `with Fixture.temporary(...) as fx:` stops what it started when the block ends,
        however it ends (where `with Fixture(...)` in a module's set-up stops it only if the set-up fails)."""
        fixture = cls(prefix, **options)
        try:
            yield fixture
        finally:
            fixture.close()

    def beside(self, test=None, ports=()):
        """A fixture in this one's folder, with its PKI, and with processes, servers and free ports (`ports`) of its
        own: a proxy and upstreams one test starts for itself. With `test` (a unittest.TestCase) it is stopped when
        that test ends, however it ends; else by its close()."""
        other = Fixture(folder=self.dir, ports=ports)
        if test is not None:
            test.addCleanup(other.close)
        return other

    def __enter__(self):
        return self

    def __exit__(self, failure, *_):
        if failure is not None:
            self.close()
        return False

    def close(self, remove=False):
        self.procs.stop_all()
        for server in self.servers:
            close = getattr(server, "close", None)
            if close is not None:
                close()
            else:
                server.sock.close()
        self.servers.clear()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, **extra):
        """What suites keep in ENV: dir, pki, procs, ports, dns (if any) and the fixture itself, and `extra`."""
        env = dict(fixture=self, dir=self.dir, pki=self.pki, procs=self.procs, ports=self.ports)
        if self.dns is not None:
            env["dns"] = self.dns
        env.update(extra)
        return env

    def path(self, name):
        return f"{self.dir}/{name}"

    def write(self, name, text, mode=None):
        """Writes `text` to `name` in the fixture's folder; returns its path."""
        return harness.write_file(self.path(name), text, mode)

    def dated_certificates(self, *certificates):
        """More certificates from the test CA in pki/, each (name, CN, starts_in, ends_in[, kind]): pki/NAME.pem
        and pki/NAME.key, valid from `starts_in` to `ends_in` seconds from now (negative: in the past), for a
        client (the default) or, with kind "server", for a server named CN."""
        harness.pki_shell(*(f"pki_cert_dated {shlex.quote(self.pki)} {name} {shlex.quote(cn)} $(utc_in {int(start)}) "
                            f"$(utc_in {int(end)}) {kind[0] if kind else 'client'}"
                            for name, cn, start, end, *kind in certificates))

    # Upstreams

    def nginx(self, mtls="nginx_mtls", tls="nginx_tls", mtls_locations=None):
        """nginx with the test PKI: on port `mtls` a service that requires a client certificate of the test CA
        (`ssl_verify_client on`), on port `tls` one that does not; `mtls_locations` replaces the first's
        default location (which answers "hello <client subject>")."""
        harness.start_nginx(self.procs, self.dir, self.pki, self.ports[mtls], self.ports[tls], mtls_locations=mtls_locations)

    def python_upstream(self, name, **options):
        """upstream.py (harness.start_python_upstream's options) on port `name`."""
        harness.start_python_upstream(self.procs, self.pki, self.ports[name], **options)

    def recorder(self, name, log, **options):
        """recorder.py on port `name`, each request it receives a JSON line in `log` (in the fixture's folder)."""
        harness.start_recorder(self.procs, self.pki, self.ports[name], self.path(log), **options)

    def tls_script(self, script, name, *args, cert="server", ca="ca", log=None, **popen):
        """One of the small TLS servers of this folder (ws_echo.py, faulty.py, client_upstream.py ...) on port
        `name`, with the certificate `cert` and client certificates checked against `ca`; waits until it listens.
        Its output goes where this process's goes, or with `log`, its stderr to that file (and stdout nowhere)."""
        if log is None:  # its output inherited, unless the caller says otherwise
            popen.setdefault("stdout", None)
            popen.setdefault("stderr", None)
        start_tls_script(self.procs, self.pki, script, self.ports[name], *args, log=log, cert=cert, ca=ca, **popen)

    def server(self, server):
        """An in-process server (a harness.ThreadedServer or TLSUpstream), closed with the fixture; returns it."""
        self.servers.append(server)
        return server

    # The proxy

    def local_ca(self, config, export=None):
        """`ca init` for the config `config` (its [intercept] keeps the CA in state/); with `export`, the CA's
        certificate as `ca --pem` prints it is written to that file too. Returns the certificate's path."""
        harness.init_local_ca(self.dir, self.path(config))
        if export is None:
            return self.path("state/local-ca.pem")
        pem = subprocess.run([harness.proxy_binary(), "ca", "--pem", "--config", self.path(config)],
                             capture_output=True, text=True, check=True).stdout
        return self.write(export, pem)

    def proxy(self, name, config=None, port=None, wait=(), env=None):
        """Starts `mtls-proxy run` with `name`.conf (written from `config` if given), its output in `name`.log,
        and waits until it listens on port `port` (default: the port called `name`) and on the ports `wait`
        names (an admin or sidecar listener); `env`: variables added to its environment. Returns the process."""
        if config is not None:
            self.write(f"{name}.conf", config)
        process = harness.start_proxy(self.procs, self.path(f"{name}.conf"), self.path(f"{name}.log"),
                                      self.ports[port or name], env=env)
        for other in wait:
            harness.wait_for_port(self.ports[other])
        return process
