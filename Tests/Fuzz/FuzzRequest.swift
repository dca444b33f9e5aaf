// libFuzzer target: the request head parser, request framing and absolute-form targets.
// Built by scripts/fuzz with the HTTP1 sources (swiftc -sanitize=fuzzer,address); not part of the package.

@inline(never) func consume<T>(_ value: T) { withExtendedLifetime(value) {} }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let limits = HeadLimits(maxHeadBytes: 4096, maxHeaderCount: 64)
    guard let length = try? HeadParser.headLength(bytes, limit: limits.maxHeadBytes) else { return 0 }
    guard let head = try? HeadParser.parseRequest(UnsafeRawBufferPointer(rebasing: bytes[0..<length]), limits: limits) else { return 0 }
    precondition(length <= size)
    consume(try? BodyFraming.forRequest(head))
    consume(head.wantsKeepAlive)
    if let target = try? AbsoluteTarget.parse(head.target) {
        precondition(target.pathAndQuery.hasPrefix("/"))
        consume(target.hostHeader(port: target.explicitPort ?? 443, defaultPort: 443))
        var headers = head.headers
        Forwarding.stripHopByHop(&headers)
        precondition(!headers.contains("Connection") && !headers.contains("Transfer-Encoding"))
        let out = Forwarding.upstreamRequest(head, pathAndQuery: target.pathAndQuery, host: target.host, framing: .none)
        // What the proxy writes must parse back as exactly one head.
        let reparsed = out.withUnsafeBytes { try? HeadParser.headLength($0, limit: 1 << 20) }
        precondition(reparsed == out.count, "the forwarded head does not parse back")
    }
    return 0
}
