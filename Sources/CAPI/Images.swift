// Images: autodir_image (interleaved HWC float32, library- or caller-owned) ⇄ engine tensors [1, 3, H, W].
import CAutodirABI
import Engine
#if canImport(Glibc)
import Glibc
#endif

enum ImageBridge {
    /// Pixels start this many bytes after the struct in the single block autodir_image_free() frees.
    private static let headerBytes = (MemoryLayout<autodir_image>.stride + 63) / 64 * 64

    /// Checks width, height and channels against the header's limits, in Int64 so nothing overflows.
    static func checkSize(width: Int32, height: Int32, channels: Int32, what: String) throws {
        guard width > 0, height > 0 else {
            throw CAPIError.invalid("\(what): width and height must be positive, got \(width)x\(height)")
        }
        guard Int(width) <= PNGImage.maxSide, Int(height) <= PNGImage.maxSide,
              Int64(width) * Int64(height) <= Int64(PNGImage.maxPixels) else {
            throw CAPIError.invalid("\(what): \(width)x\(height) is too large (at most \(PNGImage.maxSide) per side "
                                    + "and \(PNGImage.maxPixels) pixels)")
        }
        guard channels == 1 || channels == 3 || channels == 4 else {
            throw CAPIError.invalid("\(what): \(channels) channels (1 = gray, 3 = RGB or 4 = RGBA are accepted)")
        }
    }

    /// A caller's image → [1, 3, H, W]: gray replicated, alpha dropped, values clamped to [0, 1];
    /// NaN or infinity is refused.
    static func tensor(from pointer: UnsafePointer<autodir_image>?, what: String = "image") throws -> Tensor {
        guard let image = pointer?.pointee else { throw CAPIError.invalid("\(what) is NULL") }
        try checkSize(width: image.width, height: image.height, channels: image.channels, what: what)
        guard let data = image.data else { throw CAPIError.invalid("\(what)->data is NULL") }
        let (w, h, c) = (Int(image.width), Int(image.height), Int(image.channels))
        let plane = w * h
        let out = Tensor(uninitialized: [1, 3, h, w]) // [N, C, H, W]
        var bad = -1
        for i in 0..<plane {
            let px = data + i * c
            for k in 0..<3 {
                let v = px[c == 1 ? 0 : k]
                if !v.isFinite { bad = i; break }
                out.data[k * plane + i] = v > 0 ? (v < 1 ? v : 1) : 0
            }
            if bad >= 0 { break }
        }
        if bad >= 0 {
            throw CAPIError.invalid("\(what): pixel (\(bad % w), \(bad / w)) is NaN or infinite")
        }
        return out
    }

    /// A new library-owned image (struct and pixels in one malloc block), zero-filled.
    static func allocate(width: Int, height: Int, channels: Int) throws -> UnsafeMutablePointer<autodir_image> {
        let floats = width * height * channels // checked by the callers: ≤ 2^28 · 4
        guard let block = calloc(1, headerBytes + floats * MemoryLayout<Float>.stride) else {
            throw CAPIError(status: AUTODIR_ERR_OUT_OF_MEMORY,
                            message: "cannot allocate a \(width)x\(height)x\(channels) image")
        }
        let image = block.bindMemory(to: autodir_image.self, capacity: 1)
        let pixels = (block + headerBytes).bindMemory(to: Float.self, capacity: max(floats, 1))
        image.initialize(to: autodir_image(width: Int32(width), height: Int32(height), channels: Int32(channels),
                                           data: pixels))
        return image
    }

    /// [1, 3, H, W] or [3, H, W] → a new library-owned RGB image.
    static func image(from tensor: Tensor) throws -> UnsafeMutablePointer<autodir_image> {
        let s = tensor.shape
        guard (s.count == 4 && s[0] == 1 && s[1] == 3) || (s.count == 3 && s[0] == 3) else {
            throw CAPIError(status: AUTODIR_ERR_INTERNAL, message: "the engine returned a tensor of shape \(s)")
        }
        let (h, w) = (s[s.count - 2], s[s.count - 1])
        try checkSize(width: Int32(clamping: w), height: Int32(clamping: h), channels: 3, what: "result")
        let image = try allocate(width: w, height: h, channels: 3)
        guard let dst = image.pointee.data else { return image }
        let plane = w * h
        let src = tensor.data
        for i in 0..<plane {
            dst[i * 3] = src[i]
            dst[i * 3 + 1] = src[plane + i]
            dst[i * 3 + 2] = src[2 * plane + i]
        }
        return image
    }

    static func free(_ image: UnsafeMutablePointer<autodir_image>?) {
        guard let image else { return }
        image.deinitialize(count: 1)
        Glibc.free(image)
    }
}

/// Stores `value` in `*out` when out is not NULL (callers check for NULL first).
@inline(__always)
func store<T>(_ out: UnsafeMutablePointer<T?>?, _ value: T?) {
    out?.pointee = value
}

@_cdecl("autodir_image_create")
public func capi_image_create(_ width: Int32, _ height: Int32, _ channels: Int32,
                              _ out: UnsafeMutablePointer<UnsafeMutablePointer<autodir_image>?>?) -> autodir_status {
    store(out, nil)
    return capiCall("autodir_image_create") {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        try ImageBridge.checkSize(width: width, height: height, channels: channels, what: "image")
        out.pointee = try ImageBridge.allocate(width: Int(width), height: Int(height), channels: Int(channels))
    }
}

@_cdecl("autodir_image_free")
public func capi_image_free(_ image: UnsafeMutablePointer<autodir_image>?) {
    ImageBridge.free(image)
}

@_cdecl("autodir_image_load_png")
public func capi_image_load_png(_ path: UnsafePointer<CChar>?,
                                _ out: UnsafeMutablePointer<UnsafeMutablePointer<autodir_image>?>?) -> autodir_status {
    store(out, nil)
    return capiCall("autodir_image_load_png") {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        guard let path else { throw CAPIError.invalid("path is NULL") }
        let tensor = try PNGImage.read(path: String(cString: path))
        out.pointee = try ImageBridge.image(from: tensor)
    }
}

@_cdecl("autodir_image_save_png")
public func capi_image_save_png(_ image: UnsafePointer<autodir_image>?, _ path: UnsafePointer<CChar>?,
                                _ bitDepth: Int32) -> autodir_status {
    capiCall("autodir_image_save_png") {
        guard let path else { throw CAPIError.invalid("path is NULL") }
        guard bitDepth == 8 || bitDepth == 16 else {
            throw CAPIError.invalid("bit_depth \(bitDepth) is not supported (use 8 or 16)")
        }
        let tensor = try ImageBridge.tensor(from: image)
        try PNGImage.write(tensor, path: String(cString: path), bitDepth: Int(bitDepth))
    }
}
