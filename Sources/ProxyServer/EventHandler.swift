import CEventTLS

/// Whatever receives libevent callbacks (client and upstream connections, relays): one set of C trampolines for
/// all, each passing its receiver unretained. The receiver must outlive its bufferevents, streams and timers, or
/// clear them first.
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
    Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue().readable(bev)
}

private func eventHandlerWrite(_ bev: OpaquePointer?, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev, let ctx else { return }
    Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue().writable(bev)
}

private func eventHandlerEvent(_ bev: OpaquePointer?, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let bev, let ctx else { return }
    Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue().event(bev, what)
}

private func eventHandlerTimer(_ fd: Int32, _ what: Int16, _ ctx: UnsafeMutableRawPointer?) {
    guard let ctx else { return }
    Unmanaged<EventHandler>.fromOpaque(ctx).takeUnretainedValue().timerFired()
}
