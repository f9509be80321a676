// PNGImage: PNG files ⇄ RGB image tensors [1, 3, H, W] in [0, 1], through libpng (CLibPNG shim).
import CLibPNG
import Foundation

/// Reads and writes PNG images as NCHW float tensors.
///
/// Reading accepts every PNG colour type and bit depth (gray, gray+alpha, RGB, RGBA, palette with or
/// without tRNS; 1–16 bits; interlaced or not) and returns RGB in [0, 1]: alpha is dropped, gray is
/// replicated, 16-bit samples keep their precision (v / 65535). No gamma or ICC conversion is applied.
/// Images wider or taller than 32768 pixels, or with more than 2^28 pixels, are refused before any
/// pixel memory is allocated. Every failure is an `EngineError` that names the file and the cause.
public enum PNGImage {
    /// The largest accepted width or height.
    public static let maxSide = Int(CLIBPNG_MAX_SIDE)
    /// The largest accepted width × height.
    public static let maxPixels = Int(CLIBPNG_MAX_PIXELS)

    /// Reads the PNG file at `path` as a [1, 3, H, W] tensor.
    public static func read(path: String) throws -> Tensor {
        try decode(name: path) { planes, width, height, error in
            clibpng_decode_file(path, planes, width, height, error, Int(CLIBPNG_ERROR_SIZE))
        }
    }

    /// Decodes PNG bytes as a [1, 3, H, W] tensor.
    public static func read(data: [UInt8]) throws -> Tensor {
        try data.withUnsafeBufferPointer { bytes in
            try decode(name: "PNG data (\(data.count) bytes)") { planes, width, height, error in
                clibpng_decode_memory(bytes.baseAddress, bytes.count, planes, width, height,
                                      error, Int(CLIBPNG_ERROR_SIZE))
            }
        }
    }

    /// Writes `image` ([1, 3, H, W] or [3, H, W]) to `path` as an 8- or 16-bit RGB PNG.
    ///
    /// Values are clamped to [0, 1] (NaN becomes 0) and rounded to the nearest level.
    public static func write(_ image: Tensor, path: String, bitDepth: Int = 8) throws {
        let bytes = try encode(image, bitDepth: bitDepth, name: path)
        try writeFile(bytes, path: path)
    }

    /// Encodes `image` ([1, 3, H, W] or [3, H, W]) as the bytes of an 8- or 16-bit RGB PNG.
    public static func encode(_ image: Tensor, bitDepth: Int = 8) throws -> [UInt8] {
        try encode(image, bitDepth: bitDepth, name: "PNG encoding")
    }

    // MARK: - Decoding

    private typealias DecodeCall = (
        UnsafeMutablePointer<UnsafeMutablePointer<Float>?>, UnsafeMutablePointer<UInt32>,
        UnsafeMutablePointer<UInt32>, UnsafeMutablePointer<CChar>
    ) -> clibpng_status

    private static func decode(name: String, _ call: DecodeCall) throws -> Tensor {
        var planes: UnsafeMutablePointer<Float>? = nil
        var width: UInt32 = 0
        var height: UInt32 = 0
        var message = [CChar](repeating: 0, count: Int(CLIBPNG_ERROR_SIZE))
        let status = message.withUnsafeMutableBufferPointer { buffer -> clibpng_status in
            guard let base = buffer.baseAddress else { return CLIBPNG_ERR_MEMORY }
            return call(&planes, &width, &height, base)
        }
        guard status == CLIBPNG_OK, let pixels = planes, width > 0, height > 0 else {
            if let pixels = planes { clibpng_free(pixels) }
            throw error(status: status, name: name, message: message)
        }
        // The tensor borrows libpng's planes ([R, G, B], each H×W) and frees them when released.
        let shape = [1, 3, Int(height), Int(width)] // [N, C, H, W]
        return Tensor(borrowing: pixels, shape: shape, owner: MallocBuffer(pixels))
    }

    // MARK: - Encoding

    private static func encode(_ image: Tensor, bitDepth: Int, name: String) throws -> [UInt8] {
        guard bitDepth == 8 || bitDepth == 16 else {
            throw EngineError.format("\(name): bit depth \(bitDepth) is not supported (use 8 or 16)")
        }
        let shape = image.shape
        let hw: [Int]
        if shape.count == 4 && shape[0] == 1 && shape[1] == 3 {
            hw = [shape[2], shape[3]]
        } else if shape.count == 3 && shape[0] == 3 {
            hw = [shape[1], shape[2]]
        } else {
            throw EngineError.format("\(name): expected an RGB image tensor [1, 3, H, W] or [3, H, W], got \(shape)")
        }
        let (height, width) = (hw[0], hw[1])
        guard height > 0, width > 0 else {
            throw EngineError.format("\(name): cannot write an empty image of shape \(shape)")
        }
        guard height <= maxSide, width <= maxSide, height * width <= maxPixels else {
            throw EngineError.format("\(name): image too large: \(width)x\(height) pixels "
                                     + "(the limit is \(maxSide) per side and \(maxPixels) pixels in all)")
        }
        let interleaved = interleave(image.data, width: width, height: height, bitDepth: bitDepth)

        var output: UnsafeMutablePointer<UInt8>? = nil
        var size = 0
        var message = [CChar](repeating: 0, count: Int(CLIBPNG_ERROR_SIZE))
        let status = interleaved.withUnsafeBufferPointer { pixels in
            message.withUnsafeMutableBufferPointer { buffer -> clibpng_status in
                guard let base = pixels.baseAddress, let error = buffer.baseAddress else { return CLIBPNG_ERR_MEMORY }
                return clibpng_encode_rgb(base, UInt32(width), UInt32(height), Int32(bitDepth),
                                          &output, &size, error, buffer.count)
            }
        }
        defer { if let output { clibpng_free(output) } }
        guard status == CLIBPNG_OK, let bytes = output else {
            throw error(status: status, name: name, message: message)
        }
        return Array(UnsafeBufferPointer(start: bytes, count: size))
    }

    /// CHW float planes → row-major interleaved RGB samples (big-endian when 16-bit), clamped and rounded.
    private static func interleave(_ data: UnsafeMutablePointer<Float>, width: Int, height: Int,
                                   bitDepth: Int) -> [UInt8] {
        let plane = width * height
        let bytesPerSample = bitDepth / 8
        let maxLevel: Float = bitDepth == 16 ? 65535 : 255
        var out = [UInt8](repeating: 0, count: plane * 3 * bytesPerSample)
        out.withUnsafeMutableBufferPointer { dst in
            for i in 0..<plane {
                for c in 0..<3 {
                    let v = data[c * plane + i]
                    let clamped: Float = v > 0 ? (v < 1 ? v : 1) : 0 // NaN fails `v > 0` and becomes 0
                    let level = UInt16((clamped * maxLevel).rounded())
                    let at = (i * 3 + c) * bytesPerSample
                    if bytesPerSample == 2 {
                        dst[at] = UInt8(level >> 8)
                        dst[at + 1] = UInt8(level & 0xFF)
                    } else {
                        dst[at] = UInt8(level)
                    }
                }
            }
        }
        return out
    }

    private static func writeFile(_ bytes: [UInt8], path: String) throws {
        guard let file = fopen(path, "wb") else {
            throw EngineError.io("\(path): cannot open for writing: \(String(cString: strerror(errno)))")
        }
        let written = bytes.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, $0.count, file) }
        let writeErrno = errno
        let closed = fclose(file)
        guard written == bytes.count, closed == 0 else {
            let cause = String(cString: strerror(written == bytes.count ? errno : writeErrno))
            remove(path)
            throw EngineError.io("\(path): cannot write: \(cause)")
        }
    }

    // MARK: - Errors

    private static func error(status: clibpng_status, name: String, message: [CChar]) -> EngineError {
        let bytes = message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        var cause = String(decoding: bytes, as: UTF8.self)
        if cause.isEmpty { cause = "libpng failed with status \(status.rawValue)" }
        switch status {
        case CLIBPNG_ERR_IO, CLIBPNG_ERR_MEMORY: return .io("\(name): \(cause)")
        default: return .format("\(name): \(cause)")
        }
    }
}

/// Owns a buffer malloc'd by CLibPNG and frees it when the last tensor view goes away.
private final class MallocBuffer {
    let pointer: UnsafeMutableRawPointer
    init(_ pointer: UnsafeMutablePointer<Float>) { self.pointer = UnsafeMutableRawPointer(pointer) }
    deinit { clibpng_free(pointer) }
}
