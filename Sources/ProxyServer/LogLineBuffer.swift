import ProxyConfig

/// A growable byte buffer that access records are serialised into: JSON and text straight from the record's
/// fields, strings escaped from their UTF-8 storage, numbers and the time formatted in place. No Foundation,
/// no intermediate `String`.
final class LogLineBuffer {
    private(set) var base: UnsafeMutablePointer<UInt8>
    private(set) var capacity: Int
    private(set) var count = 0
    /// "YYYY-MM-DDTHH:MM:SS" of `cachedSecond`: gmtime_r once a second, not once a record.
    private let cachedTime = UnsafeMutablePointer<UInt8>.allocate(capacity: 19)
    private var cachedSecond = Int.min

    init(capacity: Int) {
        self.capacity = max(capacity, 64)
        base = .allocate(capacity: self.capacity)
    }

    deinit {
        base.deallocate()
        cachedTime.deallocate()
    }

    var string: String { String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self) }

    func removeAll() { count = 0 }

    @inline(__always)
    private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    private func grow(_ needed: Int) {
        let next = max(needed, capacity * 2)
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: next)
        bigger.update(from: base, count: count)
        base.deallocate()
        base = bigger
        capacity = next
    }

    @inline(__always)
    func byte(_ b: UInt8) {
        reserve(1)
        base[count] = b
        count += 1
    }

    /// ASCII text known at compile time: field names and punctuation.
    @inline(__always)
    func ascii(_ s: StaticString) {
        let n = s.utf8CodeUnitCount
        reserve(n)
        (base + count).update(from: s.utf8Start, count: n)
        count += n
    }

    func bytes(_ p: UnsafeBufferPointer<UInt8>) {
        guard let start = p.baseAddress, !p.isEmpty else { return }
        reserve(p.count)
        (base + count).update(from: start, count: p.count)
        count += p.count
    }

    /// A string's UTF-8 as it is (the text format's unquoted fields).
    func raw(_ s: String) {
        if s.utf8.withContiguousStorageIfAvailable({ bytes($0) }) == nil {
            var copy = s
            copy.withUTF8 { bytes($0) }
        }
    }

    func decimal(_ value: Int) {
        reserve(20)
        var v = value
        if v < 0 {
            base[count] = UInt8(ascii: "-")
            count += 1
            if v == Int.min {
                ascii("9223372036854775808")
                return
            }
            v = -v
        }
        var digits = 1
        var t = v
        while t >= 10 {
            t /= 10
            digits += 1
        }
        var i = count + digits - 1
        repeat {
            base[i] = UInt8(truncatingIfNeeded: v % 10) &+ 48
            v /= 10
            i -= 1
        } while v > 0
        count += digits
    }

    func decimalOrNull(_ value: Int?) {
        if let value { decimal(value) } else { ascii("null") }
    }

    func bool(_ value: Bool) {
        if value { ascii("true") } else { ascii("false") }
    }

    /// A JSON string: quotes, backslashes and control characters escaped; the rest, UTF-8 included, as it is.
    func jsonString(_ s: String) {
        if s.utf8.withContiguousStorageIfAvailable({ jsonEscaped($0) }) == nil {
            var copy = s
            copy.withUTF8 { jsonEscaped($0) }
        }
    }

    func jsonStringOrNull(_ s: String?) {
        if let s { jsonString(s) } else { ascii("null") }
    }

    private func jsonEscaped(_ utf8: UnsafeBufferPointer<UInt8>) {
        let n = utf8.count
        reserve(n + 2)
        base[count] = 34
        guard let start = utf8.baseAddress, n > 0 else {
            base[count + 1] = 34
            count += 2
            return
        }
        // The common case (names, hosts, paths): nothing to escape, found eight bytes at a time, one copy.
        let raw = UnsafeRawPointer(start)
        var i = 0
        while i + 8 <= n && !Self.needsEscape(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { i += 8 }
        while i < n && !Self.needsEscape(start[i]) { i += 1 }
        if i == n {
            (base + count + 1).update(from: start, count: n)
            base[count + 1 + n] = 34
            count += n + 2
            return
        }
        count += 1
        var runStart = 0
        i = 0
        while i < n {
            let b = start[i]
            if !Self.needsEscape(b) {
                i += 1
                continue
            }
            if i > runStart { bytes(UnsafeBufferPointer(start: start + runStart, count: i - runStart)) }
            reserve(6)
            base[count] = 92
            switch b {
            case 34, 92:
                base[count + 1] = b
                count += 2
            case 10:
                base[count + 1] = UInt8(ascii: "n")
                count += 2
            case 13:
                base[count + 1] = UInt8(ascii: "r")
                count += 2
            case 9:
                base[count + 1] = UInt8(ascii: "t")
                count += 2
            default:
                let hex: StaticString = "0123456789abcdef"
                base[count + 1] = UInt8(ascii: "u")
                base[count + 2] = 48
                base[count + 3] = 48
                base[count + 4] = hex.utf8Start[Int(b >> 4)]
                base[count + 5] = hex.utf8Start[Int(b & 15)]
                count += 6
            }
            i += 1
            runStart = i
        }
        if n > runStart { bytes(UnsafeBufferPointer(start: start + runStart, count: n - runStart)) }
        byte(34)
    }

    @inline(__always)
    static func needsEscape(_ b: UInt8) -> Bool { b < 0x20 || b == 34 || b == 92 }

    /// Whether any of eight bytes is below 0x20, a quote or a backslash (it may say yes for a byte after one
    /// that is, never no for one that is; bytes from 0x80 up, UTF-8 sequences, never need it).
    @inline(__always)
    static func needsEscape(_ x: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        let control = (x &- ones &* 0x20) & ~x & high
        let q = x ^ (ones &* 0x22)
        let bs = x ^ (ones &* 0x5C)
        let quote = (q &- ones) & ~q & high
        let backslash = (bs &- ones) & ~bs & high
        return (control | quote | backslash) != 0
    }

    /// "2027-03-02T14:05:09.123Z"
    func iso8601(millis: Int) {
        let second = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        if second != cachedSecond {
            let p = UTCTime.parts(second)
            func two(_ v: Int32, at i: Int) {
                cachedTime[i] = UInt8(truncatingIfNeeded: v / 10 % 10) &+ 48
                cachedTime[i + 1] = UInt8(truncatingIfNeeded: v % 10) &+ 48
            }
            let year = p.tm_year + 1900
            two(year / 100, at: 0)
            two(year % 100, at: 2)
            cachedTime[4] = UInt8(ascii: "-")
            two(p.tm_mon + 1, at: 5)
            cachedTime[7] = UInt8(ascii: "-")
            two(p.tm_mday, at: 8)
            cachedTime[10] = UInt8(ascii: "T")
            two(p.tm_hour, at: 11)
            cachedTime[13] = UInt8(ascii: ":")
            two(p.tm_min, at: 14)
            cachedTime[16] = UInt8(ascii: ":")
            two(p.tm_sec, at: 17)
            cachedSecond = second
        }
        let ms = millis - second * 1000
        reserve(24)
        (base + count).update(from: cachedTime, count: 19)
        base[count + 19] = UInt8(ascii: ".")
        base[count + 20] = UInt8(truncatingIfNeeded: ms / 100) &+ 48
        base[count + 21] = UInt8(truncatingIfNeeded: ms / 10 % 10) &+ 48
        base[count + 22] = UInt8(truncatingIfNeeded: ms % 10) &+ 48
        base[count + 23] = UInt8(ascii: "Z")
        count += 24
    }
}
