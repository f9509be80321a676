// Conv2D: 2-D convolution over NCHW tensors (PyTorch `F.conv2d` semantics), on BLAS with a depthwise fast path.
import Foundation

/// Geometry of one convolution: kernel, stride, zero padding and channel groups.
public struct Conv2DParams: Equatable, Sendable {
    public var kernelH: Int, kernelW: Int
    public var stride: Int
    public var padding: Int
    public var groups: Int

    public init(kernel: Int, stride: Int = 1, padding: Int = 0, groups: Int = 1) {
        self.kernelH = kernel; self.kernelW = kernel
        self.stride = stride; self.padding = padding; self.groups = groups
    }

    @inline(__always) public func outputSize(_ h: Int, _ w: Int) -> (Int, Int) {
        ((h + 2 * padding - kernelH) / stride + 1, (w + 2 * padding - kernelW) / stride + 1)
    }
}

extension Ops {
    /// Whether 3×3 stride-1 convolutions may use Winograd F(2×2, 3×3) (Winograd.swift); AUTODIR_WINOGRAD=0 turns it off.
    nonisolated(unsafe) public static var winogradEnabled = ProcessInfo.processInfo.environment["AUTODIR_WINOGRAD"] != "0"

    /// y = conv2d(x, weight, bias): x [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw], bias [Cout] → [N, Cout, Ho, Wo].
    public static func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, _ p: Conv2DParams) -> Tensor {
        let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let cout = weight.shape[0]
        let (ho, wo) = p.outputSize(h, w)
        let y = Tensor(uninitialized: [n, cout, ho, wo])
        for b in 0..<n {
            conv2d(input: x.data + b * cin * h * w, channels: cin, height: h, width: w,
                   weight: weight.data, bias: bias?.data, outChannels: cout, p,
                   output: y.data + b * cout * ho * wo)
        }
        return y
    }

    /// Pointer form of `conv2d` for one image: input [Cin, H, W] → output [Cout, Ho, Wo].
    /// With `accumulate`, the result is added to what `output` holds (a fused residual).
    public static func conv2d(input: UnsafePointer<Float>, channels cin: Int, height h: Int, width w: Int,
                              weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, outChannels cout: Int,
                              _ p: Conv2DParams, output: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        let (ho, wo) = p.outputSize(h, w)
        let hwOut = ho * wo
        if p.groups == cin && cout == cin && p.groups > 1 {
            depthwiseConv2d(input: input, channels: cin, height: h, width: w, weight: weight, bias: bias, p,
                            output: output, accumulate: accumulate)
            return
        }
        if p.kernelH == 3 && p.kernelW == 3 && p.stride == 1 && p.padding == 1 && p.groups == 1 && winogradEnabled
            && winogradPays(inChannels: cin, outChannels: cout, height: h, width: w) {
            winogradConv3x3(input: input, channels: cin, height: h, width: w, weight: weight, bias: bias,
                            outChannels: cout, output: output, accumulate: accumulate)
            return
        }
        // the bias rides in the matrix product's store (a row bias of C [Cout, pixels]); with `accumulate`
        // the product adds onto what `output` holds (beta 1), else overwrites it (beta 0)
        let beta: Float = accumulate ? 1 : 0
        let cinG = cin / p.groups, coutG = cout / p.groups
        let k = cinG * p.kernelH * p.kernelW
        // A 1×1, stride-1, unpadded convolution is a plain matrix product over the pixels.
        if p.kernelH == 1 && p.kernelW == 1 && p.stride == 1 && p.padding == 0 {
            for g in 0..<p.groups {
                BLAS.gemm(m: coutG, n: hwOut, k: cinG, a: weight + g * coutG * k, b: input + g * cinG * h * w,
                          beta: beta, c: output + g * coutG * hwOut, rowBias: bias.map { $0 + g * coutG })
            }
            return
        }
        // im2col over bands of output rows, so the column buffer stays near 32 MiB whatever the image size.
        let rowsPerBand = max(1, min(ho, (8 << 20) / max(1, k * wo)))
        ScratchPool.withBuffer(k * rowsPerBand * wo) { col in
            for g in 0..<p.groups {
                var r0 = 0
                while r0 < ho {
                    let rows = min(rowsPerBand, ho - r0)
                    im2col(input + g * cinG * h * w, channels: cinG, height: h, width: w, p,
                           rowStart: r0, rows: rows, outWidth: wo, col: col)
                    BLAS.gemm(m: coutG, n: rows * wo, k: k, a: weight + g * coutG * k, b: col, ldb: rows * wo,
                              beta: beta, c: output + g * coutG * hwOut + r0 * wo, ldc: hwOut,
                              rowBias: bias.map { $0 + g * coutG })
                    r0 += rows
                }
            }
        }
    }

    /// Column matrix [Cin·kh·kw, rows·Wo] for output rows [rowStart, rowStart+rows).
    static func im2col(_ x: UnsafePointer<Float>, channels: Int, height h: Int, width w: Int, _ p: Conv2DParams,
                       rowStart: Int, rows: Int, outWidth wo: Int, col: UnsafeMutablePointer<Float>) {
        let kk = p.kernelH * p.kernelW
        let n = rows * wo
        Parallel.forEachChunk(channels * kk, grain: 4) { range in
            for r in range {
                let c = r / kk, ky = (r % kk) / p.kernelW, kx = r % p.kernelW
                let dst = col + r * n
                let plane = x + c * h * w
                for oy in 0..<rows {
                    let iy = (rowStart + oy) * p.stride - p.padding + ky
                    let d = dst + oy * wo
                    if iy < 0 || iy >= h {
                        d.update(repeating: 0, count: wo)
                        continue
                    }
                    let src = plane + iy * w
                    if p.stride == 1 {
                        // ix = ox - padding + kx: copy the in-range span, zero the rest.
                        let shift = kx - p.padding
                        let lo = max(0, -shift), hi = min(wo, w - shift)
                        if lo > 0 { d.update(repeating: 0, count: min(lo, wo)) }
                        if hi > lo { (d + lo).update(from: src + lo + shift, count: hi - lo) }
                        if hi < wo { (d + max(hi, 0)).update(repeating: 0, count: wo - max(hi, 0)) }
                    } else {
                        for ox in 0..<wo {
                            let ix = ox * p.stride - p.padding + kx
                            d[ox] = (ix >= 0 && ix < w) ? src[ix] : 0
                        }
                    }
                }
            }
        }
    }

    /// Depthwise convolution (groups == channels): each channel has its own kh×kw filter.
    static func depthwiseConv2d(input: UnsafePointer<Float>, channels: Int, height h: Int, width w: Int,
                                weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, _ p: Conv2DParams,
                                output: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let (ho, wo) = p.outputSize(h, w)
        Parallel.forEachChunk(channels) { range in
            for c in range {
                let src = input + c * h * w, dst = output + c * ho * wo
                let b = bias?[c] ?? 0
                if !accumulate { dst.update(repeating: b, count: ho * wo) } else if b != 0 {
                    for i in 0..<(ho * wo) { dst[i] += b }
                }
                if p.kernelH == 3 && p.kernelW == 3 && p.stride == 1 && p.padding == 1 {
                    depthwise3x3Plane(src, height: h, width: w, weight: weight + c * 9, output: dst)
                    continue
                }
                let wc = weight + c * p.kernelH * p.kernelW
                for oy in 0..<ho {
                    for ky in 0..<p.kernelH {
                        let iy = oy * p.stride - p.padding + ky
                        if iy < 0 || iy >= h { continue }
                        for kx in 0..<p.kernelW {
                            let wv = wc[ky * p.kernelW + kx]
                            for ox in 0..<wo {
                                let ix = ox * p.stride - p.padding + kx
                                if ix >= 0 && ix < w { dst[oy * wo + ox] += wv * src[iy * w + ix] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// out[y, x] += Σ w[ky, kx] · in[y+ky-1, x+kx-1] over one plane, zero padding 1 (3×3, stride 1).
    @inline(__always)
    static func depthwise3x3Plane(_ src: UnsafePointer<Float>, height h: Int, width w: Int,
                                  weight k: UnsafePointer<Float>, output dst: UnsafeMutablePointer<Float>) {
        for y in 0..<h { depthwise3x3Row(src, height: h, width: w, row: y, weight: k, output: dst + y * w) }
    }

    /// One output row of a 3×3, stride-1, padding-1 depthwise convolution, accumulated into `o` [W].
    @inline(__always)
    static func depthwise3x3Row(_ src: UnsafePointer<Float>, height h: Int, width w: Int, row y: Int,
                                weight k: UnsafePointer<Float>, output o: UnsafeMutablePointer<Float>) {
        for ky in 0..<3 {
            let iy = y + ky - 1
            if iy < 0 || iy >= h { continue }
            let r = src + iy * w
            let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2])
            if w == 1 { o[0] += k1 * r[0]; continue }
            o[0] += k1 * r[0] + k2 * r[1]
            var x = 1
            while x < w - 1 {
                o[x] += k0 * r[x - 1] + k1 * r[x] + k2 * r[x + 1]
                x += 1
            }
            o[w - 1] += k0 * r[w - 2] + k1 * r[w - 1]
        }
    }
}
