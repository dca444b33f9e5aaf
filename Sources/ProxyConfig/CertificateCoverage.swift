/// How long an identity stays covered by some valid certificate, counting the staged ones that take over.
/// Pure: dates in, a moment out. Backs `mtls_proxy_identity_certificate_coverage_end_timestamp_seconds`, which
/// the expiry alerts watch: a staged successor pushes it out, so an alert on it fires only when nothing does.
public enum CertificateCoverage {
    /// The first moment from `now` on at which no certificate is valid, or nil if none is valid at `now`.
    /// A certificate continues the coverage when it is valid at the moment the coverage would otherwise end.
    public static func end(_ certificates: [CertificateValidity], at now: Int) -> Int? {
        var end: Int?
        var point = now
        while true {
            let valid = certificates.filter { $0.isValid(at: point) }
            guard let furthest = valid.map(\.notAfter).max() else { return end }
            if let end, furthest <= end { return end }
            end = furthest
            point = furthest
        }
    }
}
