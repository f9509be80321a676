// NAFNet: AutoDIR's structure-correction module (SCM), NAFNet (Chen et al. 2022) as in the AutoDIR reference.
//
// Input [N, img_channel, H, W] (for AutoDIR: the degraded image and the AIR output, 6 channels);
// output [N, out_channel, H, W] = NAFNet residual · scm_weight + the last out_channel input channels.
// Any H, W: the input is zero-padded right/bottom to a multiple of 2^levels and the output cropped back.
import Foundation

/// `scm/config.json`; keys as in the reference constructor. Defaults are the full AutoDIR SCM (≈116 M parameters).
public struct NAFNetConfig: Codable, Sendable, Equatable {
    public var imgChannel = 6
    public var outChannel = 3
    public var width = 64
    public var encBlkNums = [2, 2, 4, 8]
    public var middleBlkNum = 12
    public var decBlkNums = [2, 2, 2, 2]

    enum CodingKeys: String, CodingKey {
        case imgChannel = "img_channel", outChannel = "out_channel", width
        case encBlkNums = "enc_blk_nums", middleBlkNum = "middle_blk_num", decBlkNums = "dec_blk_nums"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = NAFNetConfig()
        imgChannel = try c.decodeIfPresent(Int.self, forKey: .imgChannel) ?? d.imgChannel
        outChannel = try c.decodeIfPresent(Int.self, forKey: .outChannel) ?? d.outChannel
        width = try c.decodeIfPresent(Int.self, forKey: .width) ?? d.width
        encBlkNums = try c.decodeIfPresent([Int].self, forKey: .encBlkNums) ?? d.encBlkNums
        middleBlkNum = try c.decodeIfPresent(Int.self, forKey: .middleBlkNum) ?? d.middleBlkNum
        decBlkNums = try c.decodeIfPresent([Int].self, forKey: .decBlkNums) ?? d.decBlkNums
    }

    /// Reads and validates a `config.json`.
    public static func load(path: String) throws -> NAFNetConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.io("cannot read NAFNet config \(path)")
        }
        let config: NAFNetConfig
        do { config = try JSONDecoder().decode(NAFNetConfig.self, from: data) } catch {
            throw EngineError.format("NAFNet config \(path): \(error)")
        }
        try config.validate()
        return config
    }

    public func validate() throws {
        guard imgChannel > 0, outChannel > 0, outChannel <= imgChannel, width > 0, width <= 4096,
              !encBlkNums.isEmpty, encBlkNums.count <= 8, encBlkNums.count == decBlkNums.count,
              middleBlkNum >= 0, (encBlkNums + decBlkNums).allSatisfy({ $0 >= 0 && $0 <= 256 }) else {
            throw EngineError.format("NAFNet config out of range: \(self)")
        }
    }
}

/// One NAFBlock with its LayerNorm2d affines, β and γ folded into the 1×1 convolutions at load time:
/// `x = conv1(LN(inp)); x = dw3×3(x); x = a·b; x = x · sca(x); y = inp + β·conv3(x);`
/// `out = y + γ·conv5(SimpleGate(conv4(LN(y))))`.
struct NAFBlock: Sendable {
    let c: Int
    let w1: Weight, b1: Tensor        // [2c, c], [2c]: conv1 ∘ norm1 affine
    let dwWeight: Tensor, dwBias: Tensor  // [2c, 3, 3], [2c]: conv2 (depthwise)
    let scaWeight: Tensor, scaBias: Tensor  // [c, c], [c]: sca.1
    let w3: Weight, b3: Tensor        // [c, c], [c]: β · conv3
    let w4: Weight, b4: Tensor        // [2c, c], [2c]: conv4 ∘ norm2 affine
    let w5: Weight, b5: Tensor        // [c, c], [c]: γ · conv5

    init(_ w: WeightLoader, channels c: Int) throws {
        self.c = c
        let d = 2 * c
        let norm1 = (try w.tensor("norm1.weight", shape: [c]), try w.tensor("norm1.bias", shape: [c]))
        let norm2 = (try w.tensor("norm2.weight", shape: [c]), try w.tensor("norm2.bias", shape: [c]))
        let beta = try w.tensor("beta", shape: [1, c, 1, 1]), gamma = try w.tensor("gamma", shape: [1, c, 1, 1])
        let (w1, b1) = NAFBlock.foldNorm(weight: try w.tensor("conv1.weight", shape: [d, c, 1, 1]),
                                         bias: try w.tensor("conv1.bias", shape: [d]), norm: norm1, outChannels: d, inChannels: c)
        dwWeight = try w.tensor("conv2.weight", shape: [d, 1, 3, 3]).copy()
        dwBias = try w.tensor("conv2.bias", shape: [d]).copy()
        scaWeight = try w.tensor("sca.1.weight", shape: [c, c, 1, 1]).copy()
        scaBias = try w.tensor("sca.1.bias", shape: [c]).copy()
        let (w3, b3) = NAFBlock.scaleRows(weight: try w.tensor("conv3.weight", shape: [c, c, 1, 1]),
                                          bias: try w.tensor("conv3.bias", shape: [c]), by: beta, outChannels: c, inChannels: c)
        let (w4, b4) = NAFBlock.foldNorm(weight: try w.tensor("conv4.weight", shape: [d, c, 1, 1]),
                                         bias: try w.tensor("conv4.bias", shape: [d]), norm: norm2, outChannels: d, inChannels: c)
        let (w5, b5) = NAFBlock.scaleRows(weight: try w.tensor("conv5.weight", shape: [c, c, 1, 1]),
                                          bias: try w.tensor("conv5.bias", shape: [c]), by: gamma, outChannels: c, inChannels: c)
        // the folded 1×1 weights are kept in the loader's precision (16-bit ones are widened per call)
        (self.w1, self.b1) = (try w.resident(w1, name: "conv1.weight"), b1)
        (self.w3, self.b3) = (try w.resident(w3, name: "conv3.weight"), b3)
        (self.w4, self.b4) = (try w.resident(w4, name: "conv4.weight"), b4)
        (self.w5, self.b5) = (try w.resident(w5, name: "conv5.weight"), b5)
    }

    /// conv(g ⊙ x̂ + b) = (W·diag(g)) x̂ + (W b + bias).
    static func foldNorm(weight: Tensor, bias: Tensor, norm: (Tensor, Tensor), outChannels o: Int, inChannels i: Int)
        -> (Tensor, Tensor) {
        let w = Tensor(uninitialized: [o, i]), b = Tensor(uninitialized: [o])
        for r in 0..<o {
            var acc = Double(bias.data[r])
            for k in 0..<i {
                w.data[r * i + k] = weight.data[r * i + k] * norm.0.data[k]
                acc += Double(weight.data[r * i + k]) * Double(norm.1.data[k])
            }
            b.data[r] = Float(acc)
        }
        return (w, b)
    }

    /// s ⊙ conv(x) = (diag(s)·W) x + s ⊙ bias.
    static func scaleRows(weight: Tensor, bias: Tensor, by s: Tensor, outChannels o: Int, inChannels i: Int) -> (Tensor, Tensor) {
        let w = Tensor(uninitialized: [o, i]), b = Tensor(uninitialized: [o])
        for r in 0..<o {
            for k in 0..<i { w.data[r * i + k] = weight.data[r * i + k] * s.data[r] }
            b.data[r] = bias.data[r] * s.data[r]
        }
        return (w, b)
    }

    /// Runs the block in place on x [c, h, w], using `ws` for scratch.
    func apply(_ x: UnsafeMutablePointer<Float>, height h: Int, width w: Int, _ ws: NAFNetWorkspace) {
        let hw = h * w
        let normed = ws.normed, expanded = ws.expanded, gated = ws.gated
        // x̂ = LayerNorm2d(x) (affine folded into conv1)                        [c, h, w]
        Ops.layerNorm2d(input: x, channels: c, plane: hw, eps: 1e-6, weight: nil, bias: nil, output: normed)
        // t = conv1(x̂)                                                         [2c, h, w]
        w1.withFloat32 { w1 in BLAS.gemm(m: 2 * c, n: hw, k: c, a: w1.data, b: normed, c: expanded, rowBias: b1.data) }
        // g = SimpleGate(dw3×3(t)), pooled = mean over pixels of g              [c, h, w], [c]
        let pooled = UnsafeMutablePointer<Float>.allocateAligned(capacity: 2 * c)
        defer { pooled.deallocate() }
        NAFBlock.depthwiseGate(expanded, channels: c, height: h, width: w, weight: dwWeight.data, bias: dwBias.data,
                               output: gated, pooled: pooled)
        // s = sca(g) = W_sca · pooled + b_sca; conv3 weights scaled by s column-wise  [c]
        let scale = pooled + c
        scale.update(from: scaBias.data, count: c)
        BLAS.gemv(m: c, n: c, a: scaWeight.data, x: pooled, beta: 1, y: scale)
        let w3s = UnsafeMutablePointer<Float>.allocateAligned(capacity: c * c)
        defer { w3s.deallocate() }
        w3.withFloat32 { w3 in
            for r in 0..<c {
                for k in 0..<c { w3s[r * c + k] = w3.data[r * c + k] * scale[k] }
            }
        }
        // y = x + β·conv3(g · s)                                                [c, h, w]
        BLAS.gemm(m: c, n: hw, k: c, a: w3s, b: gated, beta: 1, c: x, rowBias: b3.data)
        // u = conv4(LN(y)); v = SimpleGate(u); out = y + γ·conv5(v)             [2c → c, h, w]
        if c <= NAFBlock.tiledFeedForwardMaxChannels {
            feedForwardTiled(x, pixels: hw)
            return
        }
        Ops.layerNorm2d(input: x, channels: c, plane: hw, eps: 1e-6, weight: nil, bias: nil, output: normed)
        w4.withFloat32 { w4 in BLAS.gemm(m: 2 * c, n: hw, k: c, a: w4.data, b: normed, c: expanded, rowBias: b4.data) }
        NAFBlock.simpleGate(expanded, channels: c, plane: hw, output: gated)
        w5.withFloat32 { w5 in BLAS.gemm(m: c, n: hw, k: c, a: w5.data, b: gated, beta: 1, c: x, rowBias: b5.data) }
    }

    /// Widest level whose feed-forward half runs in cache-sized pixel tiles (below it the weights are small
    /// enough to re-pack per tile and the activations too large to stream through memory four times).
    nonisolated(unsafe) static var tiledFeedForwardMaxChannels = 256

    /// The block's second half — x += γ·conv5(SimpleGate(conv4(LN(x)))) — is per pixel, so it runs on tiles
    /// of P pixels whose [4c, P] intermediates stay in L2, one tile per thread, instead of four passes over
    /// whole [c…2c, H·W] tensors.
    func feedForwardTiled(_ x: UnsafeMutablePointer<Float>, pixels hw: Int) {
        let tile = max(128, (32_768 / c) / 32 * 32)
        let tiles = (hw + tile - 1) / tile
        w4.withFloat32 { w4 in w5.withFloat32 { w5 in BLAS.singleThreaded {
            Parallel.forEachChunk(tiles) { range in
                let scratch = UnsafeMutablePointer<Float>.allocateAligned(capacity: 4 * c * tile + 2 * tile)
                defer { scratch.deallocate() }
                let normed = scratch, expanded = scratch + c * tile, gated = scratch + 3 * c * tile
                let stats = scratch + 4 * c * tile
                for t in range {
                    let p0 = t * tile, n = min(tile, hw - p0)
                    Ops.layerNorm2dPixels(input: x + p0, inputStride: hw, output: normed, outputStride: n, channels: c,
                                          count: n, eps: 1e-6, weight: nil, bias: nil, scratch: stats)
                    BLAS.gemm(m: 2 * c, n: n, k: c, a: w4.data, b: normed, c: expanded, rowBias: b4.data)
                    for i in 0..<(c * n) { gated[i] = expanded[i] * expanded[c * n + i] }
                    BLAS.gemm(m: c, n: n, k: c, a: w5.data, b: gated, beta: 1, c: x + p0, ldc: hw, rowBias: b5.data)
                }
            }
        } } }
    }

    /// g[i] = (dw(t[i]) + b[i]) · (dw(t[i+c]) + b[i+c]) row by row, and each channel's mean of g.
    /// One pass per output row: both 3×3 filters (zero padding 1) and their product, no intermediate rows.
    static func depthwiseGate(_ t: UnsafePointer<Float>, channels c: Int, height h: Int, width w: Int,
                              weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                              output g: UnsafeMutablePointer<Float>, pooled: UnsafeMutablePointer<Float>) {
        let hw = h * w
        Parallel.forEachChunk(c) { range in
            let zeros = UnsafeMutablePointer<Float>.allocateAligned(capacity: w)   // the padding row
            zeros.initialize(repeating: 0, count: w)
            defer { zeros.deallocate() }
            for i in range {
                let pa = t + i * hw, pb = t + (i + c) * hw
                let ka = weight + i * 9, kb = weight + (i + c) * 9
                let (ba, bb) = (bias[i], bias[i + c])
                var sum: Double = 0
                for y in 0..<h {
                    let o = g + i * hw + y * w
                    // rows y−1, y, y+1 of both inputs; a row outside the image is the zero row
                    let ta0 = y > 0 ? pa + (y - 1) * w : UnsafePointer(zeros), ta1 = pa + y * w
                    let ta2 = y < h - 1 ? pa + (y + 1) * w : UnsafePointer(zeros)
                    let tb0 = y > 0 ? pb + (y - 1) * w : UnsafePointer(zeros), tb1 = pb + y * w
                    let tb2 = y < h - 1 ? pb + (y + 1) * w : UnsafePointer(zeros)
                    let (a0, a1, a2, a3, a4, a5, a6, a7, a8) = (ka[0], ka[1], ka[2], ka[3], ka[4], ka[5], ka[6], ka[7], ka[8])
                    let (b0, b1, b2, b3, b4, b5, b6, b7, b8) = (kb[0], kb[1], kb[2], kb[3], kb[4], kb[5], kb[6], kb[7], kb[8])
                    @inline(__always) func at(_ x: Int, _ left: Bool, _ right: Bool) -> Float {
                        var va = ba + a1 * ta0[x] + a4 * ta1[x] + a7 * ta2[x]
                        var vb = bb + b1 * tb0[x] + b4 * tb1[x] + b7 * tb2[x]
                        if left { va += a0 * ta0[x - 1] + a3 * ta1[x - 1] + a6 * ta2[x - 1]
                                  vb += b0 * tb0[x - 1] + b3 * tb1[x - 1] + b6 * tb2[x - 1] }
                        if right { va += a2 * ta0[x + 1] + a5 * ta1[x + 1] + a8 * ta2[x + 1]
                                   vb += b2 * tb0[x + 1] + b5 * tb1[x + 1] + b8 * tb2[x + 1] }
                        return va * vb
                    }
                    if w == 1 {
                        o[0] = at(0, false, false)
                    } else {
                        o[0] = at(0, false, true)
                        for x in 1..<(w - 1) { o[x] = at(x, true, true) }   // no reduction here: it vectorises
                        o[w - 1] = at(w - 1, true, false)
                    }
                    let rowSum = Ops.sum(o, count: w)
                    sum += Double(rowSum)
                }
                pooled[i] = Float(sum / Double(hw))
            }
        }
    }

    /// v[i] = u[i] · u[i+c]
    static func simpleGate(_ u: UnsafePointer<Float>, channels c: Int, plane: Int, output v: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(c) { range in
            for i in range {
                let a = u + i * plane, b = u + (i + c) * plane, o = v + i * plane
                for p in 0..<plane { o[p] = a[p] * b[p] }
            }
        }
    }
}

/// Scratch buffers for one forward pass, sized for the widest level (width × padded pixels).
struct NAFNetWorkspace {
    let normed: UnsafeMutablePointer<Float>    // [c, hw]
    let expanded: UnsafeMutablePointer<Float>  // [2c, hw]
    let gated: UnsafeMutablePointer<Float>     // [c, hw]

    /// Runs `body` with a workspace for blocks of up to `n` = c·h·w elements, taken from the `ScratchPool`
    /// (so that repeated calls reuse the pages instead of faulting fresh zeroed ones in).
    static func with<R>(elements n: Int, _ body: (NAFNetWorkspace) throws -> R) rethrows -> R {
        try ScratchPool.withBuffer(4 * n) { buffer in
            try body(NAFNetWorkspace(normed: buffer, expanded: buffer + n, gated: buffer + 3 * n))
        }
    }
}

/// NAFNet with the SCM output rule. Immutable after loading: one instance may serve concurrent calls.
public struct NAFNet: Sendable {
    public let config: NAFNetConfig
    /// Weight of the residual (AutoDIR's w; `model_index.json` "scm_weight").
    public var residualWeight: Float = 1
    let intro: Conv2d
    let encoders: [[NAFBlock]]
    let downs: [Conv2d]
    let middle: [NAFBlock]
    let ups: [Conv2d]
    let decoders: [[NAFBlock]]
    let ending: Conv2d

    /// Loads from `weights` (keys `intro.*`, `encoders.i.j.*`, …, strictly: every key used, none missing).
    public init(config: NAFNetConfig, weights w: WeightLoader) throws {
        try config.validate()
        self.config = config
        var c = config.width
        intro = try Conv2d(w.scoped("intro"), inChannels: config.imgChannel, outChannels: c, kernel: 3, padding: 1)
        var encoders: [[NAFBlock]] = [], downs: [Conv2d] = []
        for (i, n) in config.encBlkNums.enumerated() {
            encoders.append(try (0..<n).map { try NAFBlock(w.scoped("encoders.\(i).\($0)"), channels: c) })
            downs.append(try Conv2d(w.scoped("downs.\(i)"), inChannels: c, outChannels: 2 * c, kernel: 2, stride: 2))
            c *= 2
        }
        let mid = c
        middle = try (0..<config.middleBlkNum).map { try NAFBlock(w.scoped("middle_blks.\($0)"), channels: mid) }
        var ups: [Conv2d] = [], decoders: [[NAFBlock]] = []
        for (i, n) in config.decBlkNums.enumerated() {
            ups.append(try Conv2d(w.scoped("ups.\(i).0"), inChannels: c, outChannels: 2 * c, kernel: 1, bias: false))
            c /= 2
            let ci = c
            decoders.append(try (0..<n).map { try NAFBlock(w.scoped("decoders.\(i).\($0)"), channels: ci) })
        }
        ending = try Conv2d(w.scoped("ending"), inChannels: config.width, outChannels: config.outChannel, kernel: 3, padding: 1)
        self.encoders = encoders; self.downs = downs; self.ups = ups; self.decoders = decoders
        try w.finish()
    }

    /// Loads `config.json` + `model.safetensors` from a folder (the model folder's `scm/`).
    public init(directory: String, precision: WeightPrecision = .float32) throws {
        let config = try NAFNetConfig.load(path: directory + "/config.json")
        try self.init(config: config, weights: try WeightLoader(path: directory + "/model.safetensors", precision: precision))
    }

    /// Input size multiple the network needs (2^levels).
    public var sizeMultiple: Int { 1 << config.encBlkNums.count }

    /// Intermediate activations of one image, for tests against the PyTorch reference.
    public typealias Trace = (String, Tensor) -> Void

    /// [N, img_channel, H, W] → [N, out_channel, H, W].
    public func callAsFunction(_ input: Tensor, trace: Trace? = nil) throws -> Tensor {
        guard input.rank == 4, input.shape[1] == config.imgChannel, input.shape[2] > 0, input.shape[3] > 0 else {
            throw EngineError.invalidArgument("NAFNet expects [N, \(config.imgChannel), H, W], got \(input.shape)")
        }
        let (n, h, w) = (input.shape[0], input.shape[2], input.shape[3])
        let m = sizeMultiple
        let (hp, wp) = ((h + m - 1) / m * m, (w + m - 1) / m * m)
        let output = Tensor(uninitialized: [n, config.outChannel, h, w])
        for b in 0..<n {
            let image = Tensor(uninitialized: [1, config.imgChannel, h, w])
            image.data.update(from: input.data + b * config.imgChannel * h * w, count: config.imgChannel * h * w)
            let padded = Ops.padRightBottom(image, right: wp - w, bottom: hp - h)
            let residual = forwardPadded(padded, trace: trace)                       // [1, out, hp, wp]
            // out = w · residual + input[last out_channel channels]
            let skip = config.imgChannel - config.outChannel
            withExtendedLifetime((residual, image)) {
                for ch in 0..<config.outChannel {
                    for y in 0..<h {
                        let r = residual.data + (ch * hp + y) * wp
                        let src = image.data + ((skip + ch) * h + y) * w
                        let dst = output.data + ((b * config.outChannel + ch) * h + y) * w
                        for x in 0..<w { dst[x] = residualWeight * r[x] + src[x] }
                    }
                }
            }
        }
        return output
    }

    /// The network proper on a padded image [1, img_channel, H, W] (H, W multiples of 2^levels).
    func forwardPadded(_ x: Tensor, trace: Trace?) -> Tensor {
        var (h, w) = (x.shape[2], x.shape[3])
        return NAFNetWorkspace.with(elements: config.width * h * w) { ws in
            var cur = intro(x)                                                          // [1, width, H, W]
            trace?("intro_out", cur)
            var skips: [Tensor] = []
            for (level, blocks) in encoders.enumerated() {
                for (j, block) in blocks.enumerated() {
                    if level == 0 && j == 0 { trace?("block_in", cur.copy()) }
                    block.apply(cur.data, height: h, width: w, ws)
                    if level == 0 && j == 0 { trace?("block_out", cur) }
                }
                trace?("enc\(level)_out", cur)
                skips.append(cur)
                cur = downs[level](cur)                                                 // [1, 2c, H/2, W/2]
                h /= 2; w /= 2
            }
            for block in middle { block.apply(cur.data, height: h, width: w, ws) }
            trace?("middle_out", cur)
            for (level, blocks) in decoders.enumerated() {
                let up = ups[level](cur)                                                // [1, 2c, h, w]
                let skip = skips.removeLast()                                           // [1, c/2, 2h, 2w]
                withExtendedLifetime(up) {
                    Ops.pixelShuffle(input: up.data, batch: 1, outChannels: skip.shape[1], height: h, width: w, 2,
                                     output: skip.data, accumulate: true)
                }
                h *= 2; w *= 2
                cur = skip
                for block in blocks { block.apply(cur.data, height: h, width: w, ws) }
                trace?("dec\(level)_out", cur)
            }
            let out = ending(cur)                                                       // [1, out, H, W]
            trace?("ending_out", out)
            return out
        }
    }
}

extension NAFNet {
    /// Parameters of the reference module (before any folding).
    public var parameterCount: Int {
        func block(_ c: Int) -> Int {
            let d = 2 * c
            return (d * c + d) + (d * 9 + d) + (c * c + c) + (c * c + c) + (d * c + d) + (c * c + c) + 4 * c + 2 * c
        }
        var c = config.width
        var n = (config.imgChannel * c * 9 + c) + (c * config.outChannel * 9 + config.outChannel)
        for blocks in config.encBlkNums {
            n += blocks * block(c) + (2 * c * c * 4 + 2 * c)
            c *= 2
        }
        n += config.middleBlkNum * block(c)
        for blocks in config.decBlkNums {
            n += c * 2 * c
            c /= 2
            n += blocks * block(c)
        }
        return n
    }

    /// Floating-point operations of one forward pass on an H×W image, counted as PyTorch's
    /// FlopCounterMode does (2 per multiply-add of every convolution; element-wise work not counted).
    public func flops(height: Int, width: Int) -> Double {
        let m = sizeMultiple
        var hw = Double((height + m - 1) / m * m) * Double((width + m - 1) / m * m)
        func block(_ c: Double, _ hw: Double) -> Double {
            2 * hw * (2 * c * c + 2 * c * 9 + c * c + 2 * c * c + c * c) + 2 * c * c
        }
        var c = Double(config.width)
        var f = 2 * hw * (Double(config.imgChannel) * c * 9 + c * Double(config.outChannel) * 9)
        for blocks in config.encBlkNums {
            f += Double(blocks) * block(c, hw)
            hw /= 4
            f += 2 * hw * (2 * c * c * 4)
            c *= 2
        }
        f += Double(config.middleBlkNum) * block(c, hw)
        for blocks in config.decBlkNums {
            f += 2 * hw * (2 * c * c)
            hw *= 4
            c /= 2
            f += Double(blocks) * block(c, hw)
        }
        return f
    }
}
