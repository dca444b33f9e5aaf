"""The README's first command: scripts/demo runs end to end (it builds, starts nginx demanding a client
certificate and the proxy, and shows the plain request refused and the proxied one accepted)."""
import os, subprocess, sys, unittest

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


if __name__ == "__main__":
    harness.run_suite()
