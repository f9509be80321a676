// CAPI: the @_cdecl exports that make up libautodir's C ABI (declared in include/autodir.h).
//
// Every export catches every Swift error and validates its arguments before they reach the engine, so
// that no error, trap or unwinding crosses into C; failures become an autodir_status plus a thread-local
// message (Status.swift).
import CAutodirABI
import Engine

/// Runtime version as major·10000 + minor·100 + patch; compare with AUTODIR_VERSION_* at build time.
@_cdecl("autodir_version")
public func autodir_version() -> Int32 {
    Int32(AutodirVersion.major * 10000 + AutodirVersion.minor * 100 + AutodirVersion.patch)
}

/// The version of the loaded library as "MAJOR.MINOR.PATCH" (a static string).
@_cdecl("autodir_version_string")
public func capi_version_string() -> UnsafePointer<CChar>? {
    CString.version
}
