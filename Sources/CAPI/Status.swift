// Status: autodir_status codes, the thread-local last-error message, and the wrapper every export runs in.
import CAutodirABI
import Engine
#if canImport(Glibc)
import Glibc
#endif

/// A failure at the C boundary: the status to return and the message for autodir_last_error().
struct CAPIError: Error {
    let status: autodir_status
    let message: String

    static func invalid(_ message: String) -> CAPIError { CAPIError(status: AUTODIR_ERR_INVALID_ARGUMENT, message: message) }
}

/// Static C strings that live as long as the library.
enum CString {
    static let empty: UnsafePointer<CChar>? = UnsafePointer(strdup(""))
    static let version: UnsafePointer<CChar>? = UnsafePointer(strdup(AutodirVersion.string))
}

/// The per-thread message of the last failure: a malloc'd C string under a pthread key, freed when the
/// next call replaces it or when the thread exits.
enum LastError {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    static func set(_ message: String?) {
        let old = pthread_getspecific(key)
        if message == nil && old == nil { return }
        let new: UnsafeMutablePointer<CChar>? = message.flatMap { strdup($0) }
        pthread_setspecific(key, new)
        free(old)
    }

    static var current: UnsafePointer<CChar>? {
        if let p = pthread_getspecific(key) { return UnsafePointer(p.assumingMemoryBound(to: CChar.self)) }
        return CString.empty
    }
}

/// Maps an error from the engine (or from argument checks) to a status and message.
func statusAndMessage(_ error: Error) -> (autodir_status, String) {
    switch error {
    case let e as CAPIError: return (e.status, e.message)
    case let e as EngineError:
        switch e {
        case .invalidArgument: return (AUTODIR_ERR_INVALID_ARGUMENT, e.description)
        case .io: return (AUTODIR_ERR_IO, e.description)
        case .format: return (AUTODIR_ERR_FORMAT, e.description)
        case .weights: return (AUTODIR_ERR_MODEL, e.description)
        case .cancelled: return (AUTODIR_ERR_CANCELLED, e.description)
        }
    default: return (AUTODIR_ERR_INTERNAL, "internal error: \(error)")
    }
}

/// Runs one export: clears the last error, maps a thrown error to its status and records the message.
@inline(__always)
func capiCall(_ function: String, _ body: () throws -> Void) -> autodir_status {
    do {
        try body()
        LastError.set(nil)
        return AUTODIR_OK
    } catch {
        let (status, message) = statusAndMessage(error)
        LastError.set("\(function): \(message)")
        return status
    }
}

@_cdecl("autodir_last_error")
public func capi_last_error() -> UnsafePointer<CChar>? {
    LastError.current
}

@_cdecl("autodir_status_string")
public func capi_status_string(_ status: autodir_status) -> UnsafePointer<CChar>? {
    StatusNames.name(status)
}

enum StatusNames {
    private static let names: [UnsafePointer<CChar>?] = ([
        "AUTODIR_OK", "AUTODIR_ERR_INVALID_ARGUMENT", "AUTODIR_ERR_IO", "AUTODIR_ERR_FORMAT", "AUTODIR_ERR_MODEL",
        "AUTODIR_ERR_CANCELLED", "AUTODIR_ERR_OUT_OF_MEMORY", "AUTODIR_ERR_INTERNAL",
    ] as [String]).map { UnsafePointer(strdup($0)) }
    private static let unknown: UnsafePointer<CChar>? = UnsafePointer(strdup("unknown status"))

    static func name(_ status: autodir_status) -> UnsafePointer<CChar>? {
        let i = Int(status.rawValue)
        return i < names.count ? names[i] : unknown
    }
}
