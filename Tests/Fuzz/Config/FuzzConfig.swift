// libFuzzer target: the whole config loader (TOML parsing, validation, error reporting) on arbitrary text.
// scripts/fuzz builds it with `swift build --sanitize=fuzzer -Xswiftc -DFUZZING`; a plain build gets a stub.
import ProxyConfig

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        let config = try ConfigLoader.parse(text, file: "fuzz.conf", baseDirectory: "/nonexistent")
        // A valid config routes: every route's decision is one of the three.
        _ = config.router.match(host: "api.example.com", port: 443, path: "/")
        precondition(config.routes.allSatisfy { $0.index >= 1 })
    } catch let error as ConfigError {
        // Every mistake names the file.
        precondition(error.file == "fuzz.conf")
    } catch {
        preconditionFailure("ConfigLoader threw something other than ConfigError: \(error)")
    }
    return 0
}
#else
@main
struct FuzzConfigStub {
    static func main() {
        print("build with scripts/fuzz config to get the fuzzer")
    }
}
#endif
