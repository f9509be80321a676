// UNet2DConditionModel: diffusers `unet_2d_condition.py` for the SD 1.x family (AutoDIR's AIR denoiser),
// with `unet_2d_blocks.py`'s CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D and
// CrossAttnUpBlock2D, and `embeddings.py`'s sinusoidal timestep projection + TimestepEmbedding.
//
// Images are NCHW throughout: sample [N, in_channels, h, w] (latents), context [N, Lc, cross_attention_dim]
// (CLIP text states), output [N, out_channels, h, w]; h and w must be multiples of 2^(levels−1).
import Foundation

/// `unet/config.json` as diffusers writes it (snake_case keys). Defaults are AutoDIR's UNet (SD 1.x with
/// 8 input channels: the noisy latent and the degraded image's latent).
public struct UNet2DConditionModelConfig: Codable, Sendable, Equatable {
    public var inChannels = 8
    public var outChannels = 4
    public var blockOutChannels = [320, 640, 1280, 1280]
    /// Resnets per down block (up blocks have one more); one value or one per level.
    public var layersPerBlock = [2]
    public var downBlockTypes = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    public var upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    public var midBlockType: String? = "UNetMidBlock2DCrossAttn"
    /// The HEAD COUNT per level despite the name (diffusers' historical naming: `num_attention_heads =
    /// num_attention_heads or attention_head_dim`); one value or one per level.
    public var attentionHeadDim = [8]
    public var transformerLayersPerBlock = [1]
    public var crossAttentionDim = 768
    public var normNumGroups = 32
    public var normEps: Float = 1e-5
    public var flipSinToCos = true
    public var freqShift: Float = 0
    public var useLinearProjection = false
    public var downsamplePadding = 1
    /// Options of the diffusers class this port does not implement, kept only to reject them.
    var unsupported: [String] = []

    enum CodingKeys: String, CodingKey, CaseIterable {
        case inChannels = "in_channels", outChannels = "out_channels", blockOutChannels = "block_out_channels"
        case layersPerBlock = "layers_per_block", downBlockTypes = "down_block_types", upBlockTypes = "up_block_types"
        case midBlockType = "mid_block_type", attentionHeadDim = "attention_head_dim"
        case transformerLayersPerBlock = "transformer_layers_per_block", crossAttentionDim = "cross_attention_dim"
        case normNumGroups = "norm_num_groups", normEps = "norm_eps", flipSinToCos = "flip_sin_to_cos"
        case freqShift = "freq_shift", useLinearProjection = "use_linear_projection", downsamplePadding = "downsample_padding"
    }

    /// Keys whose value must be the diffusers default (null, false, or the given value) for this port.
    private static let mustBeDefault: [(String, JSONScalar)] = [
        ("num_attention_heads", .null), ("center_input_sample", .bool(false)), ("only_cross_attention", .bool(false)),
        ("dual_cross_attention", .bool(false)), ("class_embed_type", .null), ("addition_embed_type", .null),
        ("encoder_hid_dim", .null), ("encoder_hid_dim_type", .null), ("time_embedding_type", .string("positional")),
        ("time_embedding_dim", .null), ("time_embedding_act_fn", .null), ("timestep_post_act", .null),
        ("time_cond_proj_dim", .null), ("resnet_time_scale_shift", .string("default")), ("act_fn", .string("silu")),
        ("conv_in_kernel", .number(3)), ("conv_out_kernel", .number(3)), ("mid_block_scale_factor", .number(1)),
        ("resnet_out_scale_factor", .number(1)), ("resnet_skip_time_act", .bool(false)), ("attention_type", .string("default")),
        ("num_class_embeds", .null), ("class_embeddings_concat", .bool(false)), ("cross_attention_norm", .null),
        ("reverse_transformer_layers_per_block", .null), ("mid_block_only_cross_attention", .null),
    ]

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = UNet2DConditionModelConfig()
        func intOrList(_ key: CodingKeys, _ dflt: [Int]) throws -> [Int] {
            if let v = try? c.decode(Int.self, forKey: key) { return [v] }
            return try c.decodeIfPresent([Int].self, forKey: key) ?? dflt
        }
        inChannels = try c.decodeIfPresent(Int.self, forKey: .inChannels) ?? d.inChannels
        outChannels = try c.decodeIfPresent(Int.self, forKey: .outChannels) ?? d.outChannels
        blockOutChannels = try c.decodeIfPresent([Int].self, forKey: .blockOutChannels) ?? d.blockOutChannels
        layersPerBlock = try intOrList(.layersPerBlock, d.layersPerBlock)
        downBlockTypes = try c.decodeIfPresent([String].self, forKey: .downBlockTypes) ?? d.downBlockTypes
        upBlockTypes = try c.decodeIfPresent([String].self, forKey: .upBlockTypes) ?? d.upBlockTypes
        midBlockType = c.contains(.midBlockType) ? try c.decodeIfPresent(String.self, forKey: .midBlockType) : d.midBlockType
        attentionHeadDim = try intOrList(.attentionHeadDim, d.attentionHeadDim)
        transformerLayersPerBlock = try intOrList(.transformerLayersPerBlock, d.transformerLayersPerBlock)
        crossAttentionDim = try c.decodeIfPresent(Int.self, forKey: .crossAttentionDim) ?? d.crossAttentionDim
        normNumGroups = try c.decodeIfPresent(Int.self, forKey: .normNumGroups) ?? d.normNumGroups
        normEps = try c.decodeIfPresent(Float.self, forKey: .normEps) ?? d.normEps
        flipSinToCos = try c.decodeIfPresent(Bool.self, forKey: .flipSinToCos) ?? d.flipSinToCos
        freqShift = try c.decodeIfPresent(Float.self, forKey: .freqShift) ?? d.freqShift
        useLinearProjection = try c.decodeIfPresent(Bool.self, forKey: .useLinearProjection) ?? d.useLinearProjection
        downsamplePadding = try c.decodeIfPresent(Int.self, forKey: .downsamplePadding) ?? d.downsamplePadding
        let any = try decoder.container(keyedBy: AnyKey.self)
        for (key, dflt) in Self.mustBeDefault {
            guard let k = AnyKey(stringValue: key), any.contains(k) else { continue }
            let v = try any.decode(JSONScalar.self, forKey: k)
            if v != dflt && !(key == "only_cross_attention" && v == .boolList(allFalse: true)) {
                unsupported.append("\(key) = \(v)")
            }
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(inChannels, forKey: .inChannels); try c.encode(outChannels, forKey: .outChannels)
        try c.encode(blockOutChannels, forKey: .blockOutChannels); try c.encode(layersPerBlock, forKey: .layersPerBlock)
        try c.encode(downBlockTypes, forKey: .downBlockTypes); try c.encode(upBlockTypes, forKey: .upBlockTypes)
        try c.encode(midBlockType, forKey: .midBlockType); try c.encode(attentionHeadDim, forKey: .attentionHeadDim)
        try c.encode(transformerLayersPerBlock, forKey: .transformerLayersPerBlock)
        try c.encode(crossAttentionDim, forKey: .crossAttentionDim); try c.encode(normNumGroups, forKey: .normNumGroups)
        try c.encode(normEps, forKey: .normEps); try c.encode(flipSinToCos, forKey: .flipSinToCos)
        try c.encode(freqShift, forKey: .freqShift); try c.encode(useLinearProjection, forKey: .useLinearProjection)
        try c.encode(downsamplePadding, forKey: .downsamplePadding)
    }

    /// Reads and validates a `config.json`.
    public static func load(path: String) throws -> UNet2DConditionModelConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.io("cannot read UNet config \(path)")
        }
        let config: UNet2DConditionModelConfig
        do { config = try JSONDecoder().decode(UNet2DConditionModelConfig.self, from: data) } catch {
            throw EngineError.format("UNet config \(path): \(error)")
        }
        try config.validate()
        return config
    }

    /// Number of resolution levels.
    public var levels: Int { blockOutChannels.count }

    func perLevel(_ v: [Int], _ i: Int) -> Int { v.count == 1 ? v[0] : v[i] }
    /// Attention heads at level i (diffusers' `attention_head_dim`).
    public func heads(level i: Int) -> Int { perLevel(attentionHeadDim, i) }

    public func validate() throws {
        func bad(_ why: String) -> EngineError { .format("UNet config: \(why)") }
        guard unsupported.isEmpty else { throw bad("unsupported option(s): \(unsupported.joined(separator: ", "))") }
        let l = levels
        guard l >= 1, l <= 8, downBlockTypes.count == l, upBlockTypes.count == l else {
            throw bad("block_out_channels, down_block_types and up_block_types must have the same length (1…8)")
        }
        for v in [layersPerBlock, attentionHeadDim, transformerLayersPerBlock] where v.count != 1 && v.count != l {
            throw bad("per-level lists must have \(l) entries: \(v)")
        }
        guard inChannels > 0, inChannels <= 4096, outChannels > 0, outChannels <= 4096, crossAttentionDim > 0,
              crossAttentionDim <= 65536, normNumGroups > 0, normEps > 0, downsamplePadding == 1,
              layersPerBlock.allSatisfy({ $0 >= 1 && $0 <= 64 }),
              transformerLayersPerBlock.allSatisfy({ $0 >= 1 && $0 <= 64 }) else {
            throw bad("value out of range: \(self)")
        }
        for (i, ch) in blockOutChannels.enumerated() {
            let h = heads(level: i)
            guard ch > 0, ch <= 65536, ch % normNumGroups == 0, h > 0, ch % h == 0 else {
                throw bad("level \(i): \(ch) channels must be divisible by norm_num_groups \(normNumGroups) and \(h) heads")
            }
        }
        for t in downBlockTypes where t != "CrossAttnDownBlock2D" && t != "DownBlock2D" { throw bad("unsupported down block \(t)") }
        for t in upBlockTypes where t != "CrossAttnUpBlock2D" && t != "UpBlock2D" { throw bad("unsupported up block \(t)") }
        guard midBlockType == "UNetMidBlock2DCrossAttn" else { throw bad("unsupported mid block \(midBlockType ?? "null")") }
    }
}

/// A JSON value reduced to what the default checks need.
private enum JSONScalar: Decodable, Equatable, CustomStringConvertible {
    case null, bool(Bool), number(Double), string(String), boolList(allFalse: Bool), other

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let l = try? c.decode([Bool].self) { self = .boolList(allFalse: !l.contains(true)) }
        else { self = .other }
    }

    var description: String {
        switch self {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .number(let n): "\(n)"
        case .string(let s): "\"\(s)\""
        case .boolList(let f): f ? "[false…]" : "[…true…]"
        case .other: "(list or object)"
        }
    }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Down or up block: resnets, optional transformers after each resnet, optional resampling conv.
struct UNetBlock: Sendable {
    let resnets: [ResnetBlock2D]
    let attentions: [Transformer2DModel]   // empty for DownBlock2D / UpBlock2D
    let sampler: Conv2d?                   // downsamplers.0.conv (stride 2) or upsamplers.0.conv (after nearest ×2)
}

/// diffusers `UNet2DConditionModel` (SD 1.x family). Immutable after loading: one instance may serve concurrent calls.
public struct UNet2DConditionModel: Sendable {
    public let config: UNet2DConditionModelConfig
    let timeLinear1: Linear, timeLinear2: Linear     // time_embedding.linear_1, linear_2
    let convIn: Conv2d
    let downBlocks: [UNetBlock]
    let midResnets: [ResnetBlock2D]
    let midAttentions: [Transformer2DModel]
    let upBlocks: [UNetBlock]
    let convNormOut: GroupNorm
    let convOut: Conv2d

    /// Loads from `weights` (diffusers keys verbatim, strictly: every key used, none missing).
    public init(config: UNet2DConditionModelConfig, weights w: WeightLoader) throws {
        try config.validate()
        self.config = config
        let ch = config.blockOutChannels, levels = config.levels
        let groups = config.normNumGroups, eps = config.normEps
        let temb = ch[0] * 4
        timeLinear1 = try Linear(w.scoped("time_embedding.linear_1"), inFeatures: ch[0], outFeatures: temb)
        timeLinear2 = try Linear(w.scoped("time_embedding.linear_2"), inFeatures: temb, outFeatures: temb)
        convIn = try Conv2d(w.scoped("conv_in"), inChannels: config.inChannels, outChannels: ch[0], kernel: 3, padding: 1)
        func transformer(_ w: WeightLoader, channels: Int, level: Int) throws -> Transformer2DModel {
            let heads = config.heads(level: level)
            return try Transformer2DModel(w, heads: heads, headDim: channels / heads, inChannels: channels,
                                          layers: config.perLevel(config.transformerLayersPerBlock, level),
                                          crossAttentionDim: config.crossAttentionDim, groups: groups,
                                          useLinearProjection: config.useLinearProjection)
        }

        var downBlocks: [UNetBlock] = []
        var outCh = ch[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let inCh = outCh
            outCh = ch[i]
            let b = w.scoped("down_blocks.\(i)")
            let n = config.perLevel(config.layersPerBlock, i)
            let resnets = try (0..<n).map {
                try ResnetBlock2D(b.scoped("resnets.\($0)"), inChannels: $0 == 0 ? inCh : outCh, outChannels: outCh,
                                  tembChannels: temb, groups: groups, eps: eps)
            }
            let attentions = type == "CrossAttnDownBlock2D"
                ? try (0..<n).map { try transformer(b.scoped("attentions.\($0)"), channels: outCh, level: i) } : []
            let down = i == levels - 1 ? nil
                : try Conv2d(b.scoped("downsamplers.0.conv"), inChannels: outCh, outChannels: outCh, kernel: 3, stride: 2, padding: 1)
            downBlocks.append(UNetBlock(resnets: resnets, attentions: attentions, sampler: down))
        }
        self.downBlocks = downBlocks

        let top = ch[levels - 1]
        midResnets = try (0..<2).map {
            try ResnetBlock2D(w.scoped("mid_block.resnets.\($0)"), inChannels: top, outChannels: top, tembChannels: temb,
                              groups: groups, eps: eps)
        }
        midAttentions = [try transformer(w.scoped("mid_block.attentions.0"), channels: top, level: levels - 1)]

        var upBlocks: [UNetBlock] = []
        let reversed = Array(ch.reversed())
        outCh = reversed[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let level = levels - 1 - i
            let prevOut = outCh
            outCh = reversed[i]
            let inCh = reversed[min(i + 1, levels - 1)]
            let b = w.scoped("up_blocks.\(i)")
            let n = config.perLevel(config.layersPerBlock, level) + 1
            let resnets = try (0..<n).map { j in
                let skip = j == n - 1 ? inCh : outCh
                return try ResnetBlock2D(b.scoped("resnets.\(j)"), inChannels: (j == 0 ? prevOut : outCh) + skip,
                                         outChannels: outCh, tembChannels: temb, groups: groups, eps: eps)
            }
            let attentions = type == "CrossAttnUpBlock2D"
                ? try (0..<n).map { try transformer(b.scoped("attentions.\($0)"), channels: outCh, level: level) } : []
            let up = i == levels - 1 ? nil
                : try Conv2d(b.scoped("upsamplers.0.conv"), inChannels: outCh, outChannels: outCh, kernel: 3, padding: 1)
            upBlocks.append(UNetBlock(resnets: resnets, attentions: attentions, sampler: up))
        }
        self.upBlocks = upBlocks
        convNormOut = try GroupNorm(w.scoped("conv_norm_out"), groups: groups, channels: ch[0], eps: eps)
        convOut = try Conv2d(w.scoped("conv_out"), inChannels: ch[0], outChannels: config.outChannels, kernel: 3, padding: 1)
        try w.finish()
    }

    /// Loads `config.json` + `diffusion_pytorch_model.safetensors` from a folder (a diffusers `unet/`).
    public init(directory: String, precision: WeightPrecision = .float32) throws {
        let config = try UNet2DConditionModelConfig.load(path: directory + "/config.json")
        try self.init(config: config, weights: try WeightLoader(path: directory + "/diffusion_pytorch_model.safetensors", precision: precision))
    }

    /// Latent sizes must be multiples of this (2^(levels−1)).
    public var sizeMultiple: Int { 1 << (config.levels - 1) }

    /// Intermediate activations, for tests against diffusers.
    public typealias Trace = (String, Tensor) -> Void

    /// diffusers `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` for one float
    /// timestep, computed in float32 as diffusers does: [dim] = [cos(t·f), sin(t·f)] (or sin first without the flip).
    public static func timestepProjection(_ t: Float, dim: Int, flipSinToCos: Bool = true, freqShift: Float = 0) -> [Float] {
        let half = dim / 2
        var emb = [Float](repeating: 0, count: dim)
        let logMax = -Float(log(10000.0))
        for i in 0..<half {
            let freq = expf(logMax * Float(i) / (Float(half) - freqShift))
            let arg = t * freq
            let (s, c) = (Float(sin(Double(arg))), Float(cos(Double(arg))))
            emb[i] = flipSinToCos ? c : s
            emb[half + i] = flipSinToCos ? s : c
        }
        return emb
    }

    /// The time embedding for n images: time_embedding(time_proj(t)) → [n, 4·block_out_channels[0]].
    func timeEmbedding(_ t: Float, batch n: Int, trace: Trace?) -> Tensor {
        let dim = config.blockOutChannels[0]
        let proj = UNet2DConditionModel.timestepProjection(t, dim: dim, flipSinToCos: config.flipSinToCos,
                                                            freqShift: config.freqShift)
        let p = Tensor(uninitialized: [n, dim])
        for b in 0..<n { for i in 0..<dim { p.data[b * dim + i] = proj[i] } }
        trace?("time_proj", p)
        let emb = timeLinear2(Ops.silu(timeLinear1(p)))                                 // [n, 4·C0]
        trace?("time_emb", emb)
        return emb
    }

    /// Predicts the noise: sample [N, in_channels, h, w], a float timestep (k-diffusion's continuous t),
    /// context [N, Lc, cross_attention_dim] → [N, out_channels, h, w].
    public func callAsFunction(_ sample: Tensor, timestep: Float, context: Tensor, trace: Trace? = nil) throws -> Tensor {
        let m = sizeMultiple
        guard sample.rank == 4, sample.shape[0] > 0, sample.shape[1] == config.inChannels,
              sample.shape[2] > 0, sample.shape[3] > 0, sample.shape[2] % m == 0, sample.shape[3] % m == 0 else {
            throw EngineError.invalidArgument(
                "UNet expects sample [N, \(config.inChannels), h, w] with h, w positive multiples of \(m), got \(sample.shape)")
        }
        guard context.rank == 3, context.shape[0] == sample.shape[0], context.shape[1] > 0,
              context.shape[2] == config.crossAttentionDim else {
            throw EngineError.invalidArgument(
                "UNet expects context [\(sample.shape[0]), L, \(config.crossAttentionDim)], got \(context.shape)")
        }
        guard timestep.isFinite else { throw EngineError.invalidArgument("UNet timestep must be finite, got \(timestep)") }
        let n = sample.shape[0]
        let emb = timeEmbedding(timestep, batch: n, trace: trace)                       // [N, 4·C0]

        var x = convIn(sample)                                                          // [N, C0, h, w]
        trace?("conv_in", x)
        var skips = [x]
        for (i, block) in downBlocks.enumerated() {
            for (j, resnet) in block.resnets.enumerated() {
                x = resnet(x, temb: emb)                                                // [N, C_i, h_i, w_i]
                if !block.attentions.isEmpty {
                    x = block.attentions[j](x, context: context)
                    if i == 0 && j == 0 { trace?("attn0", x) }
                }
                skips.append(x)
            }
            if let down = block.sampler {
                x = down(x)                                                             // [N, C_i, h_i/2, w_i/2]
                skips.append(x)
            }
            trace?("down\(i)", x)
        }

        x = midResnets[0](x, temb: emb)
        for (attention, resnet) in zip(midAttentions, midResnets.dropFirst()) {
            x = resnet(attention(x, context: context), temb: emb)
        }
        trace?("mid", x)

        for (i, block) in upBlocks.enumerated() {
            for (j, resnet) in block.resnets.enumerated() {
                let skip = skips.removeLast()
                x = resnet(Ops.concatChannels([x, skip]), temb: emb)                    // cat([x, skip], dim=1) → [N, C, h, w]
                if !block.attentions.isEmpty { x = block.attentions[j](x, context: context) }
            }
            if let up = block.sampler { x = up(Ops.upsampleNearest2x(x)) }              // [N, C, 2h, 2w]
            trace?("up\(i)", x)
        }

        let normed = Ops.groupNormSiLU(x, groups: convNormOut.groups, weight: convNormOut.weight,
                                       bias: convNormOut.bias, eps: convNormOut.eps)   // conv_act(conv_norm_out(x))
        let out = convOut(normed)                                                       // [N, out_channels, h, w]
        trace?("output", out)
        return out
    }
}

extension UNet2DConditionModel {
    /// Floating-point operations of one forward pass of batch 1 on an h×w latent (see the config's `flops`).
    public func flops(height: Int, width: Int, contextTokens lc: Int = 77) -> Double {
        config.flops(height: height, width: width, contextTokens: lc)
    }
}

extension UNet2DConditionModelConfig {
    /// Floating-point operations of one forward pass of batch 1 on an h×w latent with `contextTokens`
    /// context rows, counted as PyTorch's FlopCounterMode does: 2 per multiply-add of convolutions,
    /// linears and the two attention matmuls; normalisations and element-wise work not counted.
    public func flops(height: Int, width: Int, contextTokens lc: Int = 77) -> Double {
        let c = self
        let temb = Double(c.blockOutChannels[0] * 4)
        func conv(_ cin: Int, _ cout: Int, _ k: Int, _ hw: Int) -> Double { 2 * Double(cin * cout * k * k) * Double(hw) }
        func resnet(_ cin: Int, _ cout: Int, _ hw: Int) -> Double {
            conv(cin, cout, 3, hw) + conv(cout, cout, 3, hw) + 2 * temb * Double(cout) + (cin != cout ? conv(cin, cout, 1, hw) : 0)
        }
        func attn(_ ch: Int, _ level: Int, _ hw: Int) -> Double {
            Transformer2DModel.flops(channels: ch, inner: ch, layers: c.perLevel(c.transformerLayersPerBlock, level),
                                     contextDim: c.crossAttentionDim, tokens: hw, contextTokens: lc)
        }
        var hw = height * width
        let ch = c.blockOutChannels, levels = c.levels
        var f = 2 * Double(ch[0]) * temb + 2 * temb * temb + conv(c.inChannels, ch[0], 3, hw)
        var skipChannels = [ch[0]]
        var outCh = ch[0]
        for i in 0..<levels {
            let inCh = outCh
            outCh = ch[i]
            for j in 0..<c.perLevel(c.layersPerBlock, i) {
                f += resnet(j == 0 ? inCh : outCh, outCh, hw)
                if c.downBlockTypes[i] == "CrossAttnDownBlock2D" { f += attn(outCh, i, hw) }
                skipChannels.append(outCh)
            }
            if i < levels - 1 { hw /= 4; f += conv(outCh, outCh, 3, hw); skipChannels.append(outCh) }
        }
        f += 2 * resnet(outCh, outCh, hw) + attn(outCh, levels - 1, hw)
        for i in 0..<levels {
            let level = levels - 1 - i
            let prevOut = outCh
            outCh = ch[level]
            let n = c.perLevel(c.layersPerBlock, level) + 1
            for j in 0..<n {
                f += resnet((j == 0 ? prevOut : outCh) + skipChannels.removeLast(), outCh, hw)
                if c.upBlockTypes[i] == "CrossAttnUpBlock2D" { f += attn(outCh, level, hw) }
            }
            if i < levels - 1 { hw *= 4; f += conv(outCh, outCh, 3, hw) }
        }
        return f + conv(ch[0], c.outChannels, 3, hw)
    }
}
