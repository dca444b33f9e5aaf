import ProxyConfig
import Testing
@testable import TLS

/// Which token a key's URI names, for the PIN the token is logged in with: the object's attributes do not count.
@Suite struct TokenNameTests {
    private func name(_ text: String) throws -> String {
        TokenKeys.tokenName(try TokenKeyURI.parse(text).get())
    }

    @Test func keysOnOneTokenShareItsName() throws {
        let a = try name("pkcs11:token=fusion;object=us-ec;type=private?pin-source=file:/etc/a.pin")
        let b = try name("pkcs11:object=eu;id=%02;token=fusion;type=private?pin-source=file:/etc/b.pin")
        #expect(a == "token=fusion")
        #expect(a == b)
    }

    @Test func anotherTokenOrSerialIsAnotherName() throws {
        #expect(try name("pkcs11:token=fusion;object=k") != name("pkcs11:token=other;object=k"))
        #expect(try name("pkcs11:token=fusion;serial=1;object=k") != name("pkcs11:token=fusion;serial=2;object=k"))
    }
}
