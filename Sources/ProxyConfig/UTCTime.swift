#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// UTC times in every form the proxy writes them (logs, errors, the command line, the JSON and iCalendar
/// reports), from one `gmtime_r`. The access log's hot path formats its own time in place
/// (`LogLineBuffer.iso8601`) from `parts`, once a second.
public enum UTCTime {
    /// The broken-down UTC time of `epoch` (seconds since 1970).
    public static func parts(_ epoch: Int) -> tm {
        var time = time_t(epoch)
        var result = tm()
        gmtime_r(&time, &result)
        return result
    }

    /// "2027-03-02 14:05:09 UTC", or without the seconds: for people (logs, errors, the command line).
    public static func readable(_ epoch: Int, seconds: Bool = true) -> String {
        let p = parts(epoch)
        let time = "\(pad(p.tm_hour)):\(pad(p.tm_min))" + (seconds ? ":\(pad(p.tm_sec))" : "")
        return "\(pad(p.tm_year + 1900, 4))-\(pad(p.tm_mon + 1))-\(pad(p.tm_mday)) \(time) UTC"
    }

    /// "2027-03-02T14:05:09.123Z": the operational log and the readiness report.
    public static func iso8601(millis: Int) -> String {
        let second = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let p = parts(second)
        return "\(date(p))T\(pad(p.tm_hour)):\(pad(p.tm_min)):\(pad(p.tm_sec)).\(pad(Int32(millis - second * 1000), 3))Z"
    }

    /// "2027-03-01T12:00:00Z" (RFC 3339): the JSON reports.
    public static func rfc3339(_ epoch: Int) -> String {
        let p = parts(epoch)
        return "\(date(p))T\(pad(p.tm_hour)):\(pad(p.tm_min)):\(pad(p.tm_sec))Z"
    }

    /// "20270301T120000Z" (an RFC 5545 DATE-TIME in UTC): the expiry calendar.
    public static func iCalendar(_ epoch: Int) -> String {
        let p = parts(epoch)
        return "\(pad(p.tm_year + 1900, 4))\(pad(p.tm_mon + 1))\(pad(p.tm_mday))T\(pad(p.tm_hour))\(pad(p.tm_min))\(pad(p.tm_sec))Z"
    }

    /// "20270301" (a compact UTC date, for file names).
    public static func compactDate(_ epoch: Int) -> String {
        String(iCalendar(epoch).prefix(8))
    }

    /// "2027-03-01": the day alone.
    public static func day(_ epoch: Int) -> String { date(parts(epoch)) }

    private static func date(_ p: tm) -> String {
        "\(pad(p.tm_year + 1900, 4))-\(pad(p.tm_mon + 1))-\(pad(p.tm_mday))"
    }

    static func pad(_ v: Int32, _ width: Int = 2) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }
}
