#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// File paths the config names, spelled the short way where that names the same file: `conf/../pki/x.pem` is
/// `pki/x.pem`, `pki/./x.pem` and `pki//x.pem` are `pki/x.pem`. Messages, `check` and `certs` print the paths as
/// the loader keeps them, so they are the paths a person would write.
///
/// `folder/..` is taken out only when `folder` is a real folder: through a symbolic link, `link/..` is the
/// parent of the link's target for the kernel, not the folder that holds the link, so it stays as written
/// (and so does `missing/..`, which the kernel refuses).
public enum FilePathSpelling {
    public static func normalised(_ path: String, isRealFolder: (String) -> Bool = FilePathSpelling.isRealFolder) -> String {
        let absolute = path.hasPrefix("/")
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            switch part {
            case ".":
                continue
            case "..":
                if let last = parts.last, last != "..", isRealFolder((absolute ? "/" : "") + parts.joined(separator: "/")) {
                    parts.removeLast()
                } else if !(absolute && parts.isEmpty) {  // "/.." is "/"
                    parts.append(part)
                }
            default:
                parts.append(part)
            }
        }
        let joined = parts.joined(separator: "/")
        return absolute ? "/" + joined : (joined.isEmpty ? "." : joined)
    }

    /// A folder that is not a symbolic link.
    public static func isRealFolder(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}
