import Testing
import ProxyConfig

/// Every form the proxy writes a UTC time in, from one place.
@Suite struct UTCTimeTests {
    @Test func everyFormOfOneMoment() {
        let t = 1_800_000_000  // 2027-01-15 08:00:00 UTC
        #expect(UTCTime.readable(t + 9) == "2027-01-15 08:00:09 UTC")
        #expect(UTCTime.readable(t + 9, seconds: false) == "2027-01-15 08:00 UTC")
        #expect(UTCTime.rfc3339(t) == "2027-01-15T08:00:00Z")
        #expect(UTCTime.iCalendar(t) == "20270115T080000Z")
        #expect(UTCTime.compactDate(t) == "20270115")
        #expect(UTCTime.day(t) == "2027-01-15")
        #expect(UTCTime.iso8601(millis: t * 1000 + 7) == "2027-01-15T08:00:00.007Z")
    }

    @Test func beforeNineteenSeventyTheMillisecondsCountForward() {
        #expect(UTCTime.iso8601(millis: -1) == "1969-12-31T23:59:59.999Z")
        #expect(UTCTime.readable(-60) == "1969-12-31 23:59:00 UTC")
    }
}
