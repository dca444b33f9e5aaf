// libFuzzer target: the response head parser, response framing and the head sent to clients.

@inline(never) func consume<T>(_ value: T) { withExtendedLifetime(value) {} }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzResponse(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let length = try? HeadParser.headLength(bytes, limit: 4096),
          let head = try? HeadParser.parseResponse(UnsafeRawBufferPointer(rebasing: bytes[0..<length])) else { return 0 }
    precondition((100...999).contains(head.status))
    for method in ["GET", "HEAD"] {
        guard let framing = try? BodyFraming.forResponse(head, requestMethod: method) else { continue }
        let client = Forwarding.clientFraming(upstream: framing, clientVersion: .http11)
        let out = Forwarding.clientResponse(head, framing: client, requestMethod: method, keepAlive: true, clientVersion: .http11)
        let reparsed = out.withUnsafeBytes { try? HeadParser.headLength($0, limit: 1 << 20) }
        precondition(reparsed == out.count, "the head sent to the client does not parse back")
    }
    consume(head.allowsReuse)
    return 0
}
