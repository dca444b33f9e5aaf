#!/usr/bin/env python3
"""The release artifacts of scripts/package, as a user gets them: the Debian package checked by lintian, installed
with apt-get, its binary run (--version, check, a request to nginx demanding a client certificate, through the
installed config adapted here, started with the installed unit's own command lines as its DynamicUser with the
mtls-proxy group), its unit verified by systemd-analyze, then removed and purged as Debian expects (the edited
conffile kept on remove, everything gone on purge, the admin's keys never deleted); and the release tarball,
whose checksums verify and whose binary is the package's.

scripts/test builds the artifacts while the other suites run and passes their folder in MTLS_PROXY_DIST (it
holds the SHA256SUMS that scripts/package writes); without it this suite runs scripts/package itself (a release
build, a few minutes). Installing a package needs root and apt-get: otherwise the suite skips, by name."""
import gzip, hashlib, os, re, shutil, subprocess, sys, tarfile, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from systemd_unit import start_as_the_unit_would, unit_settings  # noqa: E402

ENV = {}
UNIT = "/usr/lib/systemd/system/mtls-proxy.service"
CONF = "/etc/mtls-proxy/proxy.conf"
CERTS = "/etc/mtls-proxy/certs"
NOBODY = 65534


def sh(*args, check=True, timeout=300, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def apt_get(*args):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return sh("apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q", *args, env=env)


def dpkg_status():
    r = sh("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "mtls-proxy", check=False)
    return r.stdout.strip() if r.returncode == 0 else "not known to dpkg"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def setUpModule():
    dist = os.environ.get("MTLS_PROXY_DIST")
    if not dist:
        sh("bash", os.path.join(harness.ROOT, "scripts", "package"), timeout=1800)
        dist = os.path.join(harness.ROOT, "dist")
    sums = harness.read(os.path.join(dist, "SHA256SUMS")).split()
    names = sums[1::2]
    [deb] = [n for n in names if n.endswith(".deb")]
    [tarball] = [n for n in names if n.endswith(".tar.gz")]
    ENV.update(dist=dist, deb=os.path.join(dist, deb), tarball=os.path.join(dist, tarball),
               work=tempfile.mkdtemp(prefix="mtls-proxy-package-"))


def tearDownModule():
    if ENV.get("installed_here") and dpkg_status() != "not known to dpkg":
        apt_get("purge", "mtls-proxy")
    if ENV.get("work"):
        shutil.rmtree(ENV["work"], ignore_errors=True)


class DebianPackage(unittest.TestCase):
    """One install, use, remove and purge, in order (the tests are numbered for that)."""

    def setUp(self):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            self.skipTest("installing a package needs root and apt-get")

    def test_1_lintian_is_clean_and_every_override_says_why(self):
        lintian = shutil.which("lintian")
        if not lintian:
            self.skipTest("lintian is not installed (Debian package lintian)")
        r = sh(lintian, "--fail-on", "error,warning,info", "--display-info", ENV["deb"], check=False, timeout=600)
        tags = [line for line in r.stdout.splitlines() if re.match(r"^[EWIXP]: ", line)]
        self.assertEqual(tags, [], r.stdout)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Each override has its reason: a comment right above it.
        lines = harness.read(os.path.join(harness.ROOT, "deploy", "debian", "lintian-overrides")).splitlines()
        overrides = [i for i, line in enumerate(lines) if line.startswith("mtls-proxy: ")]
        self.assertTrue(overrides)
        for i in overrides:
            self.assertTrue(lines[i - 1].startswith("# ") and len(lines[i - 1]) > 20, f"no reason above: {lines[i]}")
        # And lintian does complain about what the package avoids: a package with the hashbang in its completion.
        broken = os.path.join(ENV["work"], "broken")
        sh("dpkg-deb", "-R", ENV["deb"], broken)
        shutil.copy("/bin/true", f"{broken}/usr/bin/mtls-proxy")  # a small binary: lintian is quicker on it
        with open(f"{broken}/usr/share/bash-completion/completions/mtls-proxy", "r+") as f:
            text = f.read()
            f.seek(0)
            f.write("#!/bin/bash\n" + text)
        sh("dpkg-deb", "--root-owner-group", "-b", broken, f"{ENV['work']}/broken.deb")
        r = sh(lintian, "--fail-on", "error,warning", f"{ENV['work']}/broken.deb", check=False, timeout=600)
        self.assertIn("bash-completion-with-hashbang", r.stdout)
        self.assertIn("md5sum-mismatch", r.stdout)  # the md5sums file is checked too
        self.assertNotEqual(r.returncode, 0)

    def test_2_control_depends_on_the_libraries_it_links_not_on_swift(self):
        control = sh("dpkg-deb", "-f", ENV["deb"]).stdout
        depends = re.search(r"(?m)^Depends: (.*)$", control).group(1)
        for name in ("libevent-2.1-7", "libevent-openssl-2.1-7", "libssl3", "libc6", "adduser"):
            self.assertRegex(depends, rf"(^|, ){re.escape(name)}( \(|,|$)", depends)
        self.assertNotIn("swift", depends.lower())
        # Keys on PKCS#11 tokens go through OpenSSL's pkcs11 engine, which only configs naming such a key need.
        self.assertEqual(sh("dpkg-deb", "-f", ENV["deb"], "Suggests").stdout.strip(), "libengine-pkcs11-openssl")
        self.assertEqual(sh("dpkg-deb", "-f", ENV["deb"], "Package").stdout.strip(), "mtls-proxy")
        files = sh("dpkg-deb", "-c", ENV["deb"]).stdout
        for path in ("./usr/bin/mtls-proxy", "./usr/share/man/man1/mtls-proxy.1.gz", "." + UNIT, "." + CONF,
                     "./usr/share/doc/mtls-proxy/copyright", "./usr/share/doc/mtls-proxy/changelog.gz",
                     "./usr/share/doc/mtls-proxy/changelog.Debian.gz",
                     "./usr/share/doc/mtls-proxy/examples/proxy.conf.example",
                     "./usr/share/bash-completion/completions/mtls-proxy",
                     "./usr/share/zsh/vendor-completions/_mtls-proxy",
                     "./usr/share/fish/vendor_completions.d/mtls-proxy.fish"):
            self.assertRegex(files, rf"(?m) {re.escape(path)}$", path)
        control_dir = os.path.join(ENV["work"], "control")
        sh("dpkg-deb", "-e", ENV["deb"], control_dir)
        self.assertEqual(harness.read(f"{control_dir}/conffiles").split(), [CONF])
        # The version and commit are in the file name, as `--version` will print them.
        self.assertRegex(os.path.basename(ENV["deb"]), r"^mtls-proxy_\d+\.\d+\.\d+(\+git\d{14}\.[0-9a-f]{7,}(\.dirty)?)?-1_[a-z0-9]+\.deb$")

    def test_3_install_with_apt_get(self):
        if dpkg_status() != "not known to dpkg":
            apt_get("purge", "mtls-proxy")  # a leftover of an earlier run on this machine
        ENV["installed_here"] = True
        apt_get("install", "--no-install-recommends", os.path.abspath(ENV["deb"]))
        self.assertEqual(dpkg_status(), "ii")
        version = sh("/usr/bin/mtls-proxy", "--version").stdout
        m = re.match(r"mtls-proxy (\d+\.\d+\.\d+) \(commit ([0-9a-f]+)", version)
        self.assertTrue(m, version)
        self.assertIn(m.group(1), os.path.basename(ENV["deb"]))
        self.assertIn(m.group(2), os.path.basename(ENV["deb"]))
        # The Swift runtime is inside; libevent and OpenSSL come from the system.
        ldd = sh("ldd", "/usr/bin/mtls-proxy").stdout
        self.assertNotIn("libswift", ldd)
        self.assertNotIn("libFoundation", ldd)
        self.assertNotIn("not found", ldd)
        self.assertIn("libevent_openssl", ldd)
        self.assertIn("libssl.so.3", ldd)
        # The shipped config is valid as it is, and serves nothing: loopback only, every host denied.
        r = sh("/usr/bin/mtls-proxy", "check", "--config", CONF)
        self.assertIn(f"config {CONF}: OK", r.stdout)
        self.assertIn("listen 127.0.0.1:3128", r.stdout)
        self.assertRegex(r.stdout, r"route\[1\] \*: deny")
        # The group for key files, and the folder for them.
        group = sh("getent", "group", "mtls-proxy").stdout.split(":")
        self.assertLess(int(group[2]), 1000, "not a system group")
        st = os.stat(CERTS)
        self.assertEqual((oct(st.st_mode & 0o7777), st.st_uid, st.st_gid), (oct(0o750), 0, int(group[2])))
        ENV["gid"] = int(group[2])
        # The man page, and completions that the shells can load.
        with gzip.open("/usr/share/man/man1/mtls-proxy.1.gz", "rt") as f:
            self.assertIn(".Sh NAME", f.read())
        sh("bash", "-c", "source /usr/share/bash-completion/completions/mtls-proxy && complete -p mtls-proxy")

    def test_4_a_request_through_the_installed_binary_started_as_the_unit_starts_it(self):
        if "gid" not in ENV:
            self.skipTest("the package is not installed (see test_3)")
        d = os.path.join(ENV["work"], "upstream")
        os.makedirs(d)
        harness.make_pki(f"{d}/pki")
        procs = harness.Processes()
        self.addCleanup(procs.stop_all)
        ports = {k: harness.free_port() for k in ("proxy", "admin", "mtls", "tls")}
        harness.start_nginx(procs, d, f"{d}/pki", ports["mtls"], ports["tls"])
        # The keys go where the package says, as it says: 0640 root:mtls-proxy.
        for name, mode in (("ca.pem", 0o644), ("fusion-us.pem", 0o644), ("fusion-us.key", 0o640)):
            shutil.copy(f"{d}/pki/{name}", f"{CERTS}/{name}")
            os.chown(f"{CERTS}/{name}", 0, ENV["gid"])
            os.chmod(f"{CERTS}/{name}", mode)
        # The installed config, adapted as its comments say: free ports, the test CA, an identity and a route.
        text = harness.read(CONF)
        text = text.replace('listen = "127.0.0.1:3128"', f'listen = "127.0.0.1:{ports["proxy"]}"')
        text = text.replace('listen = "127.0.0.1:9901"', f'listen = "127.0.0.1:{ports["admin"]}"')
        text = text.replace('ca_file = ""', 'ca_file = "certs/ca.pem"')
        text = text.replace("[[route]]\nhost = \"*\"", f"""[identities.us]
cert = "certs/fusion-us.pem"
key = "certs/fusion-us.key"

[[route]]
host = "api.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['mtls']}"

[[route]]
host = "*\"""")
        self.assertIn("[identities.us]", text)
        with open(CONF, "w") as f:
            f.write(text)
        # As the unit runs it: an unprivileged user with the mtls-proxy group as its supplementary group
        # (DynamicUser=yes, SupplementaryGroups=mtls-proxy). The group may read the key, so no warning.
        run_as = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={ENV['gid']}"]
        r = sh(*run_as, "/usr/bin/mtls-proxy", "check", "--config", CONF)
        self.assertNotIn("readable by", r.stdout)
        settings = unit_settings(harness.read(UNIT))
        self.assertEqual([line.split()[0] for line in settings["ExecStartPre"] + settings["ExecStart"]],
                         ["/usr/bin/mtls-proxy", "/usr/bin/mtls-proxy"])
        self.assertEqual(settings["SupplementaryGroups"], ["mtls-proxy"])
        proc = start_as_the_unit_would(self, harness.read(UNIT), CONF, binary="/usr/bin/mtls-proxy", run_as=run_as,
                                       log=os.path.join(ENV["work"], "unit.log"))
        r = subprocess.run(["curl", "-sS", "-x", f"http://127.0.0.1:{ports['proxy']}", "-D", "-",
                            "http://api.mygreatbank.test/whoami"], capture_output=True, text=True, timeout=30,
                           env=harness.clean_env())
        self.assertIn("200", r.stdout.splitlines()[0] if r.stdout else "", r.stdout + r.stderr)
        self.assertIn("hello CN=fusion-us", r.stdout)  # nginx (ssl_verify_client on) saw the installed identity
        self.assertEqual(harness.http_get(ports["admin"], "/readyz")[0], 200)
        proc.terminate()
        self.assertEqual(proc.wait(timeout=30), 0)
        # A key readable by everyone is still warned about.
        os.chmod(f"{CERTS}/fusion-us.key", 0o644)
        r = sh(*run_as, "/usr/bin/mtls-proxy", "check", "--config", CONF)
        self.assertIn("readable by everyone", r.stdout)
        os.chmod(f"{CERTS}/fusion-us.key", 0o640)

    def test_5_systemd_analyze_verifies_the_installed_unit(self):
        analyze = shutil.which("systemd-analyze")
        if not analyze:
            self.skipTest("systemd-analyze is not installed (Debian package systemd)")
        if not os.path.exists(UNIT):
            self.skipTest("the package is not installed (see test_3)")
        r = sh(analyze, "verify", "--man=no", UNIT, check=False, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual([line for line in r.stderr.splitlines() if "mtls-proxy" in line], [], r.stderr)
        pre = unit_settings(harness.read(UNIT))["ExecStartPre"]
        self.assertEqual(pre, ["/usr/bin/mtls-proxy check --fail-on error --config /etc/mtls-proxy/proxy.conf"])

    def test_6_remove_keeps_the_edited_conffile_and_a_reinstall_keeps_it_too(self):
        if dpkg_status() != "ii":
            self.skipTest("the package is not installed (see test_3)")
        edited = harness.read(CONF)
        apt_get("remove", "mtls-proxy")
        self.assertEqual(dpkg_status(), "rc")  # removed, its conffiles kept
        for path in ("/usr/bin/mtls-proxy", UNIT, "/usr/share/man/man1/mtls-proxy.1.gz"):
            self.assertFalse(os.path.exists(path), path)
        self.assertEqual(harness.read(CONF), edited)
        apt_get("install", "--no-install-recommends", os.path.abspath(ENV["deb"]))
        self.assertEqual(dpkg_status(), "ii")
        self.assertEqual(harness.read(CONF), edited)  # the admin's edit, not the shipped file

    def test_7_purge_leaves_nothing_but_the_admins_keys_and_the_group(self):
        if dpkg_status() != "ii":
            self.skipTest("the package is not installed (see test_3)")
        files = [line for line in sh("dpkg-query", "-L", "mtls-proxy").stdout.splitlines()
                 if os.path.isfile(line)]
        self.assertIn("/usr/bin/mtls-proxy", files)
        # A purge with the admin's keys still in place deletes the conffile and keeps the keys.
        apt_get("purge", "mtls-proxy")
        self.assertEqual(dpkg_status(), "not known to dpkg")
        self.assertFalse(os.path.exists(CONF))
        self.assertTrue(os.path.exists(f"{CERTS}/fusion-us.key"))
        for name in os.listdir(CERTS):
            os.remove(os.path.join(CERTS, name))
        # With nothing of the admin's left, a purge leaves nothing at all.
        apt_get("install", "--no-install-recommends", os.path.abspath(ENV["deb"]))
        apt_get("purge", "mtls-proxy")
        self.assertEqual(dpkg_status(), "not known to dpkg")
        left = [path for path in files + ["/etc/mtls-proxy", CERTS, "/etc/systemd/system/mtls-proxy.service",
                                          "/var/lib/systemd/deb-systemd-helper-enabled/mtls-proxy.service.dsh-also",
                                          "/var/lib/systemd/deb-systemd-helper-masked/mtls-proxy.service"]
                if os.path.lexists(path)]
        self.assertEqual(left, [])
        # The group stays, as Debian keeps system accounts: files elsewhere may still carry its id.
        self.assertEqual(sh("getent", "group", "mtls-proxy", check=False).returncode, 0)


class Tarball(unittest.TestCase):
    def test_checksums_verify_and_the_binary_is_the_packages(self):
        dist = ENV["dist"]
        # The published checksums cover the tarball and the package.
        r = sh("sha256sum", "-c", "SHA256SUMS", cwd=dist)
        self.assertEqual(len(re.findall(r": OK$", r.stdout, re.M)), 2, r.stdout)
        name = os.path.basename(ENV["tarball"])[:-len(".tar.gz")]
        self.assertRegex(name, r"^mtls-proxy-\d+\.\d+\.\d+(\+git\d{14}\.[0-9a-f]{7,}(\.dirty)?)?-linux-[a-z0-9]+$")
        out = os.path.join(ENV["work"], "tarball")
        os.makedirs(out)
        with tarfile.open(ENV["tarball"]) as t:
            members = t.getmembers()
            self.assertTrue(all(m.name == name or m.name.startswith(name + "/") for m in members))
            self.assertTrue(all(m.uid == 0 and m.gid == 0 for m in members))
            t.extractall(out, filter="data")
        root = os.path.join(out, name)
        for path in ("bin/mtls-proxy", "share/man/man1/mtls-proxy.1", "systemd/mtls-proxy.service",
                     "proxy.conf.example", "LICENSE", "README.md", "SHA256SUMS"):
            self.assertTrue(os.path.isfile(os.path.join(root, path)), path)
        r = sh("sha256sum", "-c", "SHA256SUMS", cwd=root)
        listed = len(harness.read(os.path.join(root, "SHA256SUMS")).splitlines())
        self.assertEqual(len(re.findall(r": OK$", r.stdout, re.M)), listed)
        self.assertGreaterEqual(listed, 7)
        # A changed byte is caught.
        with open(os.path.join(root, "README.md"), "a") as f:
            f.write("\n")
        self.assertNotEqual(sh("sha256sum", "-c", "--quiet", "SHA256SUMS", cwd=root, check=False).returncode, 0)
        # The binary runs, and is the one in the package.
        version = sh(os.path.join(root, "bin", "mtls-proxy"), "--version").stdout
        commit = re.search(r"\(commit ([0-9a-f]+)", version).group(1)
        self.assertIn(commit, name)
        deb = os.path.join(ENV["work"], "deb-files")
        sh("dpkg-deb", "-x", ENV["deb"], deb)
        self.assertEqual(sha256(os.path.join(root, "bin", "mtls-proxy")), sha256(f"{deb}/usr/bin/mtls-proxy"))
        # The tarball's unit is for /usr/local/bin, where docs/install.md puts the binary.
        self.assertIn("ExecStart=/usr/local/bin/mtls-proxy run", harness.read(os.path.join(root, "systemd", "mtls-proxy.service")))


if __name__ == "__main__":
    harness.run_suite()
