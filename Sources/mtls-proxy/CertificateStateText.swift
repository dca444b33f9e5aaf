import ProxyConfig
import Reports

/// How `check` and `certs` name a certificate's state in text: `active`, `staged, takes over DATE`,
/// `superseded` (valid, but another valid one is presented and this one never will be again), `expired`.
/// The JSON reports keep their own state names (docs/check-json.md).
struct CertificateStateText {
    /// `active`, `staged`, `superseded` or `expired`.
    var word: String
    /// When a staged certificate takes over, or why it never will.
    var detail: String?

    var full: String { detail.map { "\(word), \($0)" } ?? word }

    init(of index: Int, _ certificates: [CertificateValidity], status: IdentityStatus, prefer: CertificatePreference, now: Int) {
        let c = certificates[index]
        if index == status.active {
            word = "active"
        } else if c.notAfter <= now {
            word = "expired"
        } else if let at = ExpiryCalendar.takeover(of: index, certificates, prefer: prefer, after: now) {
            word = "staged"
            detail = "takes over \(formatDate(at))"
        } else if c.notBefore > now {
            word = "staged"
            detail = "never presented (another certificate is preferred all the while it is valid)"
        } else {
            word = "superseded"
        }
    }
}

/// `label` and `value` on lines of at most `width` columns: the label in a column `labelWidth` wide after
/// `indent` spaces, the value broken after a `,`, `:`, `/` or space where it can be (else where it must), its
/// continuation lines under its start.
func foldedField(_ label: String, _ value: String, indent: Int, labelWidth: Int, width: Int = 80) -> [String] {
    let lead = String(repeating: " ", count: indent)
    let first = lead + label + String(repeating: " ", count: max(1, labelWidth - label.count))
    let room = max(16, width - first.count)
    var lines: [String] = []
    var rest = Substring(value)
    while rest.count > room {
        let window = rest.prefix(room)
        let cut = window.lastIndex { ",:/ ".contains($0) }.map { window.index(after: $0) } ?? window.endIndex
        lines.append(String(rest[..<cut]).trimmingTrailingSpaces)
        rest = rest[cut...].drop { $0 == " " }
    }
    lines.append(String(rest))
    return lines.enumerated().map { i, text in
        (i == 0 ? first : String(repeating: " ", count: first.count)) + text
    }
}

extension String {
    var trimmingTrailingSpaces: String {
        var s = Substring(self)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
