// AutoencoderKL: the latent-diffusion VAE, diffusers `AutoencoderKL` (models/autoencoders/autoencoder_kl.py, vae.py).
//
// encode: image [N, in_channels, H, W] in [−1, 1] → posterior mode (the mean half of the moments), NOT scaled by
// scaling_factor, [N, latent_channels, H/f, W/f] with f = 2^(levels−1) (8 for SD's KL-f8).
// decode: latent [N, latent_channels, h, w] (already divided by scaling_factor) → [N, out_channels, f·h, f·w].
// Tensors are NCHW throughout. `encodeTiled`/`decodeTiled` bound the memory of large images.
import Foundation

/// `vae/config.json` as diffusers writes it; defaults are the SD 1.x / AutoDIR KL-f8 (≈83.7 M parameters).
public struct AutoencoderKLConfig: Codable, Sendable, Equatable {
    public var inChannels = 3
    public var outChannels = 3
    public var downBlockTypes = [String](repeating: "DownEncoderBlock2D", count: 4)
    public var upBlockTypes = [String](repeating: "UpDecoderBlock2D", count: 4)
    public var blockOutChannels = [128, 256, 512, 512]
    public var layersPerBlock = 2
    public var actFn = "silu"
    public var latentChannels = 4
    public var normNumGroups = 32
    public var sampleSize = 512
    public var scalingFactor: Float = 0.18215
    public var shiftFactor: Float?
    public var useQuantConv = true
    public var usePostQuantConv = true
    public var midBlockAddAttention = true

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outChannels = "out_channels", downBlockTypes = "down_block_types"
        case upBlockTypes = "up_block_types", blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block"
        case actFn = "act_fn", latentChannels = "latent_channels", normNumGroups = "norm_num_groups"
        case sampleSize = "sample_size", scalingFactor = "scaling_factor", shiftFactor = "shift_factor"
        case useQuantConv = "use_quant_conv", usePostQuantConv = "use_post_quant_conv"
        case midBlockAddAttention = "mid_block_add_attention"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = AutoencoderKLConfig()
        inChannels = try c.decodeIfPresent(Int.self, forKey: .inChannels) ?? d.inChannels
        outChannels = try c.decodeIfPresent(Int.self, forKey: .outChannels) ?? d.outChannels
        blockOutChannels = try c.decodeIfPresent([Int].self, forKey: .blockOutChannels) ?? d.blockOutChannels
        // diffusers' defaults for the block types are a single block; with only block_out_channels given, match its length.
        let n = blockOutChannels.count
        downBlockTypes = try c.decodeIfPresent([String].self, forKey: .downBlockTypes)
            ?? [String](repeating: "DownEncoderBlock2D", count: n)
        upBlockTypes = try c.decodeIfPresent([String].self, forKey: .upBlockTypes) ?? [String](repeating: "UpDecoderBlock2D", count: n)
        layersPerBlock = try c.decodeIfPresent(Int.self, forKey: .layersPerBlock) ?? d.layersPerBlock
        actFn = try c.decodeIfPresent(String.self, forKey: .actFn) ?? d.actFn
        latentChannels = try c.decodeIfPresent(Int.self, forKey: .latentChannels) ?? d.latentChannels
        normNumGroups = try c.decodeIfPresent(Int.self, forKey: .normNumGroups) ?? d.normNumGroups
        sampleSize = try c.decodeIfPresent(Int.self, forKey: .sampleSize) ?? d.sampleSize
        scalingFactor = try c.decodeIfPresent(Float.self, forKey: .scalingFactor) ?? d.scalingFactor
        shiftFactor = try c.decodeIfPresent(Float.self, forKey: .shiftFactor)
        useQuantConv = try c.decodeIfPresent(Bool.self, forKey: .useQuantConv) ?? d.useQuantConv
        usePostQuantConv = try c.decodeIfPresent(Bool.self, forKey: .usePostQuantConv) ?? d.usePostQuantConv
        midBlockAddAttention = try c.decodeIfPresent(Bool.self, forKey: .midBlockAddAttention) ?? d.midBlockAddAttention
    }

    /// Reads and validates a `config.json`.
    public static func load(path: String) throws -> AutoencoderKLConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.io("cannot read AutoencoderKL config \(path)")
        }
        let config: AutoencoderKLConfig
        do { config = try JSONDecoder().decode(AutoencoderKLConfig.self, from: data) } catch {
            throw EngineError.format("AutoencoderKL config \(path): \(error)")
        }
        try config.validate()
        return config
    }

    public func validate() throws {
        let g = normNumGroups
        guard inChannels > 0, inChannels <= 64, outChannels > 0, outChannels <= 64, latentChannels > 0, latentChannels <= 64,
              !blockOutChannels.isEmpty, blockOutChannels.count <= 8, layersPerBlock >= 1, layersPerBlock <= 16, g > 0,
              blockOutChannels.allSatisfy({ $0 > 0 && $0 <= 4096 && $0 % g == 0 }) else {
            throw EngineError.format("AutoencoderKL config out of range: \(self)")
        }
        guard downBlockTypes.count == blockOutChannels.count, upBlockTypes.count == blockOutChannels.count,
              downBlockTypes.allSatisfy({ $0 == "DownEncoderBlock2D" }), upBlockTypes.allSatisfy({ $0 == "UpDecoderBlock2D" }) else {
            throw EngineError.format("AutoencoderKL: only DownEncoderBlock2D/UpDecoderBlock2D, one per block_out_channels entry, are supported")
        }
        guard actFn == "silu" else { throw EngineError.format("AutoencoderKL: act_fn '\(actFn)' is not supported (silu only)") }
    }

    /// Spatial factor between image and latent: 2^(levels − 1).
    public var downsampleFactor: Int { 1 << (blockOutChannels.count - 1) }
}

/// diffusers' `Attention` as the VAE mid-block builds it: one head over all H·W tokens, GroupNorm first,
/// residual added. Keys `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`. q, k, v come from one fused projection.
struct VAEAttention: Sendable {
    let channels: Int
    let norm: GroupNorm
    let qkvWeight: Weight  // [3C, C]: to_q, to_k, to_v stacked
    let qkvBias: Tensor    // [3C]
    let toOut: Linear

    init(_ w: WeightLoader, channels c: Int, groups: Int, eps: Float) throws {
        channels = c
        norm = try GroupNorm(w.scoped("group_norm"), groups: groups, channels: c, eps: eps)
        let stacked = Tensor(uninitialized: [3 * c, c])
        qkvBias = Tensor(uninitialized: [3 * c])
        for (i, name) in ["to_q", "to_k", "to_v"].enumerated() {
            let lin = try Linear(w.scoped(name), inFeatures: c, outFeatures: c)
            let rows = lin.weight.float32()
            withExtendedLifetime(rows) { (stacked.data + i * c * c).update(from: rows.data, count: c * c) }
            if let b = lin.bias { (qkvBias.data + i * c).update(from: b.data, count: c) }
        }
        qkvWeight = try w.resident(stacked, name: "to_qkv.weight")
        toOut = try Linear(w.scoped("to_out.0"), inFeatures: c, outFeatures: c)
    }

    /// x [N, C, H, W] → x + to_out(attention(norm(x))) [N, C, H, W].
    func callAsFunction(_ x: Tensor) -> Tensor {
        let (n, c, hw) = (x.shape[0], channels, x.shape[2] * x.shape[3])
        let out = x.copy()
        let normed = UnsafeMutablePointer<Float>.allocateAligned(capacity: c * hw)
        let qkv = UnsafeMutablePointer<Float>.allocateAligned(capacity: hw * 3 * c)
        let attn = UnsafeMutablePointer<Float>.allocateAligned(capacity: hw * c)
        defer { normed.deallocate(); qkv.deallocate(); attn.deallocate() }
        qkvWeight.withFloat32 { qkvWeight in toOut.weight.withFloat32 { outWeight in  // [3C, C], [C, C]
            for b in 0..<n {
                let xb = x.data + b * c * hw, ob = out.data + b * c * hw
                // x̂ = GroupNorm(x)                                                        [C, HW]
                Ops.groupNormSiLU(input: xb, output: normed, batch: 1, channels: c, plane: hw, groups: norm.groups,
                                  weight: norm.weight.data, bias: norm.bias.data, eps: norm.eps, silu: false)
                // [q | k | v] = x̂ᵀ · W_qkvᵀ + b                                           [HW, 3C]
                BLAS.gemm(transA: true, transB: true, m: hw, n: 3 * c, k: c, a: normed, b: qkvWeight.data, c: qkv,
                          colBias: qkvBias.data)
                // o = softmax(q kᵀ / √C) v, blocked over queries                          [HW, C]
                Ops.attention(q: AttentionOperand(qkv, rowStride: 3 * c, batchStride: 0),
                              k: AttentionOperand(qkv + c, rowStride: 3 * c, batchStride: 0),
                              v: AttentionOperand(qkv + 2 * c, rowStride: 3 * c, batchStride: 0),
                              out: AttentionOperand(attn, rowStride: c, batchStride: 0),
                              batch: 1, heads: 1, queries: hw, keys: hw, headDim: c, scale: 1 / Float(c).squareRoot())
                // out = x + W_o · oᵀ + b_o, written straight back in NCHW                   [C, HW]
                BLAS.gemm(transB: true, m: c, n: hw, k: c, a: outWeight.data, b: attn, beta: 1, c: ob,
                          rowBias: toOut.bias?.data)
            }
        } }
        return out
    }

    func flops(tokens l: Int) -> Double {
        let (l, c) = (Double(l), Double(channels))
        return 2 * l * c * c * 4 + 2 * 2 * l * l * c
    }
}

/// `UNetMidBlock2D` without time embedding: resnets.0 → attentions.0 → resnets.1.
struct VAEMidBlock: Sendable {
    let resnet0: ResnetBlock2D, attention: VAEAttention?, resnet1: ResnetBlock2D

    init(_ w: WeightLoader, channels c: Int, groups: Int, addAttention: Bool) throws {
        resnet0 = try ResnetBlock2D(w.scoped("resnets.0"), inChannels: c, outChannels: c, tembChannels: nil, groups: groups, eps: 1e-6)
        attention = addAttention ? try VAEAttention(w.scoped("attentions.0"), channels: c, groups: groups, eps: 1e-6) : nil
        resnet1 = try ResnetBlock2D(w.scoped("resnets.1"), inChannels: c, outChannels: c, tembChannels: nil, groups: groups, eps: 1e-6)
    }

    func callAsFunction(_ x: Tensor, trace: AutoencoderKL.Trace?, name: String) -> Tensor {
        var h = resnet0(x, temb: nil)
        if let attention {
            trace?(name + "_attn_in", h)
            h = attention(h)
            trace?(name + "_attn_out", h)
        }
        return resnet1(h, temb: nil)
    }

    func flops(height: Int, width: Int) -> Double {
        resnet0.flops(height: height, width: width) + resnet1.flops(height: height, width: width)
            + (attention?.flops(tokens: height * width) ?? 0)
    }
}

/// The VAE. Immutable after loading: one instance may serve concurrent calls.
public struct AutoencoderKL: Sendable {
    public let config: AutoencoderKLConfig

    // Encoder
    let encConvIn: Conv2d
    let downResnets: [[ResnetBlock2D]]
    let downsamplers: [Conv2d?]        // 3×3 stride 2 after a (0, 1, 0, 1) zero pad
    let encMid: VAEMidBlock
    let encNormOut: GroupNorm
    let encConvOut: Conv2d
    let quantConv: Conv2d?
    // Decoder
    let postQuantConv: Conv2d?
    let decConvIn: Conv2d
    let decMid: VAEMidBlock
    let upResnets: [[ResnetBlock2D]]
    let upsamplers: [Conv2d?]          // nearest ×2 then 3×3
    let decNormOut: GroupNorm
    let decConvOut: Conv2d

    /// Loads from `weights` with diffusers' keys (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`), strictly.
    public init(config: AutoencoderKLConfig, weights w: WeightLoader) throws {
        try config.validate()
        self.config = config
        let g = config.normNumGroups, ch = config.blockOutChannels, levels = ch.count
        let e = w.scoped("encoder"), d = w.scoped("decoder")
        encConvIn = try Conv2d(e.scoped("conv_in"), inChannels: config.inChannels, outChannels: ch[0], kernel: 3, padding: 1)
        var downResnets: [[ResnetBlock2D]] = [], downsamplers: [Conv2d?] = []
        var c = ch[0]
        for i in 0..<levels {
            let blk = e.scoped("down_blocks.\(i)")
            var resnets: [ResnetBlock2D] = []
            for j in 0..<config.layersPerBlock {
                resnets.append(try ResnetBlock2D(blk.scoped("resnets.\(j)"), inChannels: c, outChannels: ch[i], tembChannels: nil,
                                                 groups: g, eps: 1e-6))
                c = ch[i]
            }
            downResnets.append(resnets)
            downsamplers.append(i == levels - 1 ? nil
                : try Conv2d(blk.scoped("downsamplers.0.conv"), inChannels: c, outChannels: c, kernel: 3, stride: 2))
        }
        self.downResnets = downResnets
        self.downsamplers = downsamplers
        encMid = try VAEMidBlock(e.scoped("mid_block"), channels: c, groups: g, addAttention: config.midBlockAddAttention)
        encNormOut = try GroupNorm(e.scoped("conv_norm_out"), groups: g, channels: c, eps: 1e-6)
        let lat = config.latentChannels
        encConvOut = try Conv2d(e.scoped("conv_out"), inChannels: c, outChannels: 2 * lat, kernel: 3, padding: 1)
        quantConv = config.useQuantConv ? try Conv2d(w.scoped("quant_conv"), inChannels: 2 * lat, outChannels: 2 * lat, kernel: 1) : nil

        postQuantConv = config.usePostQuantConv
            ? try Conv2d(w.scoped("post_quant_conv"), inChannels: lat, outChannels: lat, kernel: 1) : nil
        let rev = Array(ch.reversed())
        decConvIn = try Conv2d(d.scoped("conv_in"), inChannels: lat, outChannels: rev[0], kernel: 3, padding: 1)
        decMid = try VAEMidBlock(d.scoped("mid_block"), channels: rev[0], groups: g, addAttention: config.midBlockAddAttention)
        var upResnets: [[ResnetBlock2D]] = [], upsamplers: [Conv2d?] = []
        c = rev[0]
        for i in 0..<levels {
            let blk = d.scoped("up_blocks.\(i)")
            var resnets: [ResnetBlock2D] = []
            for j in 0...config.layersPerBlock {
                resnets.append(try ResnetBlock2D(blk.scoped("resnets.\(j)"), inChannels: c, outChannels: rev[i], tembChannels: nil,
                                                 groups: g, eps: 1e-6))
                c = rev[i]
            }
            upResnets.append(resnets)
            upsamplers.append(i == levels - 1 ? nil
                : try Conv2d(blk.scoped("upsamplers.0.conv"), inChannels: c, outChannels: c, kernel: 3, padding: 1))
        }
        self.upResnets = upResnets
        self.upsamplers = upsamplers
        decNormOut = try GroupNorm(d.scoped("conv_norm_out"), groups: g, channels: c, eps: 1e-6)
        decConvOut = try Conv2d(d.scoped("conv_out"), inChannels: c, outChannels: config.outChannels, kernel: 3, padding: 1)
        try w.finish()
    }

    /// Loads `config.json` + `diffusion_pytorch_model.safetensors` from a diffusers `vae/` folder.
    public init(directory: String, precision: WeightPrecision = .float32) throws {
        let config = try AutoencoderKLConfig.load(path: directory + "/config.json")
        try self.init(config: config, weights: try WeightLoader(path: directory + "/diffusion_pytorch_model.safetensors", precision: precision))
    }

    /// Intermediate activations, for tests against diffusers.
    public typealias Trace = (String, Tensor) -> Void

    public var downsampleFactor: Int { config.downsampleFactor }

    // MARK: Encoder

    /// image [N, in_channels, H, W] in [−1, 1], H and W positive multiples of `downsampleFactor` →
    /// posterior mode [N, latent_channels, H/f, W/f] (not scaled).
    public func encode(_ image: Tensor, trace: Trace? = nil) throws -> Tensor {
        let f = downsampleFactor
        guard image.rank == 4, image.shape[0] > 0, image.shape[1] == config.inChannels else {
            throw EngineError.invalidArgument("AutoencoderKL.encode expects [N, \(config.inChannels), H, W], got \(image.shape)")
        }
        guard image.shape[2] > 0, image.shape[3] > 0, image.shape[2] % f == 0, image.shape[3] % f == 0 else {
            throw EngineError.invalidArgument("AutoencoderKL.encode: image size \(image.shape[2])×\(image.shape[3]) is not a multiple of \(f)")
        }
        var h = encConvIn(image)                                                      // [N, C0, H, W]
        trace?("enc_conv_in", h)
        for (i, resnets) in downResnets.enumerated() {
            for r in resnets { h = r(h, temb: nil) }                                   // [N, Ci, H/2^i, W/2^i]
            if let down = downsamplers[i] { h = Self.downsample(h, down) }             // [N, Ci, H/2^(i+1), W/2^(i+1)]
            trace?("enc_down\(i)", h)
        }
        h = encMid(h, trace: trace, name: "enc_mid")                                   // [N, Clast, H/f, W/f]
        trace?("enc_mid", h)
        let act = Ops.groupNormSiLU(h, groups: encNormOut.groups, weight: encNormOut.weight, bias: encNormOut.bias,
                                    eps: encNormOut.eps)
        var moments = encConvOut(act)                                                  // [N, 2·L, H/f, W/f]
        trace?("enc_conv_out", moments)
        if let quantConv { moments = quantConv(moments) }
        // mode of the diagonal Gaussian = its mean, the first L channels
        let (n, lat, plane) = (moments.shape[0], config.latentChannels, moments.shape[2] * moments.shape[3])
        let mode = Tensor(uninitialized: [n, lat, moments.shape[2], moments.shape[3]])
        withExtendedLifetime(moments) {
            for b in 0..<n { (mode.data + b * lat * plane).update(from: moments.data + b * 2 * lat * plane, count: lat * plane) }
        }
        return mode
    }

    /// diffusers' Downsample2D with padding 0: zero-pad right and bottom by one, then 3×3 stride 2, without building
    /// the padded copy (the column builder treats out-of-range reads as zeros).
    static func downsample(_ x: Tensor, _ conv: Conv2d) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let p = conv.params
        let (ho, wo) = p.outputSize(h + 1, w + 1)
        let cout = conv.outChannels
        let k = c * 9
        let y = Tensor(uninitialized: [n, cout, ho, wo])
        let rowsPerBand = max(1, min(ho, (8 << 20) / max(1, k * wo)))
        conv.weight.withFloat32 { weight in ScratchPool.withBuffer(k * rowsPerBand * wo) { col in
            for b in 0..<n {
                let out = y.data + b * cout * ho * wo
                var r0 = 0
                while r0 < ho {
                    let rows = min(rowsPerBand, ho - r0)
                    Ops.im2col(x.data + b * c * h * w, channels: c, height: h, width: w, p, rowStart: r0, rows: rows, outWidth: wo, col: col)
                    BLAS.gemm(m: cout, n: rows * wo, k: k, a: weight.data, b: col, ldb: rows * wo,
                              c: out + r0 * wo, ldc: ho * wo, rowBias: conv.bias?.data)
                    r0 += rows
                }
            }
        } }
        return y
    }

    // MARK: Decoder

    /// latent [N, latent_channels, h, w] (unscaled) → image [N, out_channels, f·h, f·w].
    public func decode(_ latent: Tensor, trace: Trace? = nil) throws -> Tensor {
        guard latent.rank == 4, latent.shape[0] > 0, latent.shape[1] == config.latentChannels, latent.shape[2] > 0, latent.shape[3] > 0 else {
            throw EngineError.invalidArgument("AutoencoderKL.decode expects [N, \(config.latentChannels), h, w], got \(latent.shape)")
        }
        var z = latent
        if let postQuantConv { z = postQuantConv(latent) }                             // [N, L, h, w]
        trace?("dec_post_quant", z)
        var h = decConvIn(z)                                                           // [N, Clast, h, w]
        trace?("dec_conv_in", h)
        h = decMid(h, trace: trace, name: "dec_mid")
        trace?("dec_mid", h)
        for (i, resnets) in upResnets.enumerated() {
            for r in resnets { h = r(h, temb: nil) }                                   // [N, C_rev[i], h·2^i, w·2^i]
            if let up = upsamplers[i] {                                                // [N, C_rev[i], h·2^(i+1), w·2^(i+1)]
                h = up.weight.withFloat32 { Ops.upsampleNearest2xConv3x3(h, weight: $0, bias: up.bias) }
            }
            trace?("dec_up\(i)", h)
        }
        let act = Ops.groupNormSiLU(h, groups: decNormOut.groups, weight: decNormOut.weight, bias: decNormOut.bias,
                                    eps: decNormOut.eps)
        let out = decConvOut(act)                                                      // [N, out_channels, f·h, f·w]
        trace?("dec_conv_out", out)
        return out
    }
}

// MARK: - Tiling

extension AutoencoderKL {
    /// `encode` over overlapping tiles of `tileSize` image pixels, blended with linear ramps across `overlap` pixels,
    /// so memory depends on the tile, not the image. Both must be multiples of `downsampleFactor`, overlap < tileSize.
    /// GroupNorm statistics are per tile, so results differ slightly from `encode` (see the tests for how much).
    public func encodeTiled(_ image: Tensor, tileSize: Int = 512, overlap: Int = 128) throws -> Tensor {
        let f = downsampleFactor
        guard image.rank == 4, image.shape[1] == config.inChannels,
              image.shape[2] > 0, image.shape[3] > 0, image.shape[2] % f == 0, image.shape[3] % f == 0 else {
            throw EngineError.invalidArgument("AutoencoderKL.encodeTiled expects [N, \(config.inChannels), H, W] with H, W multiples of \(f), got \(image.shape)")
        }
        guard tileSize > 0, tileSize % f == 0, overlap >= 0, overlap % f == 0, overlap < tileSize else {
            throw EngineError.invalidArgument("encodeTiled: tile \(tileSize), overlap \(overlap) must be multiples of \(f) with 0 ≤ overlap < tile")
        }
        return try Self.tiled(image, outChannels: config.latentChannels, tile: tileSize, overlap: overlap, scaleUp: 1, scaleDown: f) {
            try encode($0)
        }
    }

    /// `decode` over overlapping tiles of `tileSize` latent pixels (64 → 512 image pixels), blended with linear ramps
    /// across `overlap` latent pixels; 0 ≤ overlap < tileSize.
    public func decodeTiled(_ latent: Tensor, tileSize: Int = 64, overlap: Int = 16) throws -> Tensor {
        guard latent.rank == 4, latent.shape[1] == config.latentChannels, latent.shape[2] > 0, latent.shape[3] > 0 else {
            throw EngineError.invalidArgument("AutoencoderKL.decodeTiled expects [N, \(config.latentChannels), h, w], got \(latent.shape)")
        }
        guard tileSize > 0, overlap >= 0, overlap < tileSize else {
            throw EngineError.invalidArgument("decodeTiled: tile \(tileSize), overlap \(overlap) must satisfy 0 ≤ overlap < tile")
        }
        return try Self.tiled(latent, outChannels: config.outChannels, tile: tileSize, overlap: overlap,
                              scaleUp: downsampleFactor, scaleDown: 1) { try decode($0) }
    }

    /// Tile starts along one axis of `length`: stride tile − overlap, the last tile flush with the end.
    static func tileStarts(length: Int, tile: Int, overlap: Int) -> [Int] {
        if length <= tile { return [0] }
        var starts: [Int] = []
        var s = 0
        while s + tile < length {
            starts.append(s)
            s += tile - overlap
        }
        starts.append(length - tile)
        return starts
    }

    /// Weight of output position i in a tile of `size` outputs whose left/right neighbours overlap it by `ramp` outputs.
    static func rampWeights(size: Int, ramp: Int, left: Bool, right: Bool) -> [Float] {
        (0..<size).map { i in
            var w: Float = 1
            if ramp > 0 {
                if left { w = min(w, (Float(i) + 0.5) / Float(ramp)) }
                if right { w = min(w, (Float(size - i) - 0.5) / Float(ramp)) }
            }
            return w
        }
    }

    /// Runs `body` on each tile of `x` and blends the outputs, whose size is the tile's × scaleUp / scaleDown.
    static func tiled(_ x: Tensor, outChannels co: Int, tile: Int, overlap: Int, scaleUp: Int, scaleDown: Int,
                      _ body: (Tensor) throws -> Tensor) throws -> Tensor {
        let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3])
        let (ys, xs) = (tileStarts(length: h, tile: tile, overlap: overlap), tileStarts(length: w, tile: tile, overlap: overlap))
        if ys.count == 1 && xs.count == 1 { return try body(x) }
        let (oh, ow) = (h * scaleUp / scaleDown, w * scaleUp / scaleDown)
        let out = Tensor(zeros: [n, co, oh, ow])
        let wsum = Tensor(zeros: [oh, ow])
        let ramp = overlap * scaleUp / scaleDown
        for y0 in ys {
            for x0 in xs {
                let (th, tw) = (min(tile, h), min(tile, w))
                let t = try body(Ops.crop(x, top: y0, left: x0, height: th, width: tw))   // [N, co, th·s, tw·s]
                let (oth, otw) = (t.shape[2], t.shape[3])
                let (oy0, ox0) = (y0 * scaleUp / scaleDown, x0 * scaleUp / scaleDown)
                let wy = rampWeights(size: oth, ramp: ramp, left: y0 > 0, right: y0 + th < h)
                let wx = rampWeights(size: otw, ramp: ramp, left: x0 > 0, right: x0 + tw < w)
                for i in 0..<oth {
                    let srow = wsum.data + (oy0 + i) * ow + ox0
                    for j in 0..<otw { srow[j] += wy[i] * wx[j] }
                }
                Parallel.forEachChunk(n * co) { r in
                    for p in r {
                        for i in 0..<oth {
                            let src = t.data + (p * oth + i) * otw
                            let dst = out.data + (p * oh + oy0 + i) * ow + ox0
                            let a = wy[i]
                            for j in 0..<otw { dst[j] += a * wx[j] * src[j] }
                        }
                    }
                }
            }
        }
        withExtendedLifetime(wsum) {
            let (od, sd) = (out.data, wsum.data)
            Parallel.forEachChunk(n * co) { r in
                for p in r {
                    let o = od + p * oh * ow
                    for i in 0..<(oh * ow) { o[i] /= sd[i] }
                }
            }
        }
        return out
    }
}

// MARK: - Cost

extension AutoencoderKL {
    /// Floating-point operations of `encode` on an H×W image, counted as PyTorch's FlopCounterMode does:
    /// 2 per multiply-add of every convolution, linear and attention matrix product; norms and activations not counted.
    public func encodeFlops(height: Int, width: Int) -> Double {
        var (h, w) = (height, width)
        func conv(_ c: Conv2d, _ oh: Int, _ ow: Int) -> Double {
            2 * Double(oh * ow) * Double(c.weight.count)
        }
        var f = conv(encConvIn, h, w)
        for (i, resnets) in downResnets.enumerated() {
            for r in resnets { f += r.flops(height: h, width: w) }
            if let d = downsamplers[i] {
                h /= 2; w /= 2
                f += conv(d, h, w)
            }
        }
        f += encMid.flops(height: h, width: w) + conv(encConvOut, h, w)
        if let quantConv { f += conv(quantConv, h, w) }
        return f
    }

    /// Floating-point operations of `decode` on an h×w latent, counted like `encodeFlops`.
    public func decodeFlops(height: Int, width: Int) -> Double {
        var (h, w) = (height, width)
        func conv(_ c: Conv2d, _ oh: Int, _ ow: Int) -> Double { 2 * Double(oh * ow) * Double(c.weight.count) }
        var f = conv(decConvIn, h, w)
        if let postQuantConv { f += conv(postQuantConv, h, w) }
        f += decMid.flops(height: h, width: w)
        for (i, resnets) in upResnets.enumerated() {
            for r in resnets { f += r.flops(height: h, width: w) }
            if let u = upsamplers[i] {
                h *= 2; w *= 2
                f += conv(u, h, w)
            }
        }
        return f + conv(decConvOut, h, w)
    }

    /// Parameters (every loaded tensor's elements).
    public var parameterCount: Int {
        func conv(_ c: Conv2d?) -> Int { c.map { $0.weight.count + ($0.bias?.count ?? 0) } ?? 0 }
        func res(_ r: ResnetBlock2D) -> Int {
            conv(r.conv1) + conv(r.conv2) + conv(r.convShortcut) + 2 * (r.inChannels + r.outChannels)
                + (r.timeEmbProj.map { $0.weight.count + ($0.bias?.count ?? 0) } ?? 0)
        }
        func mid(_ m: VAEMidBlock) -> Int {
            res(m.resnet0) + res(m.resnet1) + (m.attention.map { a in
                a.qkvWeight.count + a.qkvBias.count + a.toOut.weight.count + (a.toOut.bias?.count ?? 0) + 2 * a.channels
            } ?? 0)
        }
        var p = conv(encConvIn) + conv(encConvOut) + conv(quantConv) + conv(postQuantConv) + conv(decConvIn) + conv(decConvOut)
        p += downResnets.joined().map(res).reduce(0, +) + upResnets.joined().map(res).reduce(0, +)
        p += downsamplers.map(conv).reduce(0, +) + upsamplers.map(conv).reduce(0, +)
        p += mid(encMid) + mid(decMid) + 2 * (encNormOut.weight.count + decNormOut.weight.count)
        return p
    }
}
