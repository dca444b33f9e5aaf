// libFuzzer target: the chunked decoder, fed the input in pieces as a socket would deliver it.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChunked(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let step = Int(data[0] % 7) + 1  // the first byte picks the read size
    let input = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var decoder = ChunkedDecoder()
    var offset = 0
    var available = min(step, input.count)
    var payload = 0
    while true {
        let window = UnsafeRawBufferPointer(rebasing: input[offset..<available])
        guard let next = try? decoder.next(window) else { return 0 }
        switch next {
        case .skip(let n):
            precondition(n > 0 && n <= window.count)
            offset += n
        case .data(let n):
            precondition(n > 0 && n <= window.count)
            offset += n
            payload += n
        case .trailerField(let n):
            // A whole field line, CRLF included, with a name before its colon.
            precondition(n >= 4 && n <= window.count)
            precondition(window[n - 2] == 0x0D && window[n - 1] == 0x0A && window[0] != 0x3A && window[0..<(n - 2)].contains(0x3A))
            offset += n
        case .end(let n):
            precondition(n <= window.count)
            precondition(decoder.isDone)
            return 0
        case .needMore:
            if available == input.count { return 0 }
            available = min(available + step, input.count)
        }
        available = max(available, offset)
        precondition(payload <= input.count)
    }
}
