import Logging
import ProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// The proxy's own log lines (not the access log) on stderr: text or JSON (`[log] operational_format`).
/// Under systemd's journal (`$JOURNAL_STREAM` names stderr) a line carries no timestamp of its own, since the
/// journal stamps every line, and text lines start with a syslog priority (`<4>`) that the journal reads as
/// the line's level.
public struct OperationalLogFormat: Sendable, Equatable {
    public var json: Bool
    public var journal: Bool

    public init(json: Bool, journal: Bool) {
        self.json = json
        self.journal = journal
    }

    /// syslog priority of a level: what `journalctl -p` filters on.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// One line, with its newline. `epochMillis` is ignored under the journal.
    func line(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata, epochMillis: Int) -> String {
        let flat = metadata.sorted { $0.key < $1.key }
        if json {
            var s = "{"
            if !journal { s += "\"time\":\(OperationalLogFormat.quoted(UTCTime.iso8601(millis: epochMillis)))," }
            s += "\"level\":\(OperationalLogFormat.quoted(level.rawValue)),\"logger\":\(OperationalLogFormat.quoted(label)),\"message\":\(OperationalLogFormat.quoted(message))"
            for (key, value) in flat { s += ",\(OperationalLogFormat.quoted(key)):\(OperationalLogFormat.quoted("\(value)"))" }
            return s + "}\n"
        }
        var s = journal ? "<\(Self.priority(level))>" : "\(UTCTime.iso8601(millis: epochMillis)) "
        s += "\(level.rawValue) \(label): "
        if !flat.isEmpty { s += flat.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + " " }
        // A message never spans lines: the journal and log shippers split on newlines.
        return s + message.split(whereSeparator: \.isNewline).joined(separator: " ") + "\n"
    }

    /// Whether `$JOURNAL_STREAM` ("device:inode") names the file that stderr is: the documented way to tell
    /// that a service's stderr goes to the journal (and not to a pipe or file the service opened itself).
    public static func stderrIsJournal(_ environment: String? = getenv("JOURNAL_STREAM").map { String(cString: $0) }) -> Bool {
        guard let environment else { return false }
        var st = stat()
        guard fstat(STDERR_FILENO, &st) == 0 else { return false }
        return matches(environment, device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    static func matches(_ journalStream: String, device: UInt64, inode: UInt64) -> Bool {
        let parts = journalStream.split(separator: ":")
        guard parts.count == 2, let d = UInt64(parts[0]), let i = UInt64(parts[1]) else { return false }
        return d == device && i == inode
    }
}

/// A swift-log handler that writes `OperationalLogFormat` lines to stderr, one write a line.
public struct OperationalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let format: OperationalLogFormat

    public init(label: String, level: Logger.Level, format: OperationalLogFormat) {
        self.label = label
        self.logLevel = level
        self.format = format
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let text = format.line(level: event.level, label: label, message: "\(event.message)", metadata: merged,
                               epochMillis: currentEpochMillis())
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(STDERR_FILENO, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }
                offset += n
            }
        }
    }

    /// The handler for a config: StreamLogHandler's familiar text unless the journal or JSON asks otherwise.
    public static func factory(settings: LogSettings, journal: Bool = OperationalLogFormat.stderrIsJournal()) -> @Sendable (String) -> any LogHandler {
        let level = Logger.Level(rawValue: settings.level.rawValue) ?? .info
        let format = OperationalLogFormat(json: settings.operationalFormat == .json, journal: journal)
        return { label in
            if !format.json && !format.journal {
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            return OperationalLogHandler(label: label, level: level, format: format)
        }
    }
}
