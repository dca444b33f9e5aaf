import Testing
import ProxyConfig
@testable import Reports

@Suite struct ICalendarTests {
    @Test func textValuesAreEscaped() {
        #expect(ICalendar.text("CN=a,O=b; c\\d\ne") == "CN=a\\,O=b\\; c\\\\d\\ne")
    }

    @Test func longLinesFoldAt75OctetsWithoutSplittingCharacters() {
        let line = "SUMMARY:" + String(repeating: "é", count: 100)
        let folded = ICalendar.fold(line)
        let parts = folded.components(separatedBy: "\r\n")
        #expect(parts.count > 1)
        for part in parts { #expect(part.utf8.count <= 75) }
        for part in parts.dropFirst() { #expect(part.hasPrefix(" ")) }
        #expect(parts.enumerated().map { $0.offset == 0 ? $0.element : String($0.element.dropFirst()) }.joined() == line)
        #expect(ICalendar.fold("SHORT:x") == "SHORT:x")
    }

    @Test func renderHasOneEventWithTwoAlarms() {
        let event = ICalendar.Event(uid: "expiry-AB@mtls-proxy", start: 1_800_000_000, summary: "s, t", description: "d", alarmDaysBefore: [30, 7])
        let text = ICalendar.render([event], stamp: 1_700_000_000)
        #expect(text.hasPrefix("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:"))
        #expect(text.hasSuffix("END:VCALENDAR\r\n"))
        #expect(text.contains("DTSTART:20270115T080000Z\r\n"))
        #expect(text.contains("DTSTAMP:20231114T221320Z\r\n"))
        #expect(text.contains("SUMMARY:s\\, t\r\n"))
        #expect(text.contains("TRIGGER;RELATED=START:-P30D\r\n"))
        #expect(text.contains("TRIGGER;RELATED=START:-P7D\r\n"))
        #expect(!text.replacingOccurrences(of: "\r\n", with: "").contains("\n"))
    }

    private let day = 86_400

    private func facts(_ serial: String, _ notBefore: Int, _ notAfter: Int) -> CertificateFacts {
        CertificateFacts(subject: "CN=fusion-us,O=test", issuer: "CN=ca", serial: serial, notBefore: notBefore, notAfter: notAfter,
                         sha256: "AA:\(serial)")
    }

    @Test func anExpiryPerCertificateAndATakeoverPerStagedOne() {
        let now = 1_000 * day
        let current = ExpiryCalendar.Certificate(identity: "us", facts: facts("01", now - 300 * day, now + 65 * day), file: "a.pem")
        let staged = ExpiryCalendar.Certificate(identity: "us", facts: facts("02", now + 20 * day, now + 385 * day), file: "b.pem")
        let events = ExpiryCalendar.events(identity: "us", certificates: [current, staged], prefer: .newest, now: now)
        #expect(events.map(\.uid) == ["expiry-AA01@mtls-proxy", "expiry-AA02@mtls-proxy", "takeover-AA02@mtls-proxy"])
        #expect(events.map(\.start) == [now + 65 * day, now + 385 * day, now + 20 * day])
        // The current one is superseded on day 1020, before it expires: its expiry event has no reminders. The
        // takeover is 20 days ahead: its 30-day reminder would already be past.
        #expect(events.map(\.alarmDaysBefore) == [[], [30, 7], [7]])
        #expect(events[0].summary == "mtls-proxy: identity us certificate expires, superseded on \(UTCTime.day(now + 20 * day)) by serial 02 (CN=fusion-us,O=test, serial 01)")
        #expect(events[1].summary == "mtls-proxy: identity us certificate expires (CN=fusion-us,O=test, serial 02)")
        #expect(events[2].summary.contains("switches to its staged certificate"))
    }

    @Test func aCertificatePresentedUntilItExpiresKeepsItsReminders() {
        let now = 1_000 * day
        let current = ExpiryCalendar.Certificate(identity: "us", facts: facts("01", now - 300 * day, now + 65 * day), file: "a.pem")
        let staged = ExpiryCalendar.Certificate(identity: "us", facts: facts("02", now + 20 * day, now + 385 * day), file: "b.pem")
        // prefer = "oldest": the current one stays until it expires, then the staged one takes over.
        let events = ExpiryCalendar.events(identity: "us", certificates: [current, staged], prefer: .oldest, now: now)
        #expect(events.filter { $0.uid.hasPrefix("expiry-") }.allSatisfy { $0.alarmDaysBefore == [30, 7] })
        #expect(!events[0].summary.contains("superseded"))
        // A valid certificate that another valid one outranks all along is never presented.
        let older = ExpiryCalendar.Certificate(identity: "us", facts: facts("03", now - 400 * day, now + 30 * day), file: "c.pem")
        let newest = ExpiryCalendar.events(identity: "us", certificates: [current, older], prefer: .newest, now: now)
        #expect(newest[1].alarmDaysBefore == [])
        #expect(newest[1].summary.contains("not presented (serial 01 is, until then)"))
        #expect(ExpiryCalendar.replacement(of: 1, [current, older].map(\.facts.validity), prefer: .newest, after: now)! == (nil, 0))
    }

    /// The product's reminders are 30 and 7 days before. A certificate that expires in 5 days keeps its expiry
    /// event, but both reminders would fire in the past (a calendar shows them at once, or never): none is written.
    /// One that expires in 10 days keeps the 7-day reminder only; so does a takeover 10 days ahead.
    @Test func remindersThatWouldFallInThePastAreLeftOut() {
        #expect(ExpiryCalendar.alarmDaysBefore == [30, 7])
        let now = 1_000 * day
        let soon = ExpiryCalendar.Certificate(identity: "us", facts: facts("05", now - 300 * day, now + 5 * day), file: "a.pem")
        let events = ExpiryCalendar.events(identity: "us", certificates: [soon], prefer: .newest, now: now)
        #expect(events.map(\.uid) == ["expiry-AA05@mtls-proxy"])
        #expect(events.map(\.start) == [now + 5 * day])
        #expect(events.map(\.alarmDaysBefore) == [[]])
        let text = ICalendar.render(events, stamp: now)
        #expect(text.contains("BEGIN:VEVENT") && !text.contains("BEGIN:VALARM"))

        let tenDays = ExpiryCalendar.Certificate(identity: "us", facts: facts("0A", now - 300 * day, now + 10 * day), file: "b.pem")
        let staged = ExpiryCalendar.Certificate(identity: "us", facts: facts("0B", now + 10 * day, now + 375 * day), file: "c.pem")
        let both = ExpiryCalendar.events(identity: "us", certificates: [tenDays, staged], prefer: .oldest, now: now)
        #expect(both.map(\.uid) == ["expiry-AA0A@mtls-proxy", "expiry-AA0B@mtls-proxy", "takeover-AA0B@mtls-proxy"])
        #expect(both.map(\.alarmDaysBefore) == [[7], [30, 7], [7]])
        // Exactly at the reminder's moment is not in the future either.
        let edge = ExpiryCalendar.Certificate(identity: "us", facts: facts("07", now - 300 * day, now + 7 * day), file: "d.pem")
        #expect(ExpiryCalendar.events(identity: "us", certificates: [edge], prefer: .newest, now: now).map(\.alarmDaysBefore) == [[]])
    }

    @Test func theLocalCAHasAnExpiryEvent() {
        let event = ExpiryCalendar.localCAEvent(facts: facts("0C", 0, 900 * day), file: "/state/ca.pem", now: 0)
        #expect(event.start == 900 * day)
        #expect(event.summary == "mtls-proxy: local CA expires (CN=fusion-us,O=test, serial 0C)")
        #expect(event.alarmDaysBefore == [30, 7])
        // Five days before it expires, both reminders are past: the event stays, without them.
        #expect(ExpiryCalendar.localCAEvent(facts: facts("0C", 0, 900 * day), file: "/state/ca.pem", now: 895 * day).alarmDaysBefore == [])
    }

    @Test func withPreferOldestAStagedCertificateTakesOverWhenTheOldOneExpires() {
        let now = 1_000 * day
        let validity = [CertificateValidity(notBefore: now - 300 * day, notAfter: now + 65 * day),
                        CertificateValidity(notBefore: now + 20 * day, notAfter: now + 385 * day)]
        #expect(ExpiryCalendar.takeover(of: 1, validity, prefer: .oldest, after: now) == now + 65 * day)
        #expect(ExpiryCalendar.takeover(of: 1, validity, prefer: .newest, after: now) == now + 20 * day)
        #expect(ExpiryCalendar.takeover(of: 0, validity, prefer: .newest, after: now) == nil)
    }
}

@Suite struct ICalendarHostileTextTests {
    /// "\r\n" is one Character in Swift: matching "\n" per Character let a CRLF through unescaped, so a value
    /// with one (a file name, an identity) could start a new content line (`END:VALARM`, another property).
    @Test func crlfAndOtherControlsNeverReachTheOutputRaw() {
        let value = ICalendar.text("a\r\nEND:VEVENT\r\nb\u{0}c\u{1B}d\u{7F}e\tf\u{2028}g")
        #expect(!value.unicodeScalars.contains { $0 == "\r" || $0 == "\n" })
        #expect(!value.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7F })
        #expect(value.hasPrefix("a\\nEND:VEVENT\\nb"))
        let rendered = ICalendar.render([ICalendar.Event(uid: "u", start: 0, summary: "x\r\nATTACH:evil", description: "y\r\nz",
                                                         alarmDaysBefore: [7])], stamp: 0)
        #expect(!rendered.contains("\r\nATTACH:"))
        for line in rendered.components(separatedBy: "\r\n") { #expect(!line.contains("\r") && !line.contains("\n")) }
    }
}
