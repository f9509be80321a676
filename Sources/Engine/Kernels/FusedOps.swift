// FusedOps: fused kernels for the latent-diffusion stack (GroupNorm + SiLU, as diffusers' ResnetBlock2D
// and the VAE's norm_out/act pairs), each with a naive twin below.
import Foundation

extension Ops {
    /// silu(GroupNorm(x)) in one kernel: x [N, C, ...] → same shape.
    public static func groupNormSiLU(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let y = Tensor(uninitialized: x.shape)
        groupNormSiLU(input: x.data, output: y.data, batch: n, channels: c, plane: x.count / max(n * c, 1), groups: groups,
                      weight: weight?.data, bias: bias?.data, eps: eps, silu: true)
        return y
    }

    /// Pointer form over [N, C, plane]; `output` may equal `input` (each group's statistics are taken before
    /// it is written). With `silu` false it is a plain GroupNorm.
    public static func groupNormSiLU(input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                                     batch n: Int, channels c: Int, plane: Int, groups: Int,
                                     weight: UnsafePointer<Float>?, bias: UnsafePointer<Float>?, eps: Float,
                                     silu: Bool = true) {
        let cg = c / groups
        let len = cg * plane
        // Work items: (image, group, slice of the group's channels) so two images × 32 groups keep all cores busy;
        // statistics are per (image, group), so they are computed first, in parallel over groups.
        var stats = [Float](repeating: 0, count: 2 * n * groups)  // mean, rstd
        stats.withUnsafeMutableBufferPointer { sb in
            let st = sb.baseAddress!
            Parallel.forEachChunk(n * groups) { r in
                for ng in r {
                    let src = input + ng * len
                    // Float partial sums over short runs, Double across runs: accurate and vectorisable.
                    var total: Double = 0
                    var i = 0
                    while i < len {
                        let e = min(len, i + 1024)
                        var s: Float = 0
                        for j in i..<e { s += src[j] }
                        total += Double(s)
                        i = e
                    }
                    let mean = Float(total / Double(len))
                    var sq: Double = 0
                    i = 0
                    while i < len {
                        let e = min(len, i + 1024)
                        var s: Float = 0
                        for j in i..<e { let d = src[j] - mean; s += d * d }
                        sq += Double(s)
                        i = e
                    }
                    st[2 * ng] = mean
                    st[2 * ng + 1] = Float(1 / (sq / Double(len) + Double(eps)).squareRoot())
                }
            }
            let st2 = UnsafePointer(st)
            Parallel.forEachChunk(n * c) { r in
                for nc in r {
                    let ch = nc % c, ng = (nc / c) * groups + ch / cg
                    let mean = st2[2 * ng], rstd = st2[2 * ng + 1]
                    let scale = rstd * (weight?[ch] ?? 1)
                    let shift = bias?[ch] ?? 0  // (x − mean)·scale + b: no cancellation when rstd is huge
                    let s = input + nc * plane, d = output + nc * plane
                    if silu {
                        for i in 0..<plane {
                            let v = (s[i] - mean) * scale + shift
                            d[i] = v / (1 + Ops.fastExp(-v))
                        }
                    } else {
                        for i in 0..<plane { d[i] = (s[i] - mean) * scale + shift }
                    }
                }
            }
        }
    }
}

extension Ops {
    /// eˣ to about 2 ulp for x in [−87, 87] (clamped outside), written without calls or branches so the loops that
    /// use it vectorise (libm's expf does not): x = n·ln2 + r, eʳ by Cephes' degree-6 polynomial, 2ⁿ by exponent bits.
    @inline(__always)
    static func fastExp(_ x: Float) -> Float {
        let x = min(max(x, -87), 87)
        let magic: Float = 12_582_912  // 1.5·2²³: adding it rounds to an integer kept in the low mantissa bits
        let v = x * 1.44269504088896341 + magic
        let n = v - magic
        let r = x - n * 0.693359375 + n * 2.12194440e-4
        var p: Float = 1.9875691500e-4
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let er = p * r * r + r + 1
        let twoN = Float(bitPattern: (v.bitPattern &- 0x4B40_0000 &+ 127) &<< 23)
        return er * twoN
    }
}

extension Ops {
    /// conv2d(upsampleNearest2x(x)) for a 3×3, stride-1, padding-1 convolution (diffusers' Upsample2D), as four
    /// 2×2 "sub-pixel" convolutions on the low-resolution input: 4/9 of the arithmetic, and neither the 4× larger
    /// upsampled tensor nor its 9× column matrix is ever built.
    ///
    /// Output pixel (2y+py, 2x+px) sees upsampled rows 2y+py−1 … 2y+py+1, i.e. low-resolution rows
    /// (y−1, y, y) for py = 0 and (y, y, y+1) for py = 1: a 2-tap filter per axis whose taps are sums of the
    /// 3×3 kernel's taps (`subpixelWeights`). All four parities come from one 2×2, padding-1 convolution with
    /// 4·Cout output channels: parity (py, px) at (y, x) is its output (y+py, x+px).
    /// x [N, Cin, H, W], weight [Cout, Cin, 3, 3] → [N, Cout, 2H, 2W]. `bandFloats` bounds the scratch matrices
    /// (rows of the 2×2 convolution are computed in bands; tests make it small to exercise the banding).
    public static func upsampleNearest2xConv3x3(_ x: Tensor, weight: Tensor, bias: Tensor?, bandFloats: Int = 8 << 20) -> Tensor {
        let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let cout = weight.shape[0]
        let (ho, wo) = (2 * h, 2 * w)
        let sub = subpixelWeights(weight)                                   // [4·Cout, Cin, 2, 2]
        let p = Conv2DParams(kernel: 2, padding: 1)                          // → [4·Cout, H+1, W+1]
        let (gh, gw) = (h + 1, w + 1)
        let k = cin * 4
        let rowsPerBand = max(1, min(gh, bandFloats / max(1, max(k, 4 * cout) * gw)))
        let y = Tensor(uninitialized: [n, cout, ho, wo])
        ScratchPool.withBuffer(k * rowsPerBand * gw) { col in
            ScratchPool.withBuffer(4 * cout * rowsPerBand * gw) { g in
                withExtendedLifetime(sub) {
                    for b in 0..<n {
                        let src = x.data + b * cin * h * w, out = y.data + b * cout * ho * wo
                        var r0 = 0
                        while r0 < gh {
                            let rows = min(rowsPerBand, gh - r0)
                            let cols = rows * gw
                            im2col(src, channels: cin, height: h, width: w, p, rowStart: r0, rows: rows, outWidth: gw, col: col)
                            BLAS.gemm(m: 4 * cout, n: cols, k: k, a: sub.data, b: col, c: g)    // g [4·Cout, rows·(W+1)]
                            // Scatter: band row i (global gy = r0 + i) holds parity py = 0 of low-res row gy and
                            // parity py = 1 of row gy − 1.
                            Parallel.forEachChunk(cout, grain: 1) { range in
                                for co in range {
                                    let bv = bias?.data[co] ?? 0
                                    let plane = out + co * ho * wo
                                    for i in 0..<rows {
                                        let gy = r0 + i
                                        for py in 0..<2 {
                                            let ly = gy - py
                                            if ly < 0 || ly >= h { continue }
                                            let even = g + ((2 * py) * cout + co) * cols + i * gw      // px = 0: columns x
                                            let odd = g + ((2 * py + 1) * cout + co) * cols + i * gw   // px = 1: columns x + 1
                                            let row = plane + (2 * ly + py) * wo
                                            for xx in 0..<w {
                                                row[2 * xx] = even[xx] + bv
                                                row[2 * xx + 1] = odd[xx + 1] + bv
                                            }
                                        }
                                    }
                                }
                            }
                            r0 += rows
                        }
                    }
                }
            }
        }
        return y
    }

    /// The four 2×2 sub-pixel kernels of a 3×3 kernel under nearest ×2 upsampling, stacked by parity
    /// q = 2·py + px: [Cout, Cin, 3, 3] → [4·Cout, Cin, 2, 2]. Taps per axis: parity 0 → (w0, w1 + w2), parity 1 → (w0 + w1, w2).
    static func subpixelWeights(_ weight: Tensor) -> Tensor {
        let (cout, cin) = (weight.shape[0], weight.shape[1])
        let out = Tensor(uninitialized: [4 * cout, cin, 2, 2])
        @inline(__always) func fold(_ a: Float, _ b: Float, _ c: Float, parity: Int) -> (Float, Float) {
            parity == 0 ? (a, b + c) : (a + b, c)
        }
        for co in 0..<cout {
            for ci in 0..<cin {
                let k = weight.data + (co * cin + ci) * 9
                for py in 0..<2 {
                    // fold the three kernel rows into two taps along y, per kernel column
                    let (c0t0, c0t1) = fold(k[0], k[3], k[6], parity: py)
                    let (c1t0, c1t1) = fold(k[1], k[4], k[7], parity: py)
                    let (c2t0, c2t1) = fold(k[2], k[5], k[8], parity: py)
                    for px in 0..<2 {
                        let dst = out.data + (((2 * py + px) * cout + co) * cin + ci) * 4
                        (dst[0], dst[1]) = fold(c0t0, c1t0, c2t0, parity: px)
                        (dst[2], dst[3]) = fold(c0t1, c1t1, c2t1, parity: px)
                    }
                }
            }
        }
        return out
    }
}

extension NaiveOps {
    /// conv2d(upsampleNearest2x(x)), 3×3, padding 1, composed from the naive twins.
    public static func upsampleNearest2xConv3x3(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        conv2d(upsampleNearest2x(x), weight: weight, bias: bias, Conv2DParams(kernel: 3, padding: 1))
    }
}

extension NaiveOps {
    /// silu(groupNorm(x)), composed from the naive twins.
    public static func groupNormSiLU(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        silu(groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps))
    }
}
