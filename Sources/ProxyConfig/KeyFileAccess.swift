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
            return "\(what) \(path) is readable by everyone (mode \(octal)); chmod 600 it"
        }
        guard mode & 0o070 != 0 else { return nil }
        if processGroups.contains(fileGroup) && mode & 0o020 == 0 { return nil }
        return "\(what) \(path) is readable by its group (mode \(octal), group \(fileGroup), which the proxy does not run with); chmod 600 it, or give it to the proxy's own group read-only"
    }
}
