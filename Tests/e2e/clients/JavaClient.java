// The Java clients of the client matrix: java.net.http.HttpClient (argument "httpclient") and HttpURLConnection
// ("urlconnection"), both with the JVM's default proxy selection, which reads the system properties users set
// (-Dhttp.proxyHost/-Dhttp.proxyPort, -Dhttps.proxyHost/-Dhttps.proxyPort), and the CA from CA (a PEM file) when
// set. Prints one JSON object: per operation its status, body, what it measured.
// Usage: java JavaClient.java httpclient|urlconnection   (env: BASE, TAG, UPLOAD, DOWNLOAD_SIZE, CA)
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import javax.net.ssl.HttpsURLConnection;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class JavaClient {
    static String base = System.getenv("BASE"), tag = System.getenv("TAG"), upload = System.getenv("UPLOAD");
    static long size = Long.parseLong(System.getenv("DOWNLOAD_SIZE"));

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    static String hex(byte[] d) {
        StringBuilder b = new StringBuilder();
        for (byte x : d) b.append(String.format("%02x", x));
        return b.toString();
    }

    static SSLContext trusting(String ca) throws Exception {
        KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
        ks.load(null, null);
        try (InputStream in = Files.newInputStream(Path.of(ca))) {
            ks.setCertificateEntry("mtls-proxy-local-ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
            }
            TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            tmf.init(ks);
            SSLContext ctx = SSLContext.getInstance("TLS");
            ctx.init(null, tmf.getTrustManagers(), null);
            return ctx;
    }

    public static void main(String[] args) throws Exception {
        String ca = System.getenv("CA");
        SSLContext ctx = ca != null && !ca.isEmpty() ? trusting(ca) : null;
        Map<String, Callable<String>> ops = args.length > 0 && args[0].equals("urlconnection") ? urlConnection(ctx) : httpClient(ctx);
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, Callable<String>> e : ops.entrySet()) {
            if (out.length() > 1) out.append(',');
            String value;
            try {
                value = e.getValue().call();
            } catch (Exception ex) {
                value = "{\"error\":" + json(ex.toString()) + "}";
            }
            out.append(json(e.getKey())).append(':').append(value);
        }
        System.out.println(out.append('}'));
    }

    static String drain(InputStream in, MessageDigest md, long[] count, StringBuilder text) throws Exception {
        byte[] buf = new byte[65536];
        try (InputStream s = in) {
            for (int k; (k = s.read(buf)) > 0; ) {
                if (md != null) md.update(buf, 0, k);
                if (text != null && text.length() < 2000) text.append(new String(buf, 0, k, StandardCharsets.UTF_8));
                count[0] += k;
            }
        }
        return text == null ? "" : text.toString();
    }

    static Map<String, Callable<String>> urlConnection(SSLContext ctx) {
        if (ctx != null) HttpsURLConnection.setDefaultSSLSocketFactory(ctx.getSocketFactory());
        Map<String, Callable<String>> ops = new LinkedHashMap<>();
        ops.put("get", () -> {
            HttpURLConnection c = (HttpURLConnection) new URL(base + "/whoami/" + tag).openConnection();
            return "{\"status\":" + c.getResponseCode() + ",\"body\":" + json(drain(c.getInputStream(), null, new long[1], new StringBuilder())) + "}";
        });
        ops.put("post", () -> {
            byte[] body = ("{\"client\": \"" + tag + "\", \"items\": [1, 2, 3]}").getBytes(StandardCharsets.UTF_8);
            HttpURLConnection c = (HttpURLConnection) new URL(base + "/echo").openConnection();
            c.setDoOutput(true);
            c.setRequestMethod("POST");
            c.setRequestProperty("Content-Type", "application/json");
            c.setFixedLengthStreamingMode(body.length);
            try (OutputStream o = c.getOutputStream()) { o.write(body); }
            return "{\"status\":" + c.getResponseCode() + ",\"body\":" + json(drain(c.getInputStream(), null, new long[1], new StringBuilder())) + "}";
        });
        ops.put("upload", () -> {
            HttpURLConnection c = (HttpURLConnection) new URL(base + "/echo").openConnection();
            c.setDoOutput(true);
            c.setRequestMethod("POST");
            c.setRequestProperty("Expect", "100-continue");  // honoured in streaming mode: waits for 100 Continue
            c.setFixedLengthStreamingMode(Files.size(Path.of(upload)));
            try (OutputStream o = c.getOutputStream()) { Files.copy(Path.of(upload), o); }
            String seen = c.getHeaderField("X-Seen-Expect");
            return "{\"status\":" + c.getResponseCode() + ",\"body\":" + json(drain(c.getInputStream(), null, new long[1], new StringBuilder()))
                    + ",\"expect\":" + json(seen == null ? "" : seen) + "}";
        });
        ops.put("keepalive", () -> {
            int[] s = new int[2];
            for (int i = 0; i < 2; i++) {
                HttpURLConnection c = (HttpURLConnection) new URL(base + "/ka/" + tag + "/" + (i + 1)).openConnection();
                s[i] = c.getResponseCode();
                drain(c.getInputStream(), null, new long[1], null);  // read to the end and closed: the connection is kept
            }
            return "{\"statuses\":[" + s[0] + "," + s[1] + "]}";
        });
        ops.put("download", () -> {
            HttpURLConnection c = (HttpURLConnection) new URL(base + "/download?size=" + size).openConnection();
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            long[] n = new long[1];
            int status = c.getResponseCode();
            drain(c.getInputStream(), md, n, null);
            return "{\"status\":" + status + ",\"bytes\":" + n[0] + ",\"sha256\":\"" + hex(md.digest()) + "\"}";
        });
        return ops;
    }

    static Map<String, Callable<String>> httpClient(SSLContext ctx) {
        HttpClient.Builder builder = HttpClient.newBuilder().proxy(ProxySelector.getDefault()).connectTimeout(Duration.ofSeconds(30));
        if (ctx != null) builder.sslContext(ctx);
        HttpClient client = builder.build();
        Duration timeout = Duration.ofSeconds(60);
        Map<String, Callable<String>> ops = new LinkedHashMap<>();
        ops.put("get", () -> {
            HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(base + "/whoami/" + tag)).timeout(timeout).build(),
                                                 HttpResponse.BodyHandlers.ofString());
            return "{\"status\":" + r.statusCode() + ",\"body\":" + json(r.body()) + "}";
        });
        ops.put("post", () -> {
            String body = "{\"client\": \"" + tag + "\", \"items\": [1, 2, 3]}";
            HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(base + "/echo")).timeout(timeout)
                    .header("Content-Type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body)).build(),
                    HttpResponse.BodyHandlers.ofString());
            return "{\"status\":" + r.statusCode() + ",\"body\":" + json(r.body()) + "}";
        });
        ops.put("upload", () -> {
            HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(base + "/echo")).timeout(timeout).expectContinue(true)
                    .POST(HttpRequest.BodyPublishers.ofFile(Path.of(upload))).build(), HttpResponse.BodyHandlers.ofString());
            return "{\"status\":" + r.statusCode() + ",\"body\":" + json(r.body()) + ",\"expect\":"
                    + json(r.headers().firstValue("X-Seen-Expect").orElse("")) + "}";
        });
        ops.put("keepalive", () -> {
            int a = client.send(HttpRequest.newBuilder(URI.create(base + "/ka/" + tag + "/1")).timeout(timeout).build(),
                                HttpResponse.BodyHandlers.discarding()).statusCode();
            int b = client.send(HttpRequest.newBuilder(URI.create(base + "/ka/" + tag + "/2")).timeout(timeout).build(),
                                HttpResponse.BodyHandlers.discarding()).statusCode();
            return "{\"statuses\":[" + a + "," + b + "]}";
        });
        ops.put("download", () -> {
            HttpResponse<InputStream> r = client.send(HttpRequest.newBuilder(URI.create(base + "/download?size=" + size)).timeout(timeout).build(),
                                                      HttpResponse.BodyHandlers.ofInputStream());
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            long n = 0;
            byte[] buf = new byte[65536];
            try (InputStream in = r.body()) {
                for (int k; (k = in.read(buf)) > 0; ) {
                    md.update(buf, 0, k);
                    n += k;
                }
            }
            return "{\"status\":" + r.statusCode() + ",\"bytes\":" + n + ",\"sha256\":\"" + hex(md.digest()) + "\"}";
        });
        return ops;
    }
}
