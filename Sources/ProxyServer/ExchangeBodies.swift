import CEventTLS
import HTTP1

/// Moving the bodies of an exchange between evbuffers, by the exchange's framing. Chunked bodies are decoded
/// and re-encoded (a chunked request body goes upstream chunked; a response goes to the client chunked or
/// close-delimited by `clientFraming`). The trailer section goes in the last chunk, each field line as received,
/// those `TrailerFields.isDropped` names left out; a close-delimited response has nowhere to carry it (it is
/// dropped). bytes_in and bytes_out count body bytes only: no heads, no chunk framing, no trailers.
/// (Each chunk header is still a small array from `ChunkedEncoder`; writing it in place is left to the performance work.)
extension Exchange {
    enum RequestBodyProgress {
        /// Everything available was moved; more may come.
        case waiting
        /// The upstream holds too much unsent: stop reading the client until it drains.
        case destinationFull
        /// The whole body has gone upstream.
        case complete
    }

    /// Moves what is available of the request body from the client's `input` to the upstream's `destination`.
    mutating func moveRequestBody(from input: OpaquePointer, to destination: OpaquePointer, highWatermark: Int) throws -> RequestBodyProgress {
        while true {
            if requestBody.isDone { return .complete }
            let available = evbuffer_get_length(input)
            if available == 0 { return .waiting }
            if evbuffer_get_length(destination) >= highWatermark { return .destinationFull }
            switch requestBody {
            case .contentLength(let remaining):
                let n = Int(min(remaining, UInt64(available)))
                evbuffer_remove_buffer(input, destination, n)
                record.bytesIn += n
                requestBody = remaining == UInt64(n) ? .done : .contentLength(remaining: remaining - UInt64(n))
            case .chunked(var decoder):
                if let remaining = decoder.dataRemaining {
                    let n = Int(min(remaining, UInt64(available)))
                    ChunkedEncoder.chunkHeader(size: n).withUnsafeBytes { _ = evbuffer_add(destination, $0.baseAddress, $0.count) }
                    evbuffer_remove_buffer(input, destination, n)
                    ChunkedEncoder.chunkTrailer.withUnsafeBytes { _ = evbuffer_add(destination, $0.baseAddress, $0.count) }
                    decoder.consumedData(n)
                    record.bytesIn += n
                    requestBody = .chunked(decoder)
                    continue
                }
                let window = min(available, decoder.lineWindow)
                let step = try decoder.next(UnsafeRawBufferPointer(start: evbuffer_pullup(input, window), count: window))
                requestBody = .chunked(decoder)
                switch step {
                case .skip(let n):
                    evbuffer_drain(input, n)  // chunk framing: not counted
                case .trailerField(let n):
                    if decoder.trailerFieldsPassed == 1 { ChunkedEncoder.addLastChunkLine(to: destination) }
                    evbuffer_remove_buffer(input, destination, n)
                case .end(let n):
                    evbuffer_drain(input, n)
                    ChunkedEncoder.addEnd(to: destination, afterTrailers: decoder.trailerFieldsPassed > 0)
                    requestBody = .done
                case .data:
                    break  // handled above on the next turn
                case .needMore:
                    return .waiting
                }
            case .done:
                return .complete
            case .unframed:
                return .waiting  // never read: the request is answered and the connection closed
            }
        }
    }

    enum ResponseBodyProgress {
        /// Everything available was moved; more may come.
        case waiting
        /// The client holds too much unsent: stop reading the upstream until it drains.
        case destinationFull
        /// The body is complete (its framing says so).
        case complete
        /// The upstream's chunked coding (or trailer section) is invalid: the response cannot be completed.
        case invalid(HTTPParseError?)
    }

    /// Moves what is available of the response body from the upstream's `source` to the client's `output`, up to
    /// `highWatermark` bytes in `output` (and the chunk framing of what it re-chunks): the rest stays in `source`,
    /// where the upstream side bounds it (the socket's read watermark; for HTTP/2, the stream's window, which is
    /// given back only for bytes taken out of it). So a slow client holds at most the watermark here.
    mutating func moveResponseBody(from source: OpaquePointer, to output: OpaquePointer, highWatermark: Int) -> ResponseBodyProgress {
        let rechunk = clientFraming == .chunked
        while true {
            let available = evbuffer_get_length(source)
            guard available > 0 else { return .waiting }
            let buffered = evbuffer_get_length(output)
            if buffered >= highWatermark { return .destinationFull }
            // Body bytes moved in this pass: what is there, up to the room left below the watermark.
            let room = min(available, highWatermark - buffered)
            switch responseFraming {
            case .contentLength:
                let n = Int(min(responseRemaining, UInt64(room)))
                evbuffer_remove_buffer(source, output, n)
                record.bytesOut += n
                responseRemaining -= UInt64(n)
                if responseRemaining == 0 { return .complete }
            case .chunked:
                if let remaining = responseDecoder.dataRemaining {
                    let n = Int(min(remaining, UInt64(room)))
                    if rechunk {
                        ChunkedEncoder.chunkHeader(size: n).withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                    }
                    evbuffer_remove_buffer(source, output, n)
                    if rechunk {
                        ChunkedEncoder.chunkTrailer.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                    }
                    responseDecoder.consumedData(n)
                    record.bytesOut += n
                    continue
                }
                let window = min(available, responseDecoder.lineWindow)
                let step: ChunkedDecoder.Step
                do {
                    step = try responseDecoder.next(UnsafeRawBufferPointer(start: evbuffer_pullup(source, window), count: window))
                } catch {
                    return .invalid(error as? HTTPParseError)
                }
                switch step {
                case .skip(let n):
                    evbuffer_drain(source, n)
                case .trailerField(let n):
                    if rechunk {
                        if responseDecoder.trailerFieldsPassed == 1 { ChunkedEncoder.addLastChunkLine(to: output) }
                        evbuffer_remove_buffer(source, output, n)
                    } else {
                        evbuffer_drain(source, n)  // close-delimited for an HTTP/1.0 client: no place for trailers
                    }
                case .end(let n):
                    evbuffer_drain(source, n)
                    if rechunk { ChunkedEncoder.addEnd(to: output, afterTrailers: responseDecoder.trailerFieldsPassed > 0) }
                    return .complete
                case .data:
                    break
                case .needMore:
                    return .waiting
                }
            case .untilClose:
                if rechunk {
                    ChunkedEncoder.chunkHeader(size: room).withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                evbuffer_remove_buffer(source, output, room)
                if rechunk {
                    ChunkedEncoder.chunkTrailer.withUnsafeBytes { _ = evbuffer_add(output, $0.baseAddress, $0.count) }
                }
                record.bytesOut += room
            case .none:
                return .complete
            }
        }
    }
}

extension ChunkedEncoder {
    /// `0\r\n`, before the first trailer field passed on.
    static func addLastChunkLine(to buffer: OpaquePointer) {
        lastChunkLine.withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
    }

    /// The end of a chunked body: the last chunk without trailers, or the empty line after them.
    static func addEnd(to buffer: OpaquePointer, afterTrailers: Bool) {
        (afterTrailers ? chunkTrailer : lastChunk).withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
    }
}
