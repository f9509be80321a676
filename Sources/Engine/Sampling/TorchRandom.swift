// TorchRandom: a `NoiseSource` reproducing PyTorch's CPU `torch.manual_seed(s); torch.randn(shape)` bit for bit
// (float32), so that a seed means the same noise here as in the Python reference (as ml-stable-diffusion's
// `TorchRandomSource` does for its Python twin).
//
// What torch does (aten/src/ATen/core/MT19937RNGEngine.h, TransformationHelper.h, DistributionsHelper.h,
// native/cpu/DistributionTemplates.h, native/cpu/avx_mathfun.h), as verified against torch 2.x on x86-64:
// - Engine: MT19937 seeded with the low 32 bits of the seed (standard init_genrand).
// - Fewer than 16 elements: one `normal_distribution<double>` draw per element: u₁, u₂ from 53-bit uniforms
//   ((r₁ << 32 | r₂) & (2⁵³−1))·2⁻⁵³, r = √(−2·log1p(−u₂)), θ = 2π·u₁; returns r·cos θ and caches r·sin θ
//   for the next small draw (the cache lives in the generator and survives between calls; re-seeding clears it).
// - 16 elements or more: every element first gets a 24-bit uniform (r & (2²⁴−1))·2⁻²⁴; then each block of 16
//   is Box–Muller'd in place over the pairs (j, j+8) with avx_mathfun's Cephes float32 `log256_ps` and
//   `sincos256_ps` (fused multiply-adds where torch's build contracts them); when the size is not a
//   multiple of 16 the LAST 16 elements are redrawn and transformed again (overlapping the previous block).
// Other backends (MKL's VSL path on some Intel builds, CUDA) produce different numbers.
import Foundation

/// MT19937 as torch's `at::mt19937` (32-bit output, standard Knuth seeding).
public struct MT19937: Sendable {
    private var state: [UInt32]
    private var index: Int

    public init(seed: UInt64) {
        var s = [UInt32](repeating: 0, count: 624)
        s[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1..<624 {
            s[i] = 1_812_433_253 &* (s[i - 1] ^ (s[i - 1] >> 30)) &+ UInt32(i)
        }
        state = s
        index = 624
    }

    public mutating func next() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            var v = y >> 1
            if y & 1 != 0 { v ^= 0x9908_B0DF }
            state[i] = state[(i + 397) % 624] ^ v
        }
        index = 0
    }
}

/// torch-CPU-compatible standard normal noise: `TorchRandomSource(seed: s)` then `randn(shape)` calls
/// give the same float32 values as `torch.manual_seed(s)` then the same `torch.randn(shape)` calls.
public struct TorchRandomSource: NoiseSource, Sendable {
    public private(set) var engine: MT19937
    private var nextDoubleNormal: Double? = nil

    public init(seed: UInt64) { engine = MT19937(seed: seed) }

    public mutating func randn(_ shape: [Int]) throws -> Tensor {
        let t = Tensor(uninitialized: shape)
        let n = t.count
        if n < 16 {
            for i in 0..<n { t.data[i] = Float(normalDouble()) }
            return t
        }
        for i in 0..<n { t.data[i] = uniformFloat() }
        var i = 0
        while i + 16 <= n {
            Self.fill16(t.data + i)
            i += 16
        }
        if n % 16 != 0 {
            let tail = t.data + (n - 16)
            for j in 0..<16 { tail[j] = uniformFloat() }
            Self.fill16(tail)
        }
        return t
    }

    /// uniform_real_distribution<float>(0, 1): 24 random bits.
    mutating func uniformFloat() -> Float {
        Float(engine.next() & 0xFF_FFFF) * (1 / Float(1 << 24))
    }

    /// uniform_real_distribution<double>(0, 1): 53 bits of random64() = (r₁ << 32) | r₂.
    mutating func uniformDouble() -> Double {
        let hi = UInt64(engine.next()), lo = UInt64(engine.next())
        return Double(((hi << 32) | lo) & ((1 << 53) - 1)) * 0x1p-53
    }

    /// normal_distribution<double>(0, 1) with torch's one-sample cache.
    mutating func normalDouble() -> Double {
        if let cached = nextDoubleNormal {
            nextDoubleNormal = nil
            return cached
        }
        let u1 = uniformDouble(), u2 = uniformDouble()
        let r = (-2 * Foundation.log1p(-u2)).squareRoot()
        let theta = 2 * Double.pi * u1
        nextDoubleNormal = r * Foundation.sin(theta)
        return r * Foundation.cos(theta)
    }

    /// normal_fill_16_AVX2: Box–Muller over (data[j], data[j+8]), j < 8, in place.
    static func fill16(_ data: UnsafeMutablePointer<Float>) {
        let twoPi = Float(2 * Double.pi)
        for j in 0..<8 {
            let u1: Float = 1 - data[j]                 // [0, 1) → (0, 1]
            let u2 = data[j + 8]
            let radius = (-2 * cephesLog(u1)).squareRoot()
            let (s, c) = cephesSincos(twoPi * u2)
            data[j] = radius * c + 0                    // fmadd(n, std 1, mean 0): −0 becomes +0
            data[j + 8] = radius * s + 0
        }
    }

    /// avx_mathfun `log256_ps` for one lane (Cephes logf), with torch's FMA contractions.
    static func cephesLog(_ x0: Float) -> Float {
        var x = max(x0, Float(bitPattern: 0x0080_0000))   // min normalised positive
        var bits = x.bitPattern
        var e = Float(Int32(bitPattern: bits >> 23) - 0x7F) + 1
        bits = (bits & ~0x7F80_0000) | Float(0.5).bitPattern
        x = Float(bitPattern: bits)                        // mantissa in [0.5, 1)
        let below = x < Float(0.707106781186547524)
        let tmp: Float = below ? x : 0
        x -= 1
        if below { e -= 1 }
        x += tmp
        let z = x * x
        var y: Float = 7.0376836292e-2
        y = (-1.1514610310e-1 as Float).addingProduct(y, x)
        y = (1.1676998740e-1 as Float).addingProduct(y, x)
        y = (-1.2420140846e-1 as Float).addingProduct(y, x)
        y = (1.4249322787e-1 as Float).addingProduct(y, x)
        y = (-1.6668057665e-1 as Float).addingProduct(y, x)
        y = (2.0000714765e-1 as Float).addingProduct(y, x)
        y = (-2.4999993993e-1 as Float).addingProduct(y, x)
        y = (3.3333331174e-1 as Float).addingProduct(y, x)
        y = y * x
        y = (e * -2.12194440e-4).addingProduct(y, z)
        y = y.addingProduct(z, -0.5)
        x = x + y
        return x.addingProduct(e, 0.693359375)
    }

    /// avx_mathfun `sincos256_ps` for one lane (Cephes sinf/cosf), with torch's FMA contractions.
    static func cephesSincos(_ theta: Float) -> (sin: Float, cos: Float) {
        var signSin = theta.bitPattern & 0x8000_0000
        var x = Float(bitPattern: theta.bitPattern & 0x7FFF_FFFF)
        let y0 = x * Float(1.27323954473516)               // 4/π
        var j = Int32(y0)                                  // truncation, as cvttps2dq (y0 ≥ 0, small)
        j = (j &+ 1) & ~1
        let yq = Float(j)
        let swapSign = UInt32(bitPattern: j & 4) << 29
        let usePoly = (j & 2) == 0
        signSin ^= swapSign
        let signCos = UInt32(bitPattern: ~(j &- 2) & 4) << 29
        x = x.addingProduct(yq, -0.78515625)              // extended-precision range reduction
        x = x.addingProduct(yq, -2.4187564849853515625e-4)
        x = x.addingProduct(yq, -3.77489497744594108e-8)
        let z = x * x
        var yc = (-1.388731625493765e-3 as Float).addingProduct(2.443315711809948e-5, z)
        yc = (4.166664568298827e-2 as Float).addingProduct(yc, z)
        yc = yc * z
        yc = (-(z * 0.5)).addingProduct(yc, z)             // fmsub(yc, z, z·0.5)
        yc = yc + 1
        var ys = (8.3321608736e-3 as Float).addingProduct(-1.9515295891e-4, z)
        ys = (-1.6666654611e-1 as Float).addingProduct(ys, z)
        ys = ys * z
        ys = x.addingProduct(ys, x)
        let sinV = usePoly ? ys : yc
        let cosV = usePoly ? yc : ys
        return (Float(bitPattern: sinV.bitPattern ^ signSin), Float(bitPattern: cosV.bitPattern ^ signCos))
    }
}
