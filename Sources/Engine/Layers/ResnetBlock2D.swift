// ResnetBlock2D: diffusers' `ResnetBlock2D` (models/resnet.py) with time_embedding_norm "default",
// output_scale_factor 1, SiLU, shared by AutoencoderKL (no time embedding) and the UNet.
import Foundation

/// h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb)); h = conv2(silu(norm2(h))); out = shortcut(x) + h.
///
/// Keys: `norm1`, `conv1`, `time_emb_proj` (only with `tembChannels`), `norm2`, `conv2`, `conv_shortcut`
/// (1×1, only when in ≠ out). Tensors are NCHW.
public struct ResnetBlock2D: Sendable {
    public let inChannels: Int, outChannels: Int
    let norm1: GroupNorm, conv1: Conv2d
    let timeEmbProj: Linear?
    let norm2: GroupNorm, conv2: Conv2d
    let convShortcut: Conv2d?

    public init(_ w: WeightLoader, inChannels: Int, outChannels: Int, tembChannels: Int?, groups: Int = 32, eps: Float) throws {
        guard inChannels > 0, outChannels > 0, groups > 0, inChannels % groups == 0, outChannels % groups == 0 else {
            throw EngineError.format("ResnetBlock2D \(w.prefix): channels \(inChannels) → \(outChannels) not divisible by \(groups) groups")
        }
        self.inChannels = inChannels
        self.outChannels = outChannels
        norm1 = try GroupNorm(w.scoped("norm1"), groups: groups, channels: inChannels, eps: eps)
        conv1 = try Conv2d(w.scoped("conv1"), inChannels: inChannels, outChannels: outChannels, kernel: 3, padding: 1)
        timeEmbProj = try tembChannels.map { try Linear(w.scoped("time_emb_proj"), inFeatures: $0, outFeatures: outChannels) }
        norm2 = try GroupNorm(w.scoped("norm2"), groups: groups, channels: outChannels, eps: eps)
        conv2 = try Conv2d(w.scoped("conv2"), inChannels: outChannels, outChannels: outChannels, kernel: 3, padding: 1)
        convShortcut = inChannels == outChannels ? nil
            : try Conv2d(w.scoped("conv_shortcut"), inChannels: inChannels, outChannels: outChannels, kernel: 1)
    }

    /// x [N, Cin, H, W], temb [N (or 1), tembChannels] (the raw time embedding; the block applies SiLU then
    /// time_emb_proj) → [N, Cout, H, W].
    public func callAsFunction(_ x: Tensor, temb: Tensor?) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inChannels, "ResnetBlock2D: input \(x.shape), expected \(inChannels) channels")
        let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3])
        let plane = h * w
        let (cin, cout) = (inChannels, outChannels)
        // Per-image conv1 bias: conv1.bias + time_emb_proj(silu(temb))                  [N, Cout]
        let bias1 = Tensor(uninitialized: [n, cout])
        for b in 0..<n {
            if let b1 = conv1.bias { (bias1.data + b * cout).update(from: b1.data, count: cout) } else {
                (bias1.data + b * cout).update(repeating: 0, count: cout)
            }
        }
        if let proj = timeEmbProj, let temb {
            precondition(temb.rank == 2 && (temb.shape[0] == n || temb.shape[0] == 1) && temb.shape[1] == proj.weight.shape[1],
                         "ResnetBlock2D: temb \(temb.shape) for input \(x.shape)")
            let t = proj(Ops.silu(temb))                                                // [N or 1, Cout]
            for b in 0..<n {
                let src = t.data + (t.shape[0] == 1 ? 0 : b * cout), dst = bias1.data + b * cout
                for c in 0..<cout { dst[c] += src[c] }
            }
        }
        // a = silu(norm1(x))                                                           [N, Cin, H, W]
        let a = Ops.groupNormSiLU(x, groups: norm1.groups, weight: norm1.weight, bias: norm1.bias, eps: norm1.eps)
        // hidden = conv1(a) + bias1; then silu(norm2(hidden)) in place                  [N, Cout, H, W]
        let hidden = Tensor(uninitialized: [n, cout, h, w])
        conv1.weight.withFloat32 { weight1 in
            withExtendedLifetime((a, bias1)) {
                for b in 0..<n {
                    Ops.conv2d(input: a.data + b * cin * plane, channels: cin, height: h, width: w, weight: weight1.data,
                               bias: bias1.data + b * cout, outChannels: cout, conv1.params, output: hidden.data + b * cout * plane)
                }
            }
        }
        Ops.groupNormSiLU(input: hidden.data, output: hidden.data, batch: n, channels: cout, plane: plane, groups: norm2.groups,
                          weight: norm2.weight.data, bias: norm2.bias.data, eps: norm2.eps)
        // out = shortcut(x) + conv2(hidden), the residual add fused into the convolution  [N, Cout, H, W]
        let out = convShortcut.map { $0(x) } ?? x.copy()
        conv2.weight.withFloat32 { weight2 in
            withExtendedLifetime(hidden) {
                for b in 0..<n {
                    Ops.conv2d(input: hidden.data + b * cout * plane, channels: cout, height: h, width: w, weight: weight2.data,
                               bias: conv2.bias?.data, outChannels: cout, conv2.params, output: out.data + b * cout * plane,
                               accumulate: true)
                }
            }
        }
        return out
    }

    /// Multiply-adds ×2 of one call on an H×W input (convolutions and time_emb_proj), as PyTorch's FlopCounterMode counts.
    public func flops(batch n: Int = 1, height h: Int, width w: Int) -> Double {
        let p = Double(h * w), (ci, co) = (Double(inChannels), Double(outChannels))
        var f = 2 * p * 9 * (ci * co + co * co)
        if convShortcut != nil { f += 2 * p * ci * co }
        if let t = timeEmbProj { f += 2 * Double(t.weight.count) }
        return f * Double(n)
    }
}
