import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// Where access records go: standard output, a file (opened for appending), or nowhere. Shared by the workers;
/// each writes through its own `AccessLogWriter`, which hands over whole lines in batches.
final class AccessLog: @unchecked Sendable {
    let settings: LogSettings
    private let fd: Int32
    private let ownsFD: Bool
    /// Writes of up to PIPE_BUF bytes to a pipe are atomic; larger ones may interleave with another writer's.
    /// A regular file opened for appending takes a whole write(2) at once.
    private let atomicWriteLimit: Int?

    init(_ settings: LogSettings) throws {
        self.settings = settings
        switch settings.access {
        case .stdout:
            fd = 1
            ownsFD = false
        case .off:
            fd = -1
            ownsFD = false
        case .file(let path):
            let opened = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard opened >= 0 else {
                throw ConfigError(file: "", key: "log.access", message: "cannot open \(path) for appending: \(String(cString: strerror(errno)))")
            }
            fd = opened
            ownsFD = true
        }
        var st = stat()
        if fd >= 0, fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
            atomicWriteLimit = nil
        } else {
            atomicWriteLimit = Int(PIPE_BUF)
        }
    }

    deinit { if ownsFD { close(fd) } }

    var enabled: Bool { fd >= 0 }
    var json: Bool { settings.format == .json }

    /// Writes `count` bytes of whole lines. Into a pipe or a terminal, in pieces of at most PIPE_BUF bytes cut
    /// at line ends (a longer line alone), so that lines from several workers never interleave.
    func write(_ bytes: UnsafePointer<UInt8>, count: Int) {
        guard fd >= 0, count > 0 else { return }
        guard let limit = atomicWriteLimit, count > limit else {
            writeFully(bytes, count: count)
            return
        }
        Self.wholeLinePieces(bytes, count: count, limit: limit) { start, end in
            writeFully(bytes + start, count: end - start)
        }
    }

    /// Cuts `count` bytes of whole lines into consecutive pieces [start, end) of at most `limit` bytes, each
    /// ending with a line end; a line longer than `limit` is a piece of its own. Stops when `body` says false.
    static func wholeLinePieces(_ bytes: UnsafePointer<UInt8>, count: Int, limit: Int, _ body: (Int, Int) -> Bool) {
        var start = 0
        while start < count {
            var end = min(count, start + limit)
            if end < count {
                // The last line end within the limit, or else the end of the first (long) line.
                var cut = end
                while cut > start && bytes[cut - 1] != 10 { cut -= 1 }
                if cut > start {
                    end = cut
                } else {
                    while end < count && bytes[end - 1] != 10 { end += 1 }
                }
            }
            guard body(start, end) else { return }
            start = end
        }
    }

    @discardableResult
    private func writeFully(_ bytes: UnsafePointer<UInt8>, count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let n = Glibc.write(fd, bytes + offset, count - offset)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return false  // a full disk or a closed pipe: the lines are lost, the proxy goes on
            }
            offset += n
        }
        return true
    }
}
