import Testing
@testable import ProxyServer

/// A reload's old runtime is released by the main thread, once nothing else holds it.
@Suite struct RetiredRuntimesTests {
    final class Table {}

    @Test func aRetiredRuntimeIsReleasedOnlyWhenNothingElseHoldsIt() {
        var retired = RetiredRuntimes<Table>()
        var inUse: Table? = Table()
        weak var watch = inUse
        retired.retire(inUse!)
        #expect(retired.releaseUnused() == 1)  // a worker (here: inUse) still holds it
        #expect(watch != nil)
        inUse = nil
        #expect(retired.releaseUnused() == 0)
        #expect(watch == nil)  // freed by releaseUnused, on the caller's thread
    }

    @Test func eachIsReleasedOnItsOwn() {
        var retired = RetiredRuntimes<Table>()
        let held = Table()
        retired.retire(Table())
        retired.retire(held)
        retired.retire(Table())
        #expect(retired.releaseUnused() == 1)
        #expect(retired.count == 1)
        _ = held
    }
}
