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

extension NaiveOps {
    /// silu(groupNorm(x)), composed from the naive twins.
    public static func groupNormSiLU(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        silu(groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps))
    }
}
