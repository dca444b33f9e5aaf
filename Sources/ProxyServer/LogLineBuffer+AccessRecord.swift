/// An access record serialised into a line buffer: the JSON object of `[log] format = "json"` and the text line of
/// `format = "text"`, field by field, with nothing allocated.
extension LogLineBuffer {
    func appendJSON(_ r: AccessRecord) {
        ascii("{\"time\":\"")
        iso8601(millis: r.startEpochMillis)
        ascii("\",\"client\":")
        jsonString(r.client)
        ascii(",\"listener\":")
        jsonString(r.listener)
        ascii(",\"intercepted\":")
        bool(r.intercepted)
        if let tunnel = r.tunnel {
            ascii(",\"tunnel\":")
            jsonString(tunnel)
        }
        ascii(",\"method\":")
        jsonString(r.method)
        ascii(",\"scheme\":")
        jsonString(r.scheme)
        ascii(",\"host\":")
        jsonString(r.host)
        ascii(",\"port\":")
        decimal(r.port)
        ascii(",\"path\":")
        jsonString(r.path)
        ascii(",\"route\":")
        jsonString(r.route)
        ascii(",\"identity\":")
        jsonStringOrNull(r.identity)
        ascii(",\"cert_serial\":")
        jsonStringOrNull(r.certificateSerial)
        ascii(",\"status\":")
        decimal(r.status)
        ascii(",\"upstream_status\":")
        decimalOrNull(r.upstreamStatus)
        ascii(",\"bytes_in\":")
        decimal(r.bytesIn)
        ascii(",\"bytes_out\":")
        decimal(r.bytesOut)
        ascii(",\"duration_ms\":")
        decimal(r.durationMs)
        ascii(",\"connect_ms\":")
        decimalOrNull(r.connectMs)
        ascii(",\"tcp_connect_ms\":")
        decimalOrNull(r.tcpConnectMs)
        ascii(",\"tls_handshake_ms\":")
        decimalOrNull(r.tlsHandshakeMs)
        ascii(",\"ttfb_ms\":")
        decimalOrNull(r.ttfbMs)
        ascii(",\"reused\":")
        bool(r.reused)
        ascii(",\"tls_version\":")
        jsonStringOrNull(r.tlsVersion)
        ascii(",\"cipher\":")
        jsonStringOrNull(r.cipher)
        ascii(",\"upstream_protocol\":")
        jsonStringOrNull(r.upstreamProtocol)
        ascii(",\"upstream_stream\":")
        decimalOrNull(r.upstreamStreamID)
        ascii(",\"proxy_status\":")
        jsonStringOrNull(r.proxyStatus)
        byte(UInt8(ascii: "}"))
    }

    func appendText(_ r: AccessRecord) {
        iso8601(millis: r.startEpochMillis)
        byte(32)
        raw(r.client)
        ascii(" \"")
        raw(r.method)
        byte(32)
        raw(r.scheme)
        ascii("://")
        raw(r.host)
        byte(UInt8(ascii: ":"))
        decimal(r.port)
        raw(r.path)
        ascii("\" ")
        decimal(r.status)
        ascii(" route=")
        jsonString(r.route)
        ascii(" identity=")
        rawOrDash(r.identity)
        ascii(" serial=")
        rawOrDash(r.certificateSerial)
        ascii(" upstream_status=")
        decimalOrDash(r.upstreamStatus)
        ascii(" in=")
        decimal(r.bytesIn)
        ascii(" out=")
        decimal(r.bytesOut)
        ascii(" ms=")
        decimal(r.durationMs)
        ascii(" connect_ms=")
        decimalOrDash(r.connectMs)
        ascii(" tls_ms=")
        decimalOrDash(r.tlsHandshakeMs)
        ascii(" ttfb_ms=")
        decimalOrDash(r.ttfbMs)
        ascii(" reused=")
        bool(r.reused)
        ascii(" tls=")
        rawOrDash(r.tlsVersion)
        if let proto = r.upstreamProtocol, proto != "http/1.1" {
            ascii(" upstream_protocol=")
            raw(proto)
            ascii(" stream=")
            decimalOrDash(r.upstreamStreamID)
        }
        if r.intercepted { ascii(" intercepted=true") }
        if let tunnel = r.tunnel {
            ascii(" tunnel=")
            raw(tunnel)
        }
        if let proxyStatus = r.proxyStatus {
            ascii(" proxy_status=")
            jsonString(proxyStatus)
        }
    }

    private func rawOrDash(_ s: String?) {
        if let s { raw(s) } else { byte(UInt8(ascii: "-")) }
    }

    private func decimalOrDash(_ v: Int?) {
        if let v { decimal(v) } else { byte(UInt8(ascii: "-")) }
    }
}
