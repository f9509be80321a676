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
    /// conv2d(upsampleNearest2x(x)) for a 3×3, stride-1, padding-1 convolution (diffusers' Upsample2D), without
    /// building the 4× larger upsampled tensor: the column builder reads the low-resolution source directly.
    /// x [N, Cin, H, W], weight [Cout, Cin, 3, 3] → [N, Cout, 2H, 2W].
    public static func upsampleNearest2xConv3x3(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let cout = weight.shape[0]
        let (ho, wo) = (2 * h, 2 * w)
        let k = cin * 9
        let y = Tensor(uninitialized: [n, cout, ho, wo])
        let rowsPerBand = max(1, min(ho, (8 << 20) / max(1, k * wo)))
        let col = UnsafeMutablePointer<Float>.allocateAligned(capacity: k * rowsPerBand * wo)
        defer { col.deallocate() }
        for b in 0..<n {
            let src = x.data + b * cin * h * w, out = y.data + b * cout * ho * wo
            fillBias(out, bias?.data, channels: cout, plane: ho * wo)
            var r0 = 0
            while r0 < ho {
                let rows = min(rowsPerBand, ho - r0)
                let cols = rows * wo
                // col[(c, ky, kx)][oy·wo + ox] = up[c][r0+oy+ky−1][ox+kx−1], up[c][Y][X] = x[c][Y/2][X/2], zero outside
                Parallel.forEachChunk(cin * 9, grain: 4) { range in
                    for r in range {
                        let c = r / 9, ky = (r % 9) / 3, kx = r % 3
                        let plane = src + c * h * w
                        let dst = col + r * cols
                        let lo = kx == 0 ? 1 : 0, hi = kx == 2 ? wo - 1 : wo
                        for oy in 0..<rows {
                            let yy = r0 + oy + ky - 1
                            let d = dst + oy * wo
                            if yy < 0 || yy >= ho {
                                d.update(repeating: 0, count: wo)
                                continue
                            }
                            let s = plane + (yy >> 1) * w
                            if lo > 0 { d[0] = 0 }
                            for ox in lo..<hi { d[ox] = s[(ox + kx - 1) >> 1] }
                            if hi < wo { d[wo - 1] = 0 }
                        }
                    }
                }
                BLAS.gemm(m: cout, n: cols, k: k, a: weight.data, b: col, ldb: cols, beta: 1, c: out + r0 * wo, ldc: ho * wo)
                r0 += rows
            }
        }
        return y
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
