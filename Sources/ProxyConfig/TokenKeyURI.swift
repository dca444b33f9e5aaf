/// An RFC 7512 `pkcs11:` URI naming a private key on a PKCS#11 token, with the two query attributes the proxy
/// honours: `module-path` (the PKCS#11 library) and `pin-source` (`file:/path`, or `env:NAME`, where the PIN is
/// read from). `pin-value` is refused: it would put a secret in the config. Pure; the `TLS` module loads it.
public struct TokenKeyURI: Sendable, Hashable, CustomStringConvertible {
    /// The URI as written (it holds no secret: `pin-value` is refused).
    public var text: String
    /// `pkcs11:` and the path attributes only: what the PKCS#11 engine is asked to load.
    public var objectURI: String
    public var modulePath: String?
    public var pinSource: SecretSource?
    /// The `type` path attribute (`private`, `cert`, ...), lowercased, when given.
    public var objectType: String?

    public var description: String { text }

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case notPKCS11
        case pinValue
        case badAttribute(String)
        case badPinSource
        case relativeModulePath
        case noObject

        public var description: String {
            switch self {
            case .notPKCS11: return "expected a pkcs11: URI (RFC 7512)"
            case .pinValue: return "pin-value puts the PIN in the config: use pin-source=file:/path (a file readable only by the proxy) or pin-source=env:NAME"
            case .badAttribute(let name): return "malformed attribute \"\(name)\" (expected name=value, percent-encoded)"
            case .badPinSource: return "pin-source must be file:/absolute/path or env:NAME"
            case .relativeModulePath: return "module-path must be an absolute path to the PKCS#11 library, such as /usr/lib/softhsm/libsofthsm2.so"
            case .noObject: return "the URI names no object: give at least object= or id= (and type=private for a key, type=cert for a certificate)"
            }
        }
    }

    /// This URI, with `module-path` and `pin-source` taken from `other` where it has none (a certificate's URI
    /// next to its key's on the same token).
    public func inheriting(from other: TokenKeyURI) -> TokenKeyURI {
        var uri = self
        if uri.modulePath == nil { uri.modulePath = other.modulePath }
        if uri.pinSource == nil { uri.pinSource = other.pinSource }
        return uri
    }

    public static func isTokenURI(_ text: String) -> Bool {
        text.utf8.count >= 7 && text.prefix(7).lowercased() == "pkcs11:"
    }

    public static func parse(_ text: String) -> Result<TokenKeyURI, Problem> {
        guard isTokenURI(text) else { return .failure(.notPKCS11) }
        let body = text.dropFirst(7)
        let pathPart: Substring
        let queryPart: Substring?
        if let q = body.firstIndex(of: "?") {
            pathPart = body[..<q]
            queryPart = body[body.index(after: q)...]
        } else {
            pathPart = body
            queryPart = nil
        }
        var names: Set<String> = []
        var type: String?
        for attribute in pathPart.split(separator: ";", omittingEmptySubsequences: true) {
            guard let eq = attribute.firstIndex(of: "="), eq != attribute.startIndex else { return .failure(.badAttribute(String(attribute.prefix(20)))) }
            let name = attribute[..<eq].lowercased()
            if name == "pin-value" { return .failure(.pinValue) }
            guard let value = percentDecode(attribute[attribute.index(after: eq)...]) else { return .failure(.badAttribute(name)) }
            if name == "type" { type = value.lowercased() }
            names.insert(name)
        }
        guard names.contains("object") || names.contains("id") else { return .failure(.noObject) }
        var uri = TokenKeyURI(text: text, objectURI: "pkcs11:" + pathPart, modulePath: nil, pinSource: nil, objectType: type)
        for attribute in (queryPart ?? "").split(separator: "&", omittingEmptySubsequences: true) {
            guard let eq = attribute.firstIndex(of: "="), eq != attribute.startIndex else { return .failure(.badAttribute(String(attribute.prefix(20)))) }
            let name = attribute[..<eq].lowercased()
            if name == "pin-value" { return .failure(.pinValue) }
            guard let value = percentDecode(attribute[attribute.index(after: eq)...]) else { return .failure(.badAttribute(name)) }
            switch name {
            case "module-path":
                guard value.hasPrefix("/") else { return .failure(.relativeModulePath) }
                uri.modulePath = value
            case "pin-source":
                if value.hasPrefix("file:") {
                    var path = String(value.dropFirst(5))
                    if path.hasPrefix("//") { path = String(path.dropFirst(2)) }  // file:///path
                    guard path.hasPrefix("/") else { return .failure(.badPinSource) }
                    uri.pinSource = .file(path)
                } else if value.hasPrefix("env:"), value.count > 4 {
                    uri.pinSource = .environment(String(value.dropFirst(4)))
                } else {
                    return .failure(.badPinSource)
                }
            default:
                break  // other query attributes (module-name, ...) are the engine's business
            }
        }
        return .success(uri)
    }

    static func percentDecode(_ s: Substring) -> String? {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let c = bytes.first {
            bytes = bytes.dropFirst()
            if c == UInt8(ascii: "%") {
                guard bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else { return nil }
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(c)
            }
        }
        return String(validating: out, as: UTF8.self)
    }
}
