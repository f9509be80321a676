// TokenOps: moves between NCHW feature maps and [N, HW, C] token rows (diffusers Transformer2DModel's
// permute/reshape around proj_in/proj_out), fused with the projection, plus GEGLU and residual linears.
import Foundation

extension Ops {
    /// [N, C, H, W] → [N, H·W, C] (`x.permute(0, 2, 3, 1).reshape(N, H·W, C)`).
    public static func nchwToTokens(_ x: Tensor) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let hw = x.count / max(n * c, 1)
        let y = Tensor(uninitialized: [n, hw, c])
        for b in 0..<n { transpose(x.data + b * c * hw, rows: c, cols: hw, into: y.data + b * c * hw) }
        return y
    }

    /// [N, H·W, C] → [N, C, H, W].
    public static func tokensToNCHW(_ t: Tensor, height h: Int, width w: Int) -> Tensor {
        let (n, hw, c) = (t.shape[0], t.shape[1], t.shape[2])
        let y = Tensor(uninitialized: [n, c, h, w])
        for b in 0..<n { transpose(t.data + b * c * hw, rows: hw, cols: c, into: y.data + b * c * hw) }
        return y
    }

    /// dst[cols, rows] = src[rows, cols]ᵀ in 32×32 tiles.
    static func transpose(_ src: UnsafePointer<Float>, rows: Int, cols: Int, into dst: UnsafeMutablePointer<Float>) {
        let tile = 32
        let rowTiles = (rows + tile - 1) / tile
        Parallel.forEachChunk(rowTiles, grain: max(1, 8192 / max(cols * tile, 1))) { range in
            for rt in range {
                let r0 = rt * tile, r1 = min(rows, r0 + tile)
                var c0 = 0
                while c0 < cols {
                    let c1 = min(cols, c0 + tile)
                    for r in r0..<r1 {
                        for c in c0..<c1 { dst[c * rows + r] = src[r * cols + c] }
                    }
                    c0 = c1
                }
            }
        }
    }

    /// A 1×1 projection straight into token rows: x [N, C, H, W], weight [O, C] (or [O, C, 1, 1]), bias [O]
    /// → [N, H·W, O] = tokens(x) · Wᵀ + b. Equal to both of diffusers' orders (conv then permute, or
    /// permute then linear); BLAS reads x transposed, so no transposed copy is made.
    public static func projectToTokens(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let hw = x.count / max(n * c, 1)
        let o = weight.shape[0]
        let y = Tensor(uninitialized: [n, hw, o])
        for b in 0..<n {
            // y_b[hw, o] = x_b[c, hw]ᵀ · W[o, c]ᵀ + b
            BLAS.gemm(transA: true, transB: true, m: hw, n: o, k: c, a: x.data + b * c * hw, lda: hw,
                      b: weight.data, ldb: c, c: y.data + b * hw * o, colBias: bias?.data)
        }
        return y
    }

    /// The way back, fused with the residual: t [N, H·W, I], weight [C, I] (or [C, I, 1, 1]), bias [C],
    /// residual [N, C, H, W] → residual + nchw(t · Wᵀ + b).
    public static func projectFromTokens(_ t: Tensor, weight: Tensor, bias: Tensor?, residual: Tensor) -> Tensor {
        let (n, hw, i) = (t.shape[0], t.shape[1], t.shape[2])
        let c = weight.shape[0]
        let y = residual.copy()
        for b in 0..<n {
            // y_b[c, hw] += W[c, i] · t_b[hw, i]ᵀ + b
            BLAS.gemm(transB: true, m: c, n: hw, k: i, a: weight.data, b: t.data + b * hw * i, ldb: i,
                      beta: 1, c: y.data + b * c * hw, rowBias: bias?.data)
        }
        return y
    }

    /// y += x · Wᵀ + b in place (a linear layer fused with its residual add): x [..., in], y [..., out].
    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, accumulatingInto y: Tensor) {
        let inF = weight.shape[1], outF = weight.shape[0]
        let rows = x.count / inF
        BLAS.gemm(transB: true, m: rows, n: outF, k: inF, a: x.data, b: weight.data, beta: 1, c: y.data,
                  colBias: bias?.data)
    }

    /// GEGLU (diffusers `GEGLU` after its proj): x [..., 2F] → [..., F], hidden, gate = x.chunk(2, -1);
    /// out = hidden · gelu(gate) with the exact erf GELU.
    public static func geglu(_ x: Tensor) -> Tensor {
        let f2 = x.shape[x.rank - 1], f = f2 / 2
        let rows = x.count / max(f2, 1)
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [f])
        let (src, dst) = (x.data, y.data)
        Parallel.forEachChunk(rows, grain: max(1, 16384 / max(f, 1))) { r in
            for row in r {
                let h = src + row * f2, g = h + f, o = dst + row * f
                for j in 0..<f { o[j] = h[j] * (0.5 * g[j] * (1 + erff(g[j] * 0.70710678118654752))) }
            }
        }
        return y
    }
}

extension NaiveOps {
    public static func nchwToTokens(_ x: Tensor) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let hw = x.count / max(n * c, 1)
        let y = Tensor(zeros: [n, hw, c])
        for b in 0..<n { for ch in 0..<c { for p in 0..<hw { y.data[(b * hw + p) * c + ch] = x.data[(b * c + ch) * hw + p] } } }
        return y
    }

    public static func tokensToNCHW(_ t: Tensor, height h: Int, width w: Int) -> Tensor {
        let (n, hw, c) = (t.shape[0], t.shape[1], t.shape[2])
        let y = Tensor(zeros: [n, c, h, w])
        for b in 0..<n { for ch in 0..<c { for p in 0..<hw { y.data[(b * c + ch) * hw + p] = t.data[(b * hw + p) * c + ch] } } }
        return y
    }

    public static func projectToTokens(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        linear(nchwToTokens(x), weight: weight.reshaped([weight.shape[0], weight.count / weight.shape[0]]), bias: bias)
    }

    public static func projectFromTokens(_ t: Tensor, weight: Tensor, bias: Tensor?, residual: Tensor) -> Tensor {
        let p = linear(t, weight: weight.reshaped([weight.shape[0], weight.count / weight.shape[0]]), bias: bias)
        let y = tokensToNCHW(p, height: residual.shape[2], width: residual.shape[3])
        for i in 0..<y.count { y.data[i] += residual.data[i] }
        return y
    }

    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, accumulatingInto y: Tensor) {
        let p = linear(x, weight: weight, bias: bias)
        for i in 0..<y.count { y.data[i] += p.data[i] }
    }

    public static func geglu(_ x: Tensor) -> Tensor {
        let f2 = x.shape[x.rank - 1], f = f2 / 2
        let rows = x.count / max(f2, 1)
        let y = Tensor(zeros: Array(x.shape.dropLast()) + [f])
        for r in 0..<rows {
            for j in 0..<f {
                let h = Double(x.data[r * f2 + j]), g = Double(x.data[r * f2 + f + j])
                y.data[r * f + j] = Float(h * 0.5 * g * (1 + erf(g / 2.0.squareRoot())))
            }
        }
        return y
    }
}

// MARK: - Vectorised softmax (attention scores)

extension Ops {
    /// e^x on 16 lanes: Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial), ≈1 ulp
    /// on [−87.3, 88.7]; inputs are clamped there, so −∞ gives ≈1e−38 rather than 0.
    @inline(__always)
    static func exp16(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let lo = SIMD16<Float>(repeating: -87.33), hi = SIMD16<Float>(repeating: 88.72)
        var x = x.replacing(with: lo, where: x .< lo).replacing(with: hi, where: x .> hi)
        // n = round(x·log2 e) by the 1.5·2²³ trick: the sum's low mantissa bits hold n.
        let shifted = x * 1.44269504088896341 + 12582912
        let fx = shifted - 12582912
        x = x - fx * 0.693359375
        x = x - fx * -2.12194440e-4
        var y = SIMD16<Float>(repeating: 1.9875691500e-4)
        y = y * x + 1.3981999507e-3
        y = y * x + 8.3334519073e-3
        y = y * x + 4.1665795894e-2
        y = y * x + 1.6666665459e-1
        y = y * x + 5.0000001201e-1
        y = y * (x * x) + x + 1
        let n = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000
        return y * unsafeBitCast((n &+ 127) &<< 23, to: SIMD16<Float>.self)
    }

    /// Softmax over each row of p [rows, cols] in place (as `softmaxRowsInPlace`, 16 lanes at a time).
    /// A row that is all −∞ becomes NaN, as in PyTorch.
    public static func softmaxRowsFast(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        Parallel.forEachChunk(rows, grain: max(1, 8192 / max(cols, 1))) { r in
            for row in r {
                let v = p + row * cols
                let raw = UnsafeMutableRawPointer(v)
                let inv = SIMD16<Float>(repeating: 1 / expRowUnnormalized(v, cols: cols))
                var j = 0
                while j + 16 <= cols {
                    let e = raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) * inv
                    raw.storeBytes(of: e, toByteOffset: 4 * j, as: SIMD16<Float>.self)
                    j += 16
                }
                while j < cols { v[j] *= inv[0]; j += 1 }
            }
        }
    }
}

extension Ops {
    /// p[r, :] ← exp(p[r, :] − max_r) and sums[r] = Σ of the row (softmax before its division), serially.
    static func expRowsUnnormalized(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, sums: UnsafeMutablePointer<Float>) {
        for row in 0..<rows { sums[row] = expRowUnnormalized(p + row * cols, cols: cols) }
    }

    /// v ← exp(v − max v) over one row of `cols` values, 16 lanes at a time; returns Σ of the new row.
    /// A row that is all −∞ becomes NaN.
    @inline(__always)
    static func expRowUnnormalized(_ v: UnsafeMutablePointer<Float>, cols: Int) -> Float {
        let raw = UnsafeMutableRawPointer(v)
        var j = 0
        var m16 = SIMD16<Float>(repeating: -.infinity)
        while j + 16 <= cols {
            let v16 = raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self)
            m16 = m16.replacing(with: v16, where: v16 .> m16)
            j += 16
        }
        var mx = m16.max()
        while j < cols { mx = max(mx, v[j]); j += 1 }
        if mx == -.infinity { mx = .nan }
        let m = SIMD16<Float>(repeating: mx)
        var s16 = SIMD16<Float>(repeating: 0)
        j = 0
        while j + 16 <= cols {
            let e = exp16(raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) - m)
            raw.storeBytes(of: e, toByteOffset: 4 * j, as: SIMD16<Float>.self)
            s16 += e
            j += 16
        }
        var sum = s16.sum()
        while j < cols { let e = expf(v[j] - mx); v[j] = e; sum += e; j += 1 }
        return sum
    }
}

extension BLAS {
    private static let scopeLock = NSLock()
    nonisolated(unsafe) private static var scopeDepth = 0
    nonisolated(unsafe) private static var scopeSaved = 0

    /// Runs `body` with OpenBLAS limited to one thread per call, so our own threads can each run their
    /// own small gemms. Nested and concurrent scopes share one saved thread count, restored by the last to leave.
    static func singleThreaded<T>(_ body: () throws -> T) rethrows -> T {
        scopeLock.lock()
        if scopeDepth == 0 { scopeSaved = threads; setThreads(1) }
        scopeDepth += 1
        scopeLock.unlock()
        defer {
            scopeLock.lock()
            scopeDepth -= 1
            if scopeDepth == 0 { setThreads(scopeSaved) }
            scopeLock.unlock()
        }
        return try body()
    }
}
