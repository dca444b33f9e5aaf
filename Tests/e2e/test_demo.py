"""The README's first command: scripts/demo runs end to end (it builds, starts nginx demanding a client
certificate and the proxy, and shows the plain request refused and the proxied one accepted); and the README's
"Try it locally" steps work as written."""
import os, re, shutil, subprocess, sys, tempfile, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class Demo(unittest.TestCase):
    def test_demo_runs_end_to_end(self):
        r = subprocess.run(["bash", os.path.join(harness.ROOT, "scripts", "demo")], cwd=harness.ROOT,
                           capture_output=True, text=True, timeout=600, env=harness.clean_env())
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        self.assertIn("400 No required SSL certificate was sent", r.stdout)
        self.assertIn('"caller": "CN=fusion-us', r.stdout)
        self.assertIn("error=http_request_denied", r.stdout)
        self.assertIn('"identity":"us"', r.stdout)  # the access log shows the proxied request
        self.assertIn("demo OK", r.stdout)



class ReadmeLocalTest(unittest.TestCase):
    """The commands and the config of the README's "Try it locally", run as written: only the two ports are
    swapped for free ones, `mtls-proxy` is the binary under test, and a wait for each port follows the line that
    starts a server in the background (a person typing gives it that time)."""

    def section(self):
        readme = harness.read(os.path.join(harness.ROOT, "README.md"))
        m = re.search(r"^## Try it locally\n(.*?)^## ", readme, re.S | re.M)
        self.assertIsNotNone(m, "the README has no 'Try it locally' section")
        return m.group(1)

    def test_try_it_locally_works_as_written(self):
        text = self.section()
        blocks = [(lang, textwrap_dedent(code)) for lang, code in re.findall(r"^ *```(\w+)\n(.*?)^ *```$", text, re.S | re.M)]
        self.assertEqual([lang for lang, _ in blocks], ["sh", "sh", "toml", "sh"], blocks)
        service, proxy = harness.free_port(), harness.free_port()
        swap = lambda code: code.replace("8443", str(service)).replace("3128", str(proxy))
        work = tempfile.mkdtemp(prefix="mtls-proxy-readme-")
        bindir = tempfile.mkdtemp(prefix="mtls-proxy-readme-bin-")
        os.symlink(os.path.abspath(harness.proxy_binary()), f"{bindir}/mtls-proxy")
        wait = "wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }\n"
        setup, server, config, steps = (swap(code) for _, code in blocks)
        setup = setup.replace("/tmp/mtls-proxy-try", work)
        server += f"wait_port {service}\n"
        steps = re.sub(r"^(mtls-proxy run .*&)$", rf"\1\nwait_port {proxy}", steps, flags=re.M)
        # Whatever fails, the servers started in the background stop with the script.
        script = ("set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + wait + setup + "\n" + server + f"cat > proxy.conf <<'CONF'\n{config}CONF\n" + steps
                  + "\nkill %1 %2\n")
        try:
            r = subprocess.run(["bash", "-c", script], cwd=harness.ROOT, capture_output=True, text=True, timeout=120,
                               env=harness.clean_env(PATH=f"{bindir}:{os.environ['PATH']}"))
            self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
            self.assertIn("config ", r.stdout)
            self.assertIn("hello fusion-us", r.stdout)
            self.assertIn("HTTP/1.1 403", r.stdout)
            self.assertIn("mutual TLS presenting identity us", r.stdout)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(bindir, ignore_errors=True)


def textwrap_dedent(code):
    import textwrap
    return textwrap.dedent(code)


if __name__ == "__main__":
    harness.run_suite()
