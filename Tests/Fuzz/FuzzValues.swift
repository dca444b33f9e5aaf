// libFuzzer target: the config value parsers (durations, addresses, ranges, host patterns, numeric-host check).

@inline(never) func consume<T>(_ value: T) { withExtendedLifetime(value) {} }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzValues(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    consume(TimeSpan.parse(text))
    if let hp = HostPort.parse(text) { precondition(hp.port >= 0 && hp.port <= 65535) }
    if let ip = IPAddress(text) {
        precondition(ip.bytes.count == 4 || ip.bytes.count == 16)
        consume(AddressPolicy.nonPublicReason(ip))
        // The text form parses back to the same address.
        precondition(IPAddress(ip.description) == ip)
    }
    if let cidr = CIDR.parse(text) { consume(cidr.contains(cidr.address)) ; precondition(cidr.contains(cidr.address)) }
    consume(HostPattern.parse(text))
    consume(AddressPolicy.legacyNumericIPv4(text))
    return 0
}
