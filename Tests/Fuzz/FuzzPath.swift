// libFuzzer target: the request-path normaliser, checked against a simple reference that decodes every escape
// first and then compares (decode-then-compare invariants):
//   - it refuses exactly when the reference finds a refused form (strict, and with both relaxations);
//   - what it accepts decodes to the same bytes as the input (slashes merged when merging is allowed), is in
//     canonical form (escapes upper-case, none for an unreserved character) and normalises to itself.
// Built by scripts/fuzz with the HTTP1 sources (swiftc -sanitize=fuzzer,address); not part of the package.

/// One character of a path after decoding: its byte, and whether it was written as an escape.
struct Unit: Equatable {
    var byte: UInt8
    var escaped: Bool
}

/// Decodes every `%XX`; nil for a `%` without two hex digits.
func decodeUnits(_ bytes: [UInt8]) -> [Unit]? {
    var units: [Unit] = []
    var i = 0
    while i < bytes.count {
        if bytes[i] == UInt8(ascii: "%") {
            guard i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) else { return nil }
            units.append(Unit(byte: h << 4 | l, escaped: true))
            i += 3
        } else {
            units.append(Unit(byte: bytes[i], escaped: false))
            i += 1
        }
    }
    return units
}

func hex(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: return c - 0x30
    case 0x41...0x46: return c - 0x37
    case 0x61...0x66: return c - 0x57
    default: return nil
    }
}

let slash = UInt8(ascii: "/"), backslash = UInt8(ascii: "\\")

/// The reference rules, on decoded units: does any refused form occur?
func referenceRefuses(_ bytes: [UInt8], relaxed: Bool) -> Bool {
    guard bytes.first == slash, let units = decodeUnits(bytes) else { return true }
    for u in units {
        if u.byte == 0 { return true }
        if !u.escaped && (u.byte >= 0x80 || u.byte < 0x20 || u.byte == 0x7F || u.byte == backslash) { return true }
        if u.escaped && (u.byte == slash || u.byte == backslash) && !relaxed { return true }
    }
    // Segments split at raw slashes, and (relaxed) at encoded slashes and backslashes too, which an upstream
    // may decode into separators.
    var segments: [[UInt8]] = [[]]
    for u in units.dropFirst() {
        let separator = (!u.escaped && u.byte == slash) || (relaxed && u.escaped && (u.byte == slash || u.byte == backslash))
        if separator { segments.append([]) } else { segments[segments.count - 1].append(u.byte) }
    }
    let rawSegments = units.dropFirst().split(omittingEmptySubsequences: false) { !$0.escaped && $0.byte == slash }
    if !relaxed && rawSegments.dropLast().contains(where: \.isEmpty) { return true }
    for segment in segments {
        let name = segment.split(separator: UInt8(ascii: ";"), maxSplits: 1, omittingEmptySubsequences: false)[0]
        if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] { return true }
    }
    return false
}

/// Units with only the distinction that matters kept: an escaped slash or backslash stays escaped.
func meaning(_ units: [Unit], mergeSlashes: Bool) -> [Unit] {
    var out: [Unit] = []
    for u in units {
        let kept = Unit(byte: u.byte, escaped: u.escaped && (u.byte == slash || u.byte == backslash))
        if mergeSlashes && kept == Unit(byte: slash, escaped: false) && out.last == kept { continue }
        out.append(kept)
    }
    return out
}

func isCanonical(_ bytes: [UInt8]) -> Bool {
    var i = 0
    while i < bytes.count {
        let c = bytes[i]
        if c == UInt8(ascii: "%") {
            guard i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) else { return false }
            guard !(0x61...0x66).contains(bytes[i + 1]), !(0x61...0x66).contains(bytes[i + 2]) else { return false }
            if PathNormalizer.isUnreserved(h << 4 | l) { return false }
            i += 3
        } else {
            if c < 0x20 || c >= 0x7F || c == backslash { return false }
            i += 1
        }
    }
    return true
}

func check(_ bytes: [UInt8], _ allowing: PathNormalizer.Relaxations) {
    let text = String(decoding: bytes, as: UTF8.self)
    // Only byte-exact strings: invalid UTF-8 would be replaced before the normaliser saw it.
    guard Array(text.utf8) == bytes else { return }
    let relaxed = allowing == .all
    switch PathNormalizer.normalize(text[...], allowing: allowing) {
    case .failure:
        precondition(referenceRefuses(bytes, relaxed: relaxed), "refused, but the reference finds nothing to refuse")
    case .success(let canonical):
        precondition(!referenceRefuses(bytes, relaxed: relaxed), "accepted a form the reference refuses")
        let out = Array(canonical.path.utf8)
        precondition(isCanonical(out), "output is not in canonical form")
        let inUnits = decodeUnits(bytes)!, outUnits = decodeUnits(out)!
        precondition(meaning(outUnits, mergeSlashes: false) == meaning(inUnits, mergeSlashes: relaxed), "output means another path")
        guard case .success(let again) = PathNormalizer.normalize(canonical.path[...], allowing: allowing), again.path == canonical.path else {
            preconditionFailure("canonical form is not its own canonical form")
        }
        precondition(!again.used.contains(.mergeSlashes), "a merged path still has an empty segment")
        if !relaxed { precondition(canonical.used.isEmpty) }
        checkReadings(canonical.path)
    }
}

/// Other servers' readings of a canonical path (`;parameters` cut, kept `%2F`/`%5C` decoded, dots and spaces
/// trimmed from segment ends): each is a path without empty segments and without what it removed; a path with
/// nothing to read differently has none.
func checkReadings(_ canonical: String) {
    let readings = PathNormalizer.otherReadings(of: canonical)
    let hasParameters = canonical.contains(";") || canonical.contains("%3B")
    let hasEscapedSlashes = canonical.contains("%2F") || canonical.contains("%5C")
    let trimmable = { (path: String) in
        path.split(separator: "/", omittingEmptySubsequences: false).contains { $0.hasSuffix(".") || $0.hasSuffix("%20") }
    }
    precondition(readings.isEmpty == !(hasParameters || hasEscapedSlashes || trimmable(canonical)),
                 "readings for a path that has nothing to read differently")
    for reading in readings {
        precondition(reading.path.first == "/" && !reading.path.contains("//"), "a reading is not a path without empty segments")
        if reading.refusal == .trailingDotReading {
            precondition(!trimmable(reading.path), "a dot or space left at a segment's end in the trimmed reading")
        } else if reading.refusal == .pathParameters {
            precondition(!reading.path.contains(";") && !reading.path.contains("%3B"), "parameters left in the stripped reading")
        } else {
            precondition(!reading.path.contains("%2F") && !reading.path.contains("%5C"), "escaped slash left in the decoded reading")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPath(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if bytes.first != slash { bytes.insert(slash, at: 0) }
    check(bytes, [])
    check(bytes, .all)
    return 0
}
