import HTTP1

/// Reads the HTTP/1.1 request the exchange writes for the upstream (its head as `Forwarding` made it, then the
/// body as Content-Length bytes or chunks) and says what it means for an HTTP/2 stream: the head, body bytes to
/// send as DATA, and the end. Like `ChunkedDecoder`, it never copies payload: each step says how many bytes to
/// drop and how many to pass on. The bytes come from the proxy itself, so a parse error is the proxy's bug, not
/// a client's: it fails the exchange.
public struct HTTP1RequestReader: Sendable {
    public enum Step: Equatable, Sendable {
        /// The head is complete: `consumed` bytes of it are dropped; `framing` says whether a body follows.
        case head(RequestHead, framing: BodyFraming, consumed: Int)
        /// The next `count` bytes are body: send them, then drop them.
        case data(Int)
        /// Drop this many bytes of framing.
        case skip(Int)
        /// Drop this many bytes; the request is complete (END_STREAM).
        case end(Int)
        case needMore
    }

    enum State: Sendable {
        case head
        case length(remaining: UInt64)
        case chunked(ChunkedDecoder)
        case done
    }

    var state: State = .head
    let limits: HeadLimits
    /// The trailer section of a chunked body, as the exchange wrote it (the fields it lets through), once read.
    public private(set) var trailers: [HTTPField] = []

    public init(limits: HeadLimits = HeadLimits()) { self.limits = limits }

    public var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    /// The next step over the bytes available (the unread part of the exchange's request output).
    public mutating func next(_ bytes: UnsafeRawBufferPointer) throws -> Step {
        switch state {
        case .head:
            var head = RequestHead()
            guard let (framing, consumed) = try nextHead(bytes, into: &head) else { return .needMore }
            return .head(head, framing: framing, consumed: consumed)
        case .length(let remaining):
            if bytes.isEmpty { return .needMore }
            let n = Int(min(UInt64(bytes.count), remaining))
            let left = remaining - UInt64(n)
            state = left == 0 ? .done : .length(remaining: left)
            return .data(n)
        case .chunked(var decoder):
            let step = try decoder.next(bytes)
            state = .chunked(decoder)
            switch step {
            case .skip(let n): return .skip(n)
            case .trailerField(let n):
                trailers.append(Self.field(UnsafeRawBufferPointer(rebasing: bytes[0..<(n - 2)])))
                return .skip(n)
            case .data(let n): return .data(n)
            case .end(let n):
                state = .done
                return .end(n)
            case .needMore: return .needMore
            }
        case .done:
            return bytes.isEmpty ? .needMore : .skip(0)
        }
    }

    /// A field line the chunked decoder checked (`name: value`, no CRLF): the name, and the value without the
    /// whitespace around it, its bytes as Latin-1.
    static func field(_ line: UnsafeRawBufferPointer) -> HTTPField {
        let colon = line.firstIndex(of: 0x3A) ?? line.count
        var start = min(colon + 1, line.count), end = line.count
        while start < end && (line[start] == 0x20 || line[start] == 0x09) { start += 1 }
        while end > start && (line[end - 1] == 0x20 || line[end - 1] == 0x09) { end -= 1 }
        return HTTPField(name: String(decoding: line[0..<colon], as: UTF8.self),
                         value: String(String.UnicodeScalarView(line[start..<end].lazy.map { Unicode.Scalar($0) })))
    }

    /// The head, when it is complete in `bytes`: parsed into `head` (a holder's head, refilled: no allocation once
    /// its buffers are large enough), with the body's framing and the bytes it took; nil while more are needed.
    /// Only while no head was read yet (`next` goes on with the body).
    public mutating func nextHead(_ bytes: UnsafeRawBufferPointer, into head: inout RequestHead) throws -> (framing: BodyFraming, consumed: Int)? {
        guard case .head = state else { return nil }
        guard let end = Self.headEnd(bytes) else {
            if bytes.count > limits.maxHeadBytes { throw HTTPParseError.headTooLarge(limit: limits.maxHeadBytes) }
            return nil
        }
        try HeadParser.parseRequest(UnsafeRawBufferPointer(rebasing: bytes[0..<end]), into: &head, limits: limits)
        let framing = try BodyFraming.forRequest(head)
        switch framing {
        case .none, .untilClose: state = .done
        case .contentLength(let n): state = .length(remaining: n)
        case .chunked: state = .chunked(ChunkedDecoder(trailerLimits: limits))
        }
        return (framing, end)
    }

    /// Where the head ends (just after CRLF CRLF), or nil.
    static func headEnd(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 3..<bytes.count where bytes[i] == 0x0A && bytes[i - 1] == 0x0D && bytes[i - 2] == 0x0A && bytes[i - 3] == 0x0D {
            return i + 1
        }
        return nil
    }
}
