// Engine: autodir_engine (an AutoDIRPipeline behind an opaque pointer), detection, cancel tokens, restore.
import CAutodirABI
import Engine
#if canImport(Glibc)
import Glibc
#endif

/// The pipeline behind an autodir_engine pointer (retained by create, released by destroy).
private func pipeline(_ engine: OpaquePointer?) throws -> AutoDIRPipeline {
    guard let engine else { throw CAPIError.invalid("engine is NULL") }
    return Unmanaged<AutoDIRPipeline>.fromOpaque(UnsafeRawPointer(engine)).takeUnretainedValue()
}

@_cdecl("autodir_engine_params_init")
public func capi_engine_params_init() -> autodir_engine_params {
    autodir_engine_params(n_threads: 0, weight_type: Int32(AUTODIR_WEIGHTS_F32.rawValue))
}

@_cdecl("autodir_engine_create")
public func capi_engine_create(_ modelDir: UnsafePointer<CChar>?, _ params: UnsafePointer<autodir_engine_params>?,
                               _ out: UnsafeMutablePointer<OpaquePointer?>?) -> autodir_status {
    store(out, nil)
    return capiCall("autodir_engine_create") {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        guard let modelDir else { throw CAPIError.invalid("model_dir is NULL") }
        let p = params?.pointee ?? capi_engine_params_init()
        guard p.n_threads >= 0 else { throw CAPIError.invalid("n_threads \(p.n_threads) is negative") }
        let precisions: [Int32: WeightPrecision] = [Int32(AUTODIR_WEIGHTS_F32.rawValue): .float32,
                                                    Int32(AUTODIR_WEIGHTS_F16.rawValue): .float16,
                                                    Int32(AUTODIR_WEIGHTS_BF16.rawValue): .bfloat16]
        guard let precision = precisions[p.weight_type] else {
            throw CAPIError.invalid("weight_type \(p.weight_type) is not an autodir_weight_type (0 f32, 1 f16, 2 bf16)")
        }
        let directory = String(cString: modelDir)
        let loaded: AutoDIRPipeline
        do {
            loaded = try AutoDIRPipeline(directory: directory, precision: precision)
        } catch {
            throw CAPIError(status: AUTODIR_ERR_MODEL, message: "cannot load model folder \(directory): \(error)")
        }
        let categories = loaded.index.autodir.categories
        guard categories.count <= Int(AUTODIR_MAX_CATEGORIES),
              categories.allSatisfy({ $0.utf8.count < Int(AUTODIR_MAX_NAME) }) else {
            throw CAPIError(status: AUTODIR_ERR_MODEL, message: "model folder \(directory): the C API allows at most "
                            + "\(AUTODIR_MAX_CATEGORIES) categories of fewer than \(AUTODIR_MAX_NAME) bytes each")
        }
        if p.n_threads > 0 {
            Parallel.threads = Int(p.n_threads)
            BLAS.setThreads(Int(p.n_threads))
        }
        out.pointee = OpaquePointer(Unmanaged.passRetained(loaded).toOpaque())
    }
}

@_cdecl("autodir_engine_destroy")
public func capi_engine_destroy(_ engine: OpaquePointer?) {
    guard let engine else { return }
    Unmanaged<AutoDIRPipeline>.fromOpaque(UnsafeRawPointer(engine)).release()
}

/// Copies a UTF-8 name into a fixed char[AUTODIR_MAX_NAME] field, NUL-terminated.
private func copyName<Field>(_ name: String, into field: inout Field) {
    withUnsafeMutableBytes(of: &field) { raw in
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        let bytes = Array(name.utf8.prefix(raw.count - 1))
        raw.copyBytes(from: bytes)
    }
}

@_cdecl("autodir_detect")
public func capi_detect(_ engine: OpaquePointer?, _ image: UnsafePointer<autodir_image>?,
                        _ out: UnsafeMutablePointer<autodir_detection>?) -> autodir_status {
    capiCall("autodir_detect") {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        let pipeline = try pipeline(engine)
        let input = try ImageBridge.tensor(from: image)
        let detection = try pipeline.detect(input)
        let categories = pipeline.index.autodir.categories // ≤ AUTODIR_MAX_CATEGORIES, checked at create
        var result = autodir_detection()
        result.n_categories = Int32(categories.count)
        result.artifact_index = Int32(categories.firstIndex(of: detection.artifact) ?? -1)
        copyName(detection.artifact, into: &result.artifact)
        withUnsafeMutableBytes(of: &result.categories) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            for (i, name) in categories.enumerated() {
                let bytes = Array(name.utf8.prefix(Int(AUTODIR_MAX_NAME) - 1))
                UnsafeMutableRawBufferPointer(rebasing: raw[(i * Int(AUTODIR_MAX_NAME))...]).copyBytes(from: bytes)
            }
        }
        withUnsafeMutableBytes(of: &result.probabilities) { raw in
            let p = raw.bindMemory(to: Float.self)
            for i in 0..<p.count { p[i] = i < categories.count ? detection.probabilities[categories[i]] ?? 0 : 0 }
        }
        out.pointee = result
    }
}

// MARK: - Cancellation

@_cdecl("autodir_cancel_token_create")
public func capi_cancel_token_create(_ out: UnsafeMutablePointer<OpaquePointer?>?) -> autodir_status {
    store(out, nil)
    return capiCall("autodir_cancel_token_create") {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        out.pointee = OpaquePointer(Unmanaged.passRetained(CancellationToken()).toOpaque())
    }
}

private func token(_ pointer: OpaquePointer?) -> CancellationToken? {
    guard let pointer else { return nil }
    return Unmanaged<CancellationToken>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
}

@_cdecl("autodir_cancel")
public func capi_cancel(_ pointer: OpaquePointer?) {
    token(pointer)?.cancel()
}

@_cdecl("autodir_cancel_token_is_cancelled")
public func capi_cancel_token_is_cancelled(_ pointer: OpaquePointer?) -> Bool {
    token(pointer)?.isCancelled ?? false
}

@_cdecl("autodir_cancel_token_destroy")
public func capi_cancel_token_destroy(_ pointer: OpaquePointer?) {
    guard let pointer else { return }
    Unmanaged<CancellationToken>.fromOpaque(UnsafeRawPointer(pointer)).release()
}

// MARK: - Restore

/// The samplers the engine knows (RestoreOptions.sampler).
private let samplers = ["euler_ancestral", "euler", "ddim", "dpmpp_2m"]

@_cdecl("autodir_restore_params_init")
public func capi_restore_params_init() -> autodir_restore_params {
    var p = autodir_restore_params()
    p.prompt = nil
    p.steps = 0
    p.seed = 0
    p.cfg_text = AUTODIR_CFG_DEFAULT
    p.cfg_image = AUTODIR_CFG_DEFAULT
    p.max_passes = 0
    p.color_fix = false
    p.sampler = nil
    p.progress = nil
    p.progress_user_data = nil
    p.cancel = nil
    return p
}

/// autodir_restore_params → RestoreOptions, refusing values the engine must never see.
private func options(_ p: autodir_restore_params) throws -> RestoreOptions {
    var o = RestoreOptions()
    if let prompt = p.prompt {
        let text = String(cString: prompt)
        guard !text.isEmpty else { throw CAPIError.invalid("prompt is empty (use NULL for automatic restoration)") }
        o.prompt = text
    }
    guard (0...10_000).contains(p.steps) else { throw CAPIError.invalid("steps \(p.steps) is outside 0…10000 (0 = default)") }
    o.steps = p.steps == 0 ? nil : Int(p.steps)
    o.seed = p.seed
    for (name, value) in [("cfg_text", p.cfg_text), ("cfg_image", p.cfg_image)] {
        guard value.isFinite else { throw CAPIError.invalid("\(name) is not finite") }
        guard value < 0 || value <= 1000 else { throw CAPIError.invalid("\(name) \(value) is above 1000") }
    }
    o.cfgText = p.cfg_text < 0 ? nil : p.cfg_text
    o.cfgImage = p.cfg_image < 0 ? nil : p.cfg_image
    guard (0...100).contains(p.max_passes) else {
        throw CAPIError.invalid("max_passes \(p.max_passes) is outside 0…100 (0 = default)")
    }
    o.maxPasses = p.max_passes == 0 ? nil : Int(p.max_passes)
    o.colorFix = p.color_fix
    if let sampler = p.sampler {
        let name = String(cString: sampler)
        guard samplers.contains(name) else {
            throw CAPIError.invalid("unknown sampler \"\(name)\" (one of \(samplers.joined(separator: ", ")))")
        }
        o.sampler = name
    }
    return o
}

@_cdecl("autodir_restore")
public func capi_restore(_ engine: OpaquePointer?, _ image: UnsafePointer<autodir_image>?,
                         _ params: UnsafePointer<autodir_restore_params>?,
                         _ out: UnsafeMutablePointer<UnsafeMutablePointer<autodir_image>?>?) -> autodir_status {
    store(out, nil)
    return capiCall("autodir_restore") {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        let pipeline = try pipeline(engine)
        let p = params?.pointee ?? capi_restore_params_init()
        let opts = try options(p)
        let input = try ImageBridge.tensor(from: image)
        var progress: ((RestoreProgress) -> Bool)? = nil
        if let callback = p.progress {
            let user = p.progress_user_data
            progress = { e in
                e.stage.withCString { stage in
                    callback(Int32(clamping: e.pass), Int32(clamping: e.maxPasses), Int32(clamping: e.step),
                             Int32(clamping: e.totalSteps), stage, user)
                }
            }
        }
        let cancel = token(p.cancel)
        if cancel?.isCancelled == true { throw EngineError.cancelled }
        let result = try pipeline.restore(input, options: opts, cancel: cancel, progress: progress)
        out.pointee = try ImageBridge.image(from: result.image)
    }
}
