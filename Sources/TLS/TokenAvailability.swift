/// Whether a token key signs, and what its next signature should do: the back-off after failures (1 s, doubling
/// to 30 s), when to restart the engine and load the key again. Pure: times are monotonic milliseconds given by
/// the caller (`TokenSigner`, which holds the key and does the OpenSSL side).
public struct TokenAvailability: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case available
        /// Since when, why, when the last attempt failed and when to try again.
        case unavailable(sinceMillis: Int, reason: String, lastFailureMillis: Int, retryAtMillis: Int)
    }

    /// What a signature should do next.
    public enum Next: Sendable, Equatable {
        /// Sign with the key held.
        case sign
        /// Load the key again first: after an engine restart that took it (`restartFirst` false), or once the
        /// back-off after a failure is over (`restartFirst`: unless the engine restarted after `failedAtMillis`).
        case reload(restartFirst: Bool, failedAtMillis: Int)
        /// Fail at once, without asking the token, until `retryAtMillis`.
        case wait(reason: String, retryAtMillis: Int)
    }

    public static let firstBackoffMillis = 1000
    public static let maxBackoffMillis = 30_000

    public private(set) var state = State.available
    /// Failures since the last success (the back-off grows with them).
    public private(set) var failures = 0

    public init() {}

    public var isAvailable: Bool { state == .available }

    /// The next step of a signature at `now`, holding a key or not (a failed or restarted one was let go).
    public func next(at now: Int, holdingKey: Bool) -> Next {
        if holdingKey { return .sign }
        guard case .unavailable(_, let reason, let lastFailure, let retryAt) = state else {
            return .reload(restartFirst: false, failedAtMillis: 0)
        }
        if now < retryAt { return .wait(reason: reason, retryAtMillis: retryAt) }
        return .reload(restartFirst: true, failedAtMillis: lastFailure)
    }

    public mutating func succeeded() {
        state = .available
        failures = 0
    }

    /// A signature or a load failed at `now`: unavailable (since the first failure in a row) until the back-off.
    public mutating func failed(_ reason: String, at now: Int) {
        let backoff = min(Self.firstBackoffMillis << min(failures, 10), Self.maxBackoffMillis)
        failures += 1
        let since: Int
        if case .unavailable(let s, _, _, _) = state { since = s } else { since = now }
        state = .unavailable(sinceMillis: since, reason: reason, lastFailureMillis: now, retryAtMillis: now + backoff)
    }
}
