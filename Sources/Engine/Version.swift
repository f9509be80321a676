// Version: the engine's semantic version, mirrored by AUTODIR_VERSION_* in include/autodir.h.
public enum AutodirVersion {
    public static let major = 0
    public static let minor = 2
    public static let patch = 0
    public static var string: String { "\(major).\(minor).\(patch)" }
}
