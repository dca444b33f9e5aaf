import CEventTLS
#if canImport(Glibc)
import Glibc
#endif

/// Watches the folders of the files a runtime was built from (inotify), and says when their contents changed.
/// Folders, not files: Kubernetes updates a mounted secret by swapping a symlink, which replaces the file.
/// A change is reported only when the bytes of a watched file differ, after a short quiet period.
final class FileWatcher {
    private let fd: Int32
    private var watched = Set<String>()
    /// The folder each watch descriptor follows, to forget it when the folder goes (deleted or renamed away).
    private var folderOf: [Int32: String] = [:]
    private var files: [String] = []
    /// Names (in the watched folders) whose change matters: the files themselves, and Kubernetes' `..data`
    /// style entries that a secret update swaps.
    private var names = Set<String>()
    private var fingerprint: UInt64 = 0

    init?() {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0 { return nil }
    }

    deinit { close(fd) }

    var descriptor: Int32 { fd }

    /// Starts watching `files` (absolute paths) and takes their current contents as the baseline.
    func watch(_ files: [String]) {
        self.files = files
        names = Set(files.map(Self.lastComponent))
        addWatches()
        fingerprint = Self.fingerprint(files)
    }

    /// Watches the folder of every file. A folder that does not exist yet is watched through its nearest
    /// existing ancestor, where the entry that leads to it counts as relevant; call again after a change so
    /// the folder itself is watched once it appears.
    func addWatches() {
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB | IN_MOVE_SELF)
        for file in files {
            var dir = Self.folder(of: file)
            while !watched.contains(dir) {
                let wd = inotify_add_watch(fd, dir, mask)
                if wd >= 0 {
                    watched.insert(dir)
                    folderOf[wd] = dir
                    break
                }
                guard mtls_errno() == ENOENT, dir != "/" else { break }
                names.insert(Self.lastComponent(dir))
                dir = Self.folder(of: dir)
            }
        }
    }

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let folder = String(path[..<slash])
        return folder.isEmpty ? "/" : folder
    }

    static func lastComponent(_ path: String) -> String {
        path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
    }

    /// Empties the inotify queue; says whether any event was about a file that matters (other files in the
    /// same folders, such as a log file written next to the config, are ignored).
    func drain() -> Bool {
        var relevant = false
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            var offset = 0
            let headerSize = MemoryLayout<inotify_event>.size
            while offset + headerSize <= n {
                let wd = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset, as: Int32.self) }
                let mask = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 4, as: UInt32.self) }
                let length = buffer.withUnsafeBytes { Int($0.load(fromByteOffset: offset + 12, as: UInt32.self)) }
                // A watched folder was deleted (its watch is gone) or renamed away (the watch would follow it):
                // forget it, so that `addWatches` watches whatever takes its place, through its parent until then.
                if mask & UInt32(IN_IGNORED | IN_MOVE_SELF) != 0, let dir = folderOf[wd] {
                    if mask & UInt32(IN_MOVE_SELF) != 0 { inotify_rm_watch(fd, wd) }
                    folderOf[wd] = nil
                    watched.remove(dir)
                    relevant = true
                }
                let nameBytes = buffer[(offset + headerSize)..<min(n, offset + headerSize + length)].prefix { $0 != 0 }
                let name = String(decoding: nameBytes, as: UTF8.self)
                if name.isEmpty || names.contains(name) || name.hasPrefix("..") { relevant = true }
                offset += headerSize + length
            }
        }
        return relevant
    }

    /// Whether any watched file's contents differ from the baseline.
    func changed() -> Bool {
        Self.fingerprint(files) != fingerprint
    }

    /// FNV-1a over every file's path and bytes; a missing file counts as its absence.
    static func fingerprint(_ files: [String]) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ byte: UInt8) {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        var chunk = [UInt8](repeating: 0, count: 65536)
        for file in files {
            for b in file.utf8 { mix(b) }
            guard let f = fopen(file, "rb") else {
                mix(0xFF)
                continue
            }
            while true {
                let n = fread(&chunk, 1, chunk.count, f)
                for i in 0..<n { mix(chunk[i]) }
                if n < chunk.count { break }
            }
            fclose(f)
        }
        return hash
    }
}
