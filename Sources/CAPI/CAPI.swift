// CAPI: the @_cdecl exports that make up libautodir's C ABI (declared in include/autodir.h).
import Engine

/// Runtime version as major·10000 + minor·100 + patch; compare with AUTODIR_VERSION_* at build time.
@_cdecl("autodir_version")
public func autodir_version() -> Int32 {
    Int32(AutodirVersion.major * 10000 + AutodirVersion.minor * 100 + AutodirVersion.patch)
}
