// The Go client of the client matrix: net/http with its default transport, which takes the proxy from
// HTTP_PROXY/HTTPS_PROXY (either case), and the CA from CA when set. Prints one JSON object: per operation its
// status, body, what it measured, or the error.
// Usage: go run go_client.go   (env: BASE, TAG, UPLOAD, DOWNLOAD_SIZE, CA)
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	base, tag, upload, size := os.Getenv("BASE"), os.Getenv("TAG"), os.Getenv("UPLOAD"), os.Getenv("DOWNLOAD_SIZE")
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ExpectContinueTimeout = 10 * time.Second
	if ca := os.Getenv("CA"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			panic(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		transport.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	client := &http.Client{Transport: transport, Timeout: 60 * time.Second}
	body := func(r *http.Response) (int, string, int64, string) {
		defer r.Body.Close()
		h := sha256.New()
		var first bytes.Buffer
		n, _ := io.Copy(io.MultiWriter(h, &limited{&first, 2000}), r.Body)
		return r.StatusCode, first.String(), n, hex.EncodeToString(h.Sum(nil))
	}
	ops := []struct {
		name string
		run  func() (map[string]any, error)
	}{
		{"get", func() (map[string]any, error) {
			r, err := client.Get(base + "/whoami/" + tag)
			if err != nil {
				return nil, err
			}
			s, b, _, _ := body(r)
			return map[string]any{"status": s, "body": b}, nil
		}},
		{"post", func() (map[string]any, error) {
			payload := fmt.Sprintf(`{"client": "%s", "items": [1, 2, 3]}`, tag)
			r, err := client.Post(base+"/echo", "application/json", bytes.NewBufferString(payload))
			if err != nil {
				return nil, err
			}
			s, b, _, _ := body(r)
			return map[string]any{"status": s, "body": b}, nil
		}},
		{"upload", func() (map[string]any, error) {
			f, err := os.Open(upload)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			st, _ := f.Stat()
			req, _ := http.NewRequest("POST", base+"/echo", f)
			req.ContentLength = st.Size()
			req.Header.Set("Expect", "100-continue")
			r, err := client.Do(req)
			if err != nil {
				return nil, err
			}
			expect := r.Header.Get("X-Seen-Expect")
			s, b, _, _ := body(r)
			return map[string]any{"status": s, "body": b, "expect": expect}, nil
		}},
		{"keepalive", func() (map[string]any, error) {
			var statuses []int
			for i := 1; i <= 2; i++ {
				r, err := client.Get(fmt.Sprintf("%s/ka/%s/%d", base, tag, i))
				if err != nil {
					return nil, err
				}
				s, _, _, _ := body(r)
				statuses = append(statuses, s)
			}
			return map[string]any{"statuses": statuses}, nil
		}},
		{"download", func() (map[string]any, error) {
			r, err := client.Get(base + "/download?size=" + size)
			if err != nil {
				return nil, err
			}
			s, _, n, sum := body(r)
			return map[string]any{"status": s, "bytes": n, "sha256": sum}, nil
		}},
	}
	results := map[string]any{}
	for _, op := range ops {
		v, err := op.run()
		if err != nil {
			v = map[string]any{"error": err.Error()}
		}
		results[op.name] = v
	}
	out, _ := json.Marshal(results)
	fmt.Println(string(out))
}

type limited struct {
	b *bytes.Buffer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		l.b.Write(p[:room])
	}
	return len(p), nil
}
