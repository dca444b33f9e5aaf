import ProxyConfig

/// The events of `mtls-proxy certs --ics`: every configured certificate's expiry, and the moment each staged
/// certificate takes over, each with reminders 30 and 7 days before, those still ahead of `now` (a reminder
/// already past would pop up at once on import, or never). A certificate that another one replaces before it
/// expires keeps its expiry event, without reminders, saying when and by which it is superseded: nothing is to
/// be done when it expires.
public enum ExpiryCalendar {
    public static let alarmDaysBefore = [30, 7]

    /// The reminders for an event at `start` that fall after `now`.
    public static func alarms(before start: Int, now: Int) -> [Int] {
        alarmDaysBefore.filter { start - $0 * 86_400 > now }
    }

    public struct Certificate: Sendable {
        public var identity: String
        public var facts: CertificateFacts
        public var file: String

        public init(identity: String, facts: CertificateFacts, file: String) {
            self.identity = identity
            self.facts = facts
            self.file = file
        }
    }

    /// `certificates` are one identity's, in config order.
    public static func events(identity: String, certificates: [Certificate], prefer: CertificatePreference, now: Int) -> [ICalendar.Event] {
        let validity = certificates.map(\.facts.validity)
        var events: [ICalendar.Event] = []
        for (i, certificate) in certificates.enumerated() {
            let f = certificate.facts
            let fingerprint = f.sha256.replacingColons()
            let name = "\(f.subject), serial \(f.serial)"
            let details = """
                Subject: \(f.subject)
                Issuer: \(f.issuer)
                Serial: \(f.serial)
                SHA-256: \(f.sha256)
                File: \(certificate.file)
                """
            if f.notAfter > now, let replaced = replacement(of: i, validity, prefer: prefer, after: now) {
                let successor = certificates[replaced.by].facts.serial
                let when = replaced.at.map { "superseded on \(UTCTime.day($0)) by serial \(successor)" }
                    ?? "not presented (serial \(successor) is, until then)"
                let story = replaced.at.map {
                    "From \(UTCTime.rfc3339($0)) identity \(identity) presents certificate #\(replaced.by + 1) (serial \(successor)) instead."
                } ?? "Identity \(identity) presents certificate #\(replaced.by + 1) (serial \(successor)) instead, until then."
                events.append(ICalendar.Event(
                    uid: "expiry-\(fingerprint)@mtls-proxy",
                    start: f.notAfter,
                    summary: "mtls-proxy: identity \(identity) certificate expires, \(when) (\(name))",
                    description: """
                    The client certificate #\(i + 1) of identity \(identity) expires at \(UTCTime.rfc3339(f.notAfter)), after it is no longer presented. \(story) Nothing is to be done when it expires.
                    \(details)
                    """,
                    alarmDaysBefore: []))
            } else {
                events.append(ICalendar.Event(
                    uid: "expiry-\(fingerprint)@mtls-proxy",
                    start: f.notAfter,
                    summary: "mtls-proxy: identity \(identity) certificate expires (\(name))",
                    description: """
                    The client certificate #\(i + 1) of identity \(identity) expires at \(UTCTime.rfc3339(f.notAfter)).
                    \(details)
                    Renew: mtls-proxy csr \(identity) --out DIR, have the CSR signed, stage the certificate, then mtls-proxy check.
                    """,
                    alarmDaysBefore: alarms(before: f.notAfter, now: now)))
            }
            if f.notBefore > now, let at = takeover(of: i, validity, prefer: prefer, after: now) {
                events.append(ICalendar.Event(
                    uid: "takeover-\(fingerprint)@mtls-proxy",
                    start: at,
                    summary: "mtls-proxy: identity \(identity) switches to its staged certificate (\(name))",
                    description: """
                    From \(UTCTime.rfc3339(at)) identity \(identity) presents certificate #\(i + 1).
                    Subject: \(f.subject)
                    Serial: \(f.serial)
                    SHA-256: \(f.sha256)
                    File: \(certificate.file)
                    Make sure the services that allowlist certificates know it: mtls-proxy certs \(identity) --pem --all.
                    """,
                    alarmDaysBefore: alarms(before: at, now: now)))
            }
        }
        return events
    }

    /// The local CA's expiry ([intercept]): after it, workflows stop trusting the intercepted tunnels.
    public static func localCAEvent(facts f: CertificateFacts, file: String, now: Int) -> ICalendar.Event {
        ICalendar.Event(
            uid: "expiry-\(f.sha256.replacingColons())@mtls-proxy",
            start: f.notAfter,
            summary: "mtls-proxy: local CA expires (\(f.subject), serial \(f.serial))",
            description: """
            The local CA that signs intercepted tunnels expires at \(UTCTime.rfc3339(f.notAfter)).
            File: \(file)
            SHA-256: \(f.sha256)
            Make a new one (mtls-proxy ca init, after moving the old files away) and install it in the workflows' trust store.
            """,
            alarmDaysBefore: alarms(before: f.notAfter, now: now))
    }

    /// Whether another certificate is presented when certificate `index` expires: which one (`by`), and when
    /// `index` stops being presented (`at`; nil when it is not presented from `now` on at all). Nil when
    /// `index` is presented until it expires.
    public static func replacement(of index: Int, _ certificates: [CertificateValidity], prefer: CertificatePreference,
                                   after now: Int) -> (at: Int?, by: Int)? {
        let end = certificates[index].notAfter
        guard end > now, let last = CertificateSelection.active(certificates, at: end - 1, prefer: prefer), last != index else {
            return nil
        }
        var presented = CertificateSelection.active(certificates, at: now, prefer: prefer) == index
        var stopped: Int?
        var t = now
        while let boundary = CertificateSelection.nextChange(certificates, after: t), boundary < end {
            let now = CertificateSelection.active(certificates, at: boundary, prefer: prefer) == index
            if presented && !now { stopped = boundary }
            presented = now
            t = boundary
        }
        return (stopped, last)
    }

    /// The first moment after `now` at which certificate `index` becomes the one presented, or nil if it never does.
    public static func takeover(of index: Int, _ certificates: [CertificateValidity], prefer: CertificatePreference, after now: Int) -> Int? {
        var t = now
        while let boundary = CertificateSelection.nextChange(certificates, after: t) {
            if boundary >= certificates[index].notAfter { return nil }
            if CertificateSelection.active(certificates, at: boundary, prefer: prefer) == index { return boundary }
            t = boundary
        }
        return nil
    }
}

extension String {
    func replacingColons() -> String { String(filter { $0 != ":" }) }
}
