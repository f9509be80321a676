// Ops: the engine's tensor operations (PyTorch semantics). Each has a naive twin in `NaiveOps` and an agreement test.
import Foundation

/// Optimised tensor operations. Shapes follow PyTorch; images are NCHW.
public enum Ops {}

// MARK: - Matrix products

extension Ops {
    /// y = x · Wᵀ + b: x [..., in], weight [out, in], bias [out] → [..., out] (`nn.Linear`).
    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let inF = weight.shape[1], outF = weight.shape[0]
        let rows = x.count / inF
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outF])
        BLAS.gemm(transB: true, m: rows, n: outF, k: inF, a: x.data, b: weight.data, c: y.data, colBias: bias?.data)
        return y
    }

    /// a [m, k] · b [k, n] → [m, n].
    public static func matmul(_ a: Tensor, _ b: Tensor) -> Tensor {
        let (m, k, n) = (a.shape[0], a.shape[1], b.shape[1])
        let y = Tensor(uninitialized: [m, n])
        BLAS.gemm(m: m, n: n, k: k, a: a.data, b: b.data, c: y.data)
        return y
    }

    /// a [B, m, k] · b [B, k, n] → [B, m, n] (`torch.bmm`), optionally with bᵀ given as [B, n, k].
    public static func bmm(_ a: Tensor, _ b: Tensor, transposeB: Bool = false, alpha: Float = 1) -> Tensor {
        let (batch, m, k) = (a.shape[0], a.shape[1], a.shape[2])
        let n = transposeB ? b.shape[1] : b.shape[2]
        let y = Tensor(uninitialized: [batch, m, n])
        for i in 0..<batch {
            BLAS.gemm(transB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a.data + i * m * k,
                      b: b.data + i * k * n, c: y.data + i * m * n)
        }
        return y
    }
}

// MARK: - Activations and softmax

extension Ops {
    public static func silu(_ x: Tensor) -> Tensor { map(x) { $0 / (1 + expf(-$0)) } }
    /// GELU, exact erf form (`nn.GELU()`).
    public static func gelu(_ x: Tensor) -> Tensor { map(x) { 0.5 * $0 * (1 + erff($0 * 0.70710678118654752)) } }
    /// CLIP's quick_gelu: x · sigmoid(1.702 x).
    public static func quickGelu(_ x: Tensor) -> Tensor { map(x) { $0 / (1 + expf(-1.702 * $0)) } }

    @inline(__always)
    static func map(_ x: Tensor, _ f: @escaping (Float) -> Float) -> Tensor {
        let y = Tensor(uninitialized: x.shape)
        let src = x.data, dst = y.data
        Parallel.forEachChunk(x.count, grain: 1 << 14) { r in
            for i in r { dst[i] = f(src[i]) }
        }
        return y
    }

    /// Softmax over the last dimension.
    public static func softmax(_ x: Tensor) -> Tensor {
        let y = x.copy()
        softmaxRowsInPlace(y.data, rows: x.count / x.shape[x.rank - 1], cols: x.shape[x.rank - 1])
        return y
    }

    static func softmaxRowsInPlace(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        Parallel.forEachChunk(rows, grain: max(1, 4096 / max(cols, 1))) { r in
            for row in r {
                let v = p + row * cols
                var mx = -Float.infinity
                for j in 0..<cols { mx = max(mx, v[j]) }
                var sum: Float = 0
                for j in 0..<cols { let e = expf(v[j] - mx); v[j] = e; sum += e }
                let inv = 1 / sum
                for j in 0..<cols { v[j] *= inv }
            }
        }
    }
}

// MARK: - Normalisation

extension Ops {
    /// `nn.GroupNorm`: x [N, C, ...] normalised over each group of C/groups channels and all positions.
    public static func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c)
        let cg = c / groups
        let y = Tensor(uninitialized: x.shape)
        Parallel.forEachChunk(n * groups) { r in
            for ng in r {
                let base = ng * cg * plane
                let src = x.data + base, dst = y.data + base
                let len = cg * plane
                var mean: Double = 0
                for i in 0..<len { mean += Double(src[i]) }
                mean /= Double(len)
                var variance: Double = 0
                for i in 0..<len { let d = Double(src[i]) - mean; variance += d * d }
                variance /= Double(len)
                let rstd = Float(1 / (variance + Double(eps)).squareRoot())
                let m = Float(mean)
                let g0 = (ng % groups) * cg
                for ci in 0..<cg {
                    let scale = rstd * (weight?.data[g0 + ci] ?? 1)
                    let shift = (bias?.data[g0 + ci] ?? 0) - m * scale
                    let s = src + ci * plane, d = dst + ci * plane
                    for i in 0..<plane { d[i] = s[i] * scale + shift }
                }
            }
        }
        return y
    }

    /// `nn.LayerNorm` over the last dimension.
    public static func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let d = x.shape[x.rank - 1]
        let rows = x.count / d
        let y = Tensor(uninitialized: x.shape)
        Parallel.forEachChunk(rows, grain: max(1, 4096 / max(d, 1))) { r in
            for row in r {
                let s = x.data + row * d, o = y.data + row * d
                var mean: Float = 0
                for i in 0..<d { mean += s[i] }
                mean /= Float(d)
                var variance: Float = 0
                for i in 0..<d { let t = s[i] - mean; variance += t * t }
                let rstd = 1 / (variance / Float(d) + eps).squareRoot()
                for i in 0..<d {
                    o[i] = (s[i] - mean) * rstd * (weight?.data[i] ?? 1) + (bias?.data[i] ?? 0)
                }
            }
        }
        return y
    }

    /// NAFNet's LayerNorm2d: x [N, C, H, W] normalised over C at each pixel, then a per-channel affine.
    public static func layerNorm2d(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c)
        let y = Tensor(uninitialized: x.shape)
        for b in 0..<n {
            layerNorm2d(input: x.data + b * c * plane, channels: c, plane: plane, eps: eps,
                        weight: weight?.data, bias: bias?.data, output: y.data + b * c * plane)
        }
        return y
    }

    /// Pointer form of LayerNorm2d for one image [C, plane]; without weight/bias it only normalises.
    /// Works on tiles of pixels so each tile's C values stay in cache across the three passes.
    public static func layerNorm2d(input: UnsafePointer<Float>, channels c: Int, plane: Int, eps: Float,
                                   weight: UnsafePointer<Float>?, bias: UnsafePointer<Float>?,
                                   output: UnsafeMutablePointer<Float>) {
        let tile = 256
        let tiles = (plane + tile - 1) / tile
        Parallel.forEachChunk(tiles) { r in
            let mu = UnsafeMutablePointer<Float>.allocateAligned(capacity: 2 * tile)
            defer { mu.deallocate() }
            for t in r {
                let p0 = t * tile
                layerNorm2dPixels(input: input + p0, inputStride: plane, output: output + p0, outputStride: plane,
                                  channels: c, count: min(tile, plane - p0), eps: eps, weight: weight, bias: bias,
                                  scratch: mu)
            }
        }
    }

    /// LayerNorm2d of `count` pixels, serially: channel ch of the pixels at input + ch·inputStride, written to
    /// output + ch·outputStride. `scratch` holds 2·count floats (the pixels' means and 1/σ).
    @inline(__always)
    static func layerNorm2dPixels(input: UnsafePointer<Float>, inputStride: Int, output: UnsafeMutablePointer<Float>,
                                  outputStride: Int, channels c: Int, count len: Int, eps: Float,
                                  weight: UnsafePointer<Float>?, bias: UnsafePointer<Float>?,
                                  scratch: UnsafeMutablePointer<Float>) {
        let invC = 1 / Float(c)
        let mu = scratch, rs = scratch + len
        mu.update(repeating: 0, count: len)
        rs.update(repeating: 0, count: len)
        for ch in 0..<c {
            let s = input + ch * inputStride
            for i in 0..<len { mu[i] += s[i] }
        }
        for i in 0..<len { mu[i] *= invC }
        for ch in 0..<c {
            let s = input + ch * inputStride
            for i in 0..<len { let d = s[i] - mu[i]; rs[i] += d * d }
        }
        for i in 0..<len { rs[i] = 1 / (rs[i] * invC + eps).squareRoot() }
        for ch in 0..<c {
            let s = input + ch * inputStride, o = output + ch * outputStride
            let g = weight?[ch] ?? 1, b = bias?[ch] ?? 0
            for i in 0..<len { o[i] = (s[i] - mu[i]) * rs[i] * g + b }
        }
    }
}

// MARK: - Resampling and layout

extension Ops {
    /// Nearest-neighbour ×2 upsampling: [N, C, H, W] → [N, C, 2H, 2W].
    public static func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(uninitialized: [n, c, 2 * h, 2 * w])
        Parallel.forEachChunk(n * c) { r in
            for p in r {
                let s = x.data + p * h * w, d = y.data + p * 4 * h * w
                for iy in 0..<h {
                    let row = d + 2 * iy * 2 * w
                    for ix in 0..<w { let v = s[iy * w + ix]; row[2 * ix] = v; row[2 * ix + 1] = v }
                    (row + 2 * w).update(from: row, count: 2 * w)
                }
            }
        }
        return y
    }

    /// `nn.PixelShuffle(r)`: [N, C·r², H, W] → [N, C, H·r, W·r].
    public static func pixelShuffle(_ x: Tensor, _ r: Int) -> Tensor {
        let (n, cr, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let c = cr / (r * r)
        let y = Tensor(uninitialized: [n, c, h * r, w * r])
        pixelShuffle(input: x.data, batch: n, outChannels: c, height: h, width: w, r, output: y.data, accumulate: false)
        return y
    }

    /// Pointer form of pixel shuffle; with `accumulate` the shuffled values are added to `output` (a fused skip add).
    static func pixelShuffle(input: UnsafePointer<Float>, batch n: Int, outChannels c: Int, height h: Int, width w: Int,
                             _ r: Int, output: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let ow = w * r
        Parallel.forEachChunk(n * c) { range in
            for nc in range {
                for i in 0..<r {
                    for j in 0..<r {
                        let src = input + (nc * r * r + i * r + j) * h * w
                        let dst = output + nc * h * r * ow
                        for y in 0..<h {
                            let s = src + y * w, d = dst + (y * r + i) * ow + j
                            if accumulate {
                                for x in 0..<w { d[x * r] += s[x] }
                            } else {
                                for x in 0..<w { d[x * r] = s[x] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Global average pool: [N, C, H, W] → [N, C, 1, 1].
    public static func globalAvgPool(_ x: Tensor) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c)
        let y = Tensor(uninitialized: [n, c, 1, 1])
        for p in 0..<(n * c) {
            var s: Double = 0
            let src = x.data + p * plane
            for i in 0..<plane { s += Double(src[i]) }
            y.data[p] = Float(s / Double(plane))
        }
        return y
    }

    /// Concatenation of NCHW tensors along channels.
    public static func concatChannels(_ xs: [Tensor]) -> Tensor {
        let n = xs[0].shape[0], h = xs[0].shape[2], w = xs[0].shape[3]
        let c = xs.reduce(0) { $0 + $1.shape[1] }
        let y = Tensor(uninitialized: [n, c, h, w])
        for b in 0..<n {
            var off = b * c * h * w
            for x in xs {
                let len = x.shape[1] * h * w
                (y.data + off).update(from: x.data + b * len, count: len)
                off += len
            }
        }
        return y
    }

    /// Zero padding on the right and bottom: [N, C, H, W] → [N, C, H+bottom, W+right].
    public static func padRightBottom(_ x: Tensor, right: Int, bottom: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        if right == 0 && bottom == 0 { return x.copy() }
        let (ho, wo) = (h + bottom, w + right)
        let y = Tensor(zeros: [n, c, ho, wo])
        for p in 0..<(n * c) {
            for iy in 0..<h { (y.data + p * ho * wo + iy * wo).update(from: x.data + p * h * w + iy * w, count: w) }
        }
        return y
    }

    /// The [top, top+height) × [left, left+width) window of every plane.
    public static func crop(_ x: Tensor, top: Int, left: Int, height: Int, width: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(uninitialized: [n, c, height, width])
        for p in 0..<(n * c) {
            for iy in 0..<height {
                (y.data + p * height * width + iy * width).update(from: x.data + p * h * w + (top + iy) * w + left, count: width)
            }
        }
        return y
    }

    /// Element-wise a + b (same shape).
    public static func add(_ a: Tensor, _ b: Tensor) -> Tensor {
        let y = Tensor(uninitialized: a.shape)
        let (pa, pb, py) = (a.data, b.data, y.data)
        Parallel.forEachChunk(a.count, grain: 1 << 15) { r in for i in r { py[i] = pa[i] + pb[i] } }
        return y
    }
}

// MARK: - Reductions

extension Ops {
    /// Σ p[0 ..< count], 16 lanes at a time (float32 partial sums in lane order, then the lanes).
    @inline(__always)
    static func sum(_ p: UnsafePointer<Float>, count: Int) -> Float {
        let raw = UnsafeRawPointer(p)
        var acc = SIMD16<Float>(repeating: 0)
        var i = 0
        while i + 16 <= count {
            acc += raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        var s = acc.sum()
        while i < count { s += p[i]; i += 1 }
        return s
    }
}
