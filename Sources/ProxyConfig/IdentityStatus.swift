/// Where an identity stands at a moment: which certificate it presents, whether that one is close to
/// expiring with no successor staged, and when the choice changes next. Pure: dates in, verdict out.
public struct IdentityStatus: Sendable, Equatable {
    public enum Health: Int, Sendable, Comparable {
        case ok = 0
        /// The active certificate expires within the warning window and nothing staged takes over.
        case expiringWithoutSuccessor = 2
        case noValidCertificate = 3

        public static func < (a: Health, b: Health) -> Bool { a.rawValue < b.rawValue }
    }

    public var active: Int?
    public var health: Health
    /// The next change of the active certificate: when, and which index (nil: none valid from then on).
    public var next: (at: Int, index: Int?)?
    /// Seconds until the active certificate expires.
    public var secondsLeft: Int?

    public static func == (a: IdentityStatus, b: IdentityStatus) -> Bool {
        a.active == b.active && a.health == b.health && a.next?.at == b.next?.at && a.next?.index == b.next?.index
            && a.secondsLeft == b.secondsLeft
    }

    public static func evaluate(_ certificates: [CertificateValidity], prefer: CertificatePreference = .newest,
                                at now: Int, warnDays: Int) -> IdentityStatus {
        let active = CertificateSelection.active(certificates, at: now, prefer: prefer)
        // Walk the boundaries until the choice differs from now.
        var next: (at: Int, index: Int?)?
        var t = now
        while let boundary = CertificateSelection.nextChange(certificates, after: t) {
            let choice = CertificateSelection.active(certificates, at: boundary, prefer: prefer)
            if choice != active {
                next = (boundary, choice)
                break
            }
            t = boundary
        }
        guard let active else {
            return IdentityStatus(active: nil, health: .noValidCertificate, next: next, secondsLeft: nil)
        }
        let left = certificates[active].notAfter - now
        // A successor exists if some certificate is valid right when the active one expires.
        let expiry = certificates[active].notAfter
        let successor = certificates.indices.contains { $0 != active && certificates[$0].isValid(at: expiry) }
        let health: Health = (left < warnDays * 86_400 && !successor) ? .expiringWithoutSuccessor : .ok
        return IdentityStatus(active: active, health: health, next: next, secondsLeft: left)
    }
}
