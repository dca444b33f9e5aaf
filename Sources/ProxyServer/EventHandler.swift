import CEventTLS

/// Whatever receives libevent callbacks (client and upstream connections, relays): one set of C trampolines for
/// all, each passing its receiver unretained. The receiver must outlive its bufferevents, streams and timers, or
/// clear them first. Each trampoline holds the receiver for the length of the call (`withExtendedLifetime`), as
/// `SocketStream`'s and `UpstreamConnection`'s do: a callback may drop the last other reference to it (a relay
/// that ends tells its connection, which lets go of it; a connection's teardown leaves the worker's registry).
class EventHandler {
    func readable(_ bev: OpaquePointer) {}
    func writable(_ bev: OpaquePointer) {}
    func event(_ bev: OpaquePointer, _ what: Int16) {}
    func timerFired() {}
    /// A `SocketStream`'s callbacks: the same as a bufferevent's, with the same `BEV_EVENT_*` flags.
    func streamReadable(_ stream: SocketStream) {}
    func streamWritable(_ stream: SocketStream) {}
    func streamEvent(_ stream: SocketStream, _ what: Int16) {}

    final var callbackArgument: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    /// Routes `bev`'s read, write and event callbacks to this handler.
    final func setCallbacks(_ bev: OpaquePointer) {
        bufferevent_setcb(bev, eventHandlerRead, eventHandlerWrite, eventHandlerEvent, callbackArgument)
    }

    /// A timer that calls `timerFired()`; the caller frees it with `event_free`.
    final func makeTimer(base: OpaquePointer) -> OpaquePointer? {
        mtls_evtimer_new(base, eventHandlerTimer, callbackArgument)
    }
}

private func eventHandlerRead(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev, let ctx else { return }
    let handler = Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(handler) { handler.readable(bev) }
}

private func eventHandlerWrite(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev, let ctx else { return }
    let handler = Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(handler) { handler.writable(bev) }
}

private func eventHandlerEvent(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev, let ctx else { return }
    let handler = Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(handler) { handler.event(bev, what) }
}

private func eventHandlerTimer(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx else { return }
    let handler = Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue()
    withExtendedLifetime(handler) { handler.timerFired() }
}
