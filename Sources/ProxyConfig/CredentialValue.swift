/// What the value of a key that holds a credential, or names where one is kept, must not be read as: a file path
/// that is really a URI with a misspelled scheme (`pkcs1:token=x;object=y`), or any value holding a PIN
/// (`pin-value=...`); for a key naming an environment variable, anything but a variable's name. Read as paths or
/// names, such values were echoed whole in "cannot read" and "is not set" errors (the log, `check`, the status
/// page), PIN or password included. The problem it names quotes nothing of the value but a scheme made of letters
/// and digits. Pure.
///
/// The keys, each read through it (`readCertificate`, and `TableReader.credentialPath` and `credentialVariable`): an identity's `cert`, `key`, `p12`,
/// `key_password_file`, `key_password_env`, `p12_password_file`, `p12_password_env`; `[intercept]` `ca_cert` and
/// `ca_key`; `[proxy] auth_file`; `proxy_credentials_file` in `[upstream]` or a route.
public enum CredentialValue {
    /// Why `text` is not a credential path (nor, where allowed, a `pkcs11:` URI for a key or a certificate, or a
    /// `store:` URI for a key); nil when it may be one.
    public static func problem(_ text: String, tokenURIAllowed: Bool, storeURIAllowed: Bool = false) -> String? {
        if text.lowercased().contains("pin-value") {
            return "this value holds a pin-value attribute, a PIN written in the config (not repeated here); "
                + "a key on a PKCS#11 token reads its PIN from pin-source=file:/path or pin-source=env:NAME"
        }
        if TokenKeyURI.isTokenURI(text) {
            return tokenURIAllowed ? nil : "a pkcs11: URI names an object on a token; this key takes a file path"
        }
        if storeURIAllowed, text.lowercased().hasPrefix("store:") { return nil }  // checked by the loader
        guard let scheme = uriScheme(text) else { return nil }
        let hint = tokenURIAllowed ? " (did you mean pkcs11:?)" : ""
        return "this value is a URI with the scheme \"\(scheme):\"\(hint), not a file path"
    }

    /// Why `text` is not the name of an environment variable (letters, digits and `_`, not starting with a digit),
    /// quoting nothing of it: a password written where its variable's name goes would be echoed as "not set".
    public static func variableNameProblem(_ text: String) -> String? {
        let scalars = text.unicodeScalars
        if let first = scalars.first, !("0"..."9").contains(first),
           scalars.allSatisfy({ isLetter($0) || ("0"..."9").contains($0) || $0 == "_" }) { return nil }
        return text.lowercased().contains("pin-value")
            ? "this value holds a pin-value attribute, a PIN written in the config (not repeated here)"
            : "this value is not a variable name (letters, digits and _; not repeated here: it may be the secret itself)"
    }

    /// The scheme of a value shaped like an RFC 3986 URI with attributes: letters, digits, `+`, `-` or `.`
    /// (a letter first, at most 16) before the first `:`, no `/` before it, and an `=` after it. A file name with
    /// a colon (`us:2026.pem`, `certs/us:2026.pem`) is not one.
    static func uriScheme(_ text: String) -> String? {
        guard let colon = text.firstIndex(of: ":"), text[colon...].contains("=") else { return nil }
        let scheme = text[..<colon].unicodeScalars
        guard let first = scheme.first, isLetter(first), scheme.count <= 16,
              scheme.allSatisfy({ isLetter($0) || ("0"..."9").contains($0) || "+-.".unicodeScalars.contains($0) }) else { return nil }
        return String(text[..<colon])
    }

    private static func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
}
