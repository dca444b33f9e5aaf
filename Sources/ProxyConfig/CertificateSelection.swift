/// What the proxy knows of one configured certificate when choosing which to present.
public struct CertificateValidity: Sendable, Equatable {
    /// Seconds since 1970.
    public var notBefore: Int
    public var notAfter: Int

    public init(notBefore: Int, notAfter: Int) {
        self.notBefore = notBefore
        self.notAfter = notAfter
    }

    public func isValid(at now: Int) -> Bool { notBefore <= now && now < notAfter }
}

public enum CertificatePreference: String, Sendable {
    /// The valid certificate with the latest notBefore: next year's takes over as soon as it is valid.
    case newest
    /// The valid certificate with the earliest notBefore: keep the old one until it expires.
    case oldest
}

/// Picks the certificate to present now, and says when that choice next changes. Pure: dates in, index out.
public enum CertificateSelection {
    /// Index of the certificate to present at `now`, or nil if none is valid.
    public static func active(_ certificates: [CertificateValidity], at now: Int, prefer: CertificatePreference = .newest) -> Int? {
        let valid = certificates.indices.filter { certificates[$0].isValid(at: now) }
        switch prefer {
        case .newest:
            return valid.max { certificates[$0].notBefore < certificates[$1].notBefore }
        case .oldest:
            return valid.min { certificates[$0].notBefore < certificates[$1].notBefore }
        }
    }

    /// The next moment after `now` at which `active` may give a different answer: a notBefore or notAfter boundary.
    public static func nextChange(_ certificates: [CertificateValidity], after now: Int) -> Int? {
        certificates.flatMap { [$0.notBefore, $0.notAfter] }.filter { $0 > now }.min()
    }
}
