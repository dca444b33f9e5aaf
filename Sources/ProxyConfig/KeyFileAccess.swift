/// Whether a private key file's permissions deserve a warning. Pure: mode and owners in, verdict out.
///
/// Readable by everyone: warn. Readable by its group: fine when that group is one the proxy runs with and
/// cannot write it — the usual way to share a key with a service (a Debian `ssl-cert`-style group, or a
/// Kubernetes Secret mounted with `fsGroup`, which the kubelet makes group-readable whatever `defaultMode`
/// says). Readable by some other group: warn.
public enum KeyFileAccess {
    public static func warning(path: String, what: String = "private key", mode: UInt32, fileGroup: UInt32,
                               processGroups: Set<UInt32>) -> String? {
        let mode = mode & 0o777
        let octal = String(mode, radix: 8)
        if mode & 0o007 != 0 {
            return "\(what) \(path) is \(access(mode & 0o007)) by everyone (mode \(octal)); chmod 600 it"
        }
        guard mode & 0o070 != 0 else { return nil }
        if processGroups.contains(fileGroup) {
            // The proxy's own group may read it (a shared key); what is wrong is only that the group may write it.
            if mode & 0o020 == 0 { return nil }
            return "\(what) \(path) is writable by its group (mode \(octal), group \(fileGroup), one the proxy runs with); chmod 640 it, or 600"
        }
        return "\(what) \(path) is \(access((mode >> 3) & 0o007)) by its group (mode \(octal), group \(fileGroup), which the proxy does not run with); chmod 600 it, or give it to the proxy's own group read-only"
    }

    /// "readable", "writable", "readable and writable", ... for one class's three permission bits (not 0).
    private static func access(_ bits: UInt32) -> String {
        var words: [String] = []
        if bits & 0o4 != 0 { words.append("readable") }
        if bits & 0o2 != 0 { words.append("writable") }
        if bits & 0o1 != 0 { words.append("executable") }
        return words.joined(separator: " and ")
    }
}
