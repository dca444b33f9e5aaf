import Testing
@testable import ProxyConfig

/// Paths the config names are kept the short way, without changing the file they name.
@Suite struct FilePathSpellingTests {
    /// Every folder is real except those named in `links` (or missing).
    private func normalised(_ path: String, links: Set<String> = [], missing: Set<String> = []) -> String {
        FilePathSpelling.normalised(path) { !links.contains($0) && !missing.contains($0) }
    }

    @Test func dotSegmentsAndRepeatedSlashesGo() {
        #expect(normalised("/srv/conf/../pki/x.pem") == "/srv/pki/x.pem")
        #expect(normalised("/srv/./pki//x.pem") == "/srv/pki/x.pem")
        #expect(normalised("conf/../pki/x.pem") == "pki/x.pem")
        #expect(normalised("a/b/../../x.pem") == "x.pem")
        #expect(normalised("/../x.pem") == "/x.pem")
        #expect(normalised("../x.pem") == "../x.pem")
        #expect(normalised("../../x.pem") == "../../x.pem")
        #expect(normalised("/srv/pki/x.pem") == "/srv/pki/x.pem")
    }

    @Test func aSymbolicLinkOrAMissingFolderKeepsItsDotDot() {
        // For the kernel, link/.. is the parent of the link's target.
        #expect(normalised("/srv/link/../pki/x.pem", links: ["/srv/link"]) == "/srv/link/../pki/x.pem")
        #expect(normalised("/srv/gone/../pki/x.pem", missing: ["/srv/gone"]) == "/srv/gone/../pki/x.pem")
        #expect(normalised("/srv/link/a/../../x.pem", links: ["/srv/link"]) == "/srv/link/../x.pem")
    }
}
