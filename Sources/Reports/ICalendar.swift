import ProxyConfig

/// An RFC 5545 calendar of certificate dates, for `mtls-proxy certs --ics`: the text format, escaping and
/// line folding. Which events to write is `ExpiryCalendar`'s job.
public enum ICalendar {
    public struct Event: Equatable, Sendable {
        /// Stable across runs, so that importing the file again updates the events instead of adding copies.
        public var uid: String
        public var start: Int
        public var durationMinutes: Int
        public var summary: String
        public var description: String
        /// A reminder this many days before `start`, for each entry.
        public var alarmDaysBefore: [Int]

        public init(uid: String, start: Int, durationMinutes: Int = 30, summary: String, description: String, alarmDaysBefore: [Int]) {
            self.uid = uid
            self.start = start
            self.durationMinutes = durationMinutes
            self.summary = summary
            self.description = description
            self.alarmDaysBefore = alarmDaysBefore
        }
    }

    /// The whole VCALENDAR, CRLF line endings, lines folded at 75 octets.
    public static func render(_ events: [Event], stamp: Int) -> String {
        var lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//mtls-proxy//certificate dates//EN", "CALSCALE:GREGORIAN",
                     "METHOD:PUBLISH", "X-WR-CALNAME:\(text("mtls-proxy certificates"))"]
        for event in events {
            lines += ["BEGIN:VEVENT",
                      "UID:\(text(event.uid))",
                      "DTSTAMP:\(UTCTime.iCalendar(stamp))",
                      "DTSTART:\(UTCTime.iCalendar(event.start))",
                      "DURATION:PT\(event.durationMinutes)M",
                      "SUMMARY:\(text(event.summary))",
                      "DESCRIPTION:\(text(event.description))",
                      "TRANSP:TRANSPARENT"]
            for days in event.alarmDaysBefore {
                lines += ["BEGIN:VALARM",
                          "ACTION:DISPLAY",
                          "TRIGGER;RELATED=START:-P\(days)D",
                          "DESCRIPTION:\(text("In \(days) days: \(event.summary)"))",
                          "END:VALARM"]
            }
            lines.append("END:VEVENT")
        }
        lines.append("END:VCALENDAR")
        return lines.map(fold).joined(separator: "\r\n") + "\r\n"
    }

    /// A TEXT value: backslash, semicolon, comma and newline escaped (RFC 5545 3.3.11); CR and every other
    /// control character (TEXT allows none but tab) left out. Goes by Unicode scalar: "\r\n" is one Character.
    public static func text(_ value: String) -> String {
        var out = ""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case ";": out += "\\;"
            case ",": out += "\\,"
            case "\n", "\u{2028}", "\u{2029}", "\u{85}": out += "\\n"
            case "\t": out.unicodeScalars.append(scalar)
            default:
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) { continue }
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Splits a content line into lines of at most 75 octets, each continuation starting with a space
    /// (RFC 5545 3.1), never inside a UTF-8 character.
    public static func fold(_ line: String) -> String {
        var result: [String] = []
        var current = ""
        var octets = 0
        for c in line {
            let size = String(c).utf8.count
            let limit = result.isEmpty ? 75 : 74  // a continuation line's leading space counts
            if octets + size > limit {
                result.append(current)
                current = ""
                octets = 0
            }
            current.append(c)
            octets += size
        }
        result.append(current)
        return result.enumerated().map { $0.offset == 0 ? $0.element : " " + $0.element }.joined(separator: "\r\n")
    }
}
