#!/usr/bin/env python3
"""Identity keys held by a TPM: a software TPM (swtpm) on a loopback TCP port, the tpm2-openssl provider
loaded through [tls] providers, an ECDSA P-256 key created in the TPM (a TSS2 PEM key file: the private part is
wrapped by the TPM and useless without it), its certificate signed by the test CA from a CSR made with the TPM
key, and TLS 1.3 and TLS 1.2 upstreams requiring the client certificate."""
import os, shutil, socket, ssl, subprocess, sys, tempfile, threading, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, SubjectUpstream, concurrently, get as proxy_get, tear_down  # noqa: E402

ENV = {}
PROVIDER = "/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so"
HANDLE = "0x81000001"
RSA_HANDLE = "0x81000002"


def missing_tools():
    missing = [t for t in ("swtpm", "tpm2_createprimary", "tpm2_evictcontrol", "tpm2_flushcontext") if not shutil.which(t)]
    if not os.path.exists(PROVIDER):
        missing.append("tpm2-openssl")
    return missing


def port_pair():
    """A free loopback port whose next port is free too (swtpm's command and control ports)."""
    for _ in range(50):
        port = harness.free_port()
        if port >= 65535:
            continue
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
        finally:
            probe.close()
    raise RuntimeError("no two free loopback ports in a row")


def setUpModule():
    missing = missing_tools()
    if missing:
        raise unittest.SkipTest(f"not installed: {', '.join(missing)} (scripts/lib/deps.sh installs swtpm and tpm2-openssl)")
    with Fixture("mtls-proxy-tpm-", ports=("proxy",)) as fx:
        d, procs, ports = fx.dir, fx.procs, fx.ports
        ports["tpm"] = port_pair()
        ports["tpmctrl"] = ports["tpm"] + 1  # the swtpm TCTI finds the control port next to the command port
        os.makedirs(f"{d}/tpmstate")
        with open(f"{d}/swtpm.log", "ab") as log:
            procs.start(["swtpm", "socket", "--tpm2", "--server", f"type=tcp,port={ports['tpm']},bindaddr=127.0.0.1",
                         "--ctrl", f"type=tcp,port={ports['tpmctrl']},bindaddr=127.0.0.1", "--tpmstate", f"dir={d}/tpmstate",
                         "--flags", "not-need-init,startup-clear"], stdout=log, stderr=subprocess.STDOUT)
        harness.wait_for_port(ports["tpm"])
        os.environ["TPM2OPENSSL_TCTI"] = f"swtpm:host=127.0.0.1,port={ports['tpm']}"
        run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, cwd=d)
        run("openssl", "genpkey", "-provider", "tpm2", "-algorithm", "EC", "-pkeyopt", "group:P-256", "-out", "us.tss2.pem")
        run("openssl", "req", "-new", "-provider", "tpm2", "-provider", "default", "-key", "us.tss2.pem",
            "-subj", "/O=mtls-proxy test/CN=fusion-us-tpm", "-out", "us.csr")
        harness.write_file(f"{d}/client.ext", "extendedKeyUsage=clientAuth\n")
        run("openssl", "x509", "-req", "-in", "us.csr", "-CA", "pki/ca.pem", "-CAkey", "pki/ca.key", "-CAcreateserial",
            "-days", "90", "-sha256", "-extfile", "client.ext", "-out", "us-tpm.pem")
        # An RSA key in the TPM: TLS 1.2 (PKCS#1 v1.5) signs; TLS 1.3's RSA-PSS would need raw RSA, which it does not offer.
        # A second key made with tpm2-tools and kept in the TPM at a persistent handle: key = "store:handle:0x81000001".
        tools_env = dict(os.environ, TPM2TOOLS_TCTI=os.environ["TPM2OPENSSL_TCTI"])
        tools = lambda *a: subprocess.run(list(a), check=True, capture_output=True, cwd=d, env=tools_env)
        tools("tpm2_flushcontext", "-t")  # no resource manager: transient objects stay until flushed
        tools("tpm2_createprimary", "-C", "o", "-G", "ecc256:ecdsa-sha256",
              "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign", "-c", "eu.ctx")
        tools("tpm2_evictcontrol", "-C", "o", "-c", "eu.ctx", HANDLE)
        tools("tpm2_flushcontext", "-t")
        # And an RSA one at another handle (persistent keys take none of the TPM's few transient slots).
        tools("tpm2_createprimary", "-C", "o", "-G", "rsa2048:rsassa-sha256",
              "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign", "-c", "rsa.ctx")
        tools("tpm2_evictcontrol", "-C", "o", "-c", "rsa.ctx", RSA_HANDLE)
        tools("tpm2_flushcontext", "-t")  # no resource manager: the transient copies would hold slots
        run("openssl", "req", "-new", "-provider", "tpm2", "-provider", "default", "-key", f"handle:{RSA_HANDLE}",
            "-subj", "/O=mtls-proxy test/CN=fusion-rsa-tpm", "-out", "rsa.csr")
        run("openssl", "x509", "-req", "-in", "rsa.csr", "-CA", "pki/ca.pem", "-CAkey", "pki/ca.key", "-CAcreateserial",
            "-days", "90", "-sha256", "-extfile", "client.ext", "-out", "rsa-tpm.pem")
        run("openssl", "req", "-new", "-provider", "tpm2", "-provider", "default", "-key", f"handle:{HANDLE}",
            "-subj", "/O=mtls-proxy test/CN=fusion-eu-tpm", "-out", "eu.csr")
        run("openssl", "x509", "-req", "-in", "eu.csr", "-CA", "pki/ca.pem", "-CAkey", "pki/ca.key", "-CAcreateserial",
            "-days", "90", "-sha256", "-extfile", "client.ext", "-out", "eu-tpm.pem")
        for name, version in (("up", ssl.TLSVersion.TLSv1_3), ("up12", ssl.TLSVersion.TLSv1_2)):
            ports[name] = fx.server(SubjectUpstream(fx.pki, minimum=version, maximum=version)).port
        fx.proxy("proxy", f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 2
[upstream]
ca_file = "pki/ca.pem"
max_idle_per_host = 0
[tls]
providers = ["default", "tpm2"]
[identities.tpm]
cert = "us-tpm.pem"
key = "store:file:{d}/us.tss2.pem"
[identities.tpmrsa]
cert = "rsa-tpm.pem"
key = "store:handle:{RSA_HANDLE}"
[identities.tpmhandle]
cert = "eu-tpm.pem"
key = "store:handle:{HANDLE}"
[identities.filed]
cert = "pki/fusion-us.pem"
key = "pki/fusion-us.key"
[[route]]
host = "api.mygreatbank.test"
identity = "tpm"
connect = "127.0.0.1:{ports['up']}"
[[route]]
host = "eu.mygreatbank.test"
identity = "tpmhandle"
connect = "127.0.0.1:{ports['up']}"
[[route]]
host = "rsa12.mygreatbank.test"
identity = "tpmrsa"
connect = "127.0.0.1:{ports['up12']}"
tls_signature_algorithms = ["RSA+SHA256", "RSA+SHA384", "ECDSA+SHA256"]  # PKCS#1 v1.5, not RSA-PSS
[[route]]
host = "rsa13.mygreatbank.test"
identity = "tpmrsa"
connect = "127.0.0.1:{ports['up']}"
[[route]]
host = "api12.mygreatbank.test"
identity = "tpm"
connect = "127.0.0.1:{ports['up12']}"
[[route]]
host = "file.mygreatbank.test"
identity = "filed"
connect = "127.0.0.1:{ports['up']}"
""")
    ENV.update(fx.env())


def tearDownModule():
    tear_down(ENV)


def get(host):
    """(status, body) of a GET through the suite's proxy."""
    status, _, body = proxy_get(ENV["ports"]["proxy"], host)
    return status, body


def check(text):
    d = tempfile.mkdtemp(prefix="mtls-proxy-tpm-check-")
    harness.write_file(f"{d}/proxy.conf", text)
    r = harness.run_cli("check", "--config", f"{d}/proxy.conf", timeout=60)
    return r.returncode, r.stdout + r.stderr


class TPMKeys(unittest.TestCase):
    def test_tpm_key_is_presented_to_a_service_requiring_it(self):
        status, body = get("api.mygreatbank.test")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, "TLSv1.3 organizationName=mtls-proxy test,commonName=fusion-us-tpm")
        status, body = get("api12.mygreatbank.test")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, "TLSv1.2 organizationName=mtls-proxy test,commonName=fusion-us-tpm")

    def test_a_key_at_a_persistent_handle_made_with_tpm2_tools(self):
        status, body = get("eu.mygreatbank.test")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, "TLSv1.3 organizationName=mtls-proxy test,commonName=fusion-eu-tpm")

    def test_an_rsa_key_signs_tls12_and_tls13_is_refused_naming_the_identity(self):
        status, body = get("rsa12.mygreatbank.test")
        self.maxDiff = None
        self.assertEqual((status, body), (200, "TLSv1.2 organizationName=mtls-proxy test,commonName=fusion-rsa-tpm"))
        status, body = get("rsa13.mygreatbank.test")  # RSA-PSS: documented as not possible with a TPM key
        self.assertEqual(status, 502, body)
        self.assertIn("identity tpmrsa could not sign the TLS handshake", body)

    def test_concurrent_handshakes_on_two_workers(self):
        hosts = ["api.mygreatbank.test", "api12.mygreatbank.test", "file.mygreatbank.test"] * 6
        self.assertEqual(concurrently(lambda host: get(host)[0], hosts), [200] * 18)

    def test_check_shows_the_tpm_identities(self):
        # With no resource manager each process that loads a TPM key file keeps one of the TPM's three transient
        # slots until the TPM restarts (keys at persistent handles take none): check here loads one.
        d = ENV["dir"]
        code, text = check(f'[tls]\nproviders = ["default", "tpm2"]\n[identities.tpm]\ncert = "{d}/us-tpm.pem"\n'
                           f'key = "store:file:{d}/us.tss2.pem"\n[identities.tpmhandle]\ncert = "{d}/eu-tpm.pem"\n'
                           f'key = "store:handle:{HANDLE}"\n[[route]]\nhost = "a.test"\nidentity = "tpm"\n'
                           '[[route]]\nhost = "b.test"\nidentity = "tpmhandle"\n')
        self.assertEqual(code, 0, text)
        self.assertIn("CN=fusion-us-tpm", text)
        self.assertIn("CN=fusion-eu-tpm", text)

    def test_a_provider_that_is_not_installed_is_a_config_error(self):
        code, text = check('[tls]\nproviders = ["default", "no-such-provider"]\n')
        self.assertEqual(code, 1, text)
        self.assertIn("tls.providers", text)
        self.assertIn('cannot load the OpenSSL provider "no-such-provider"', text)

    def test_providers_without_default_are_refused(self):
        code, text = check('[tls]\nproviders = ["tpm2"]\n')
        self.assertNotEqual(code, 0, text)
        self.assertIn('include "default"', text)

    def test_a_store_key_that_is_not_there_names_identity_and_uri(self):
        d = ENV["dir"]
        code, text = check(f'[tls]\nproviders = ["default", "tpm2"]\n[identities.tpm]\ncert = "{d}/us-tpm.pem"\n'
                           f'key = "store:file:{d}/missing.tss2.pem"\n')
        self.assertEqual(code, 1, text)
        self.assertIn("identities.tpm.key", text)
        self.assertIn(f"store:file:{d}/missing.tss2.pem", text)


if __name__ == "__main__":
    harness.run_suite()
