#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// UTC timestamps in the two forms the reports use.
public enum ReportTime {
    /// `2027-03-01T12:00:00Z` (RFC 3339).
    public static func rfc3339(_ epoch: Int) -> String {
        let t = parts(epoch)
        return "\(pad(t.tm_year + 1900, 4))-\(pad(t.tm_mon + 1))-\(pad(t.tm_mday))T\(pad(t.tm_hour)):\(pad(t.tm_min)):\(pad(t.tm_sec))Z"
    }

    /// `20270301T120000Z` (an RFC 5545 DATE-TIME in UTC).
    public static func iCalendar(_ epoch: Int) -> String {
        let t = parts(epoch)
        return "\(pad(t.tm_year + 1900, 4))\(pad(t.tm_mon + 1))\(pad(t.tm_mday))T\(pad(t.tm_hour))\(pad(t.tm_min))\(pad(t.tm_sec))Z"
    }

    /// `20270301` (a compact UTC date, for file names).
    public static func compactDate(_ epoch: Int) -> String {
        String(iCalendar(epoch).prefix(8))
    }

    static func parts(_ epoch: Int) -> tm {
        var time = time_t(epoch)
        var t = tm()
        gmtime_r(&time, &t)
        return t
    }

    static func pad(_ v: Int32, _ width: Int = 2) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }
}
