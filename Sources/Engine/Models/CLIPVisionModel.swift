// CLIPVisionModel: CLIP's image tower, matching transformers `CLIPVisionModel` / `CLIPVisionTransformer`
// (models/clip/modeling_clip.py, transformers 5.24): patch convolution, class and position embeddings,
// pre_layrnorm, the encoder, post_layernorm on the class token.
//
// Images are NCHW, already preprocessed to image_size × image_size (see `BIQA.preprocess`).
import Foundation

/// The `vision_config` of a transformers `clip/config.json`. Defaults: OpenAI ViT-L/14's image tower (AutoDIR).
public struct CLIPVisionConfig: Codable, Sendable, Equatable {
    public var hiddenSize = 1024
    public var intermediateSize = 4096
    public var numHiddenLayers = 24
    public var numAttentionHeads = 16
    public var numChannels = 3
    public var imageSize = 224
    public var patchSize = 14
    public var hiddenAct = CLIPActivation.quickGelu
    public var layerNormEps: Float = 1e-5

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numChannels = "num_channels", imageSize = "image_size", patchSize = "patch_size"
        case hiddenAct = "hidden_act", layerNormEps = "layer_norm_eps"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPVisionConfig()
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? d.hiddenSize
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? d.intermediateSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? d.numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? d.numAttentionHeads
        numChannels = try c.decodeIfPresent(Int.self, forKey: .numChannels) ?? d.numChannels
        imageSize = try c.decodeIfPresent(Int.self, forKey: .imageSize) ?? d.imageSize
        patchSize = try c.decodeIfPresent(Int.self, forKey: .patchSize) ?? d.patchSize
        hiddenAct = try decodeCLIPActivation(c, .hiddenAct, default: d.hiddenAct)
        layerNormEps = try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? d.layerNormEps
    }

    /// Patches per side (the patch convolution's output size).
    public var gridSize: Int { imageSize / patchSize }
    /// Tokens: one class token plus the patches.
    public var tokens: Int { gridSize * gridSize + 1 }

    /// FLOPs of the tower on `batch` images, counted as PyTorch's FlopCounterMode does: the patch
    /// convolution and every matrix product, 2 per multiply-add.
    public func flops(batch: Int) -> Double {
        let g = Double(gridSize)
        let conv = 2 * Double(batch) * g * g * Double(hiddenSize) * Double(numChannels * patchSize * patchSize)
        return conv + CLIPEncoder.flops(layers: numHiddenLayers, hidden: hiddenSize, intermediate: intermediateSize,
                                        batch: batch, tokens: tokens)
    }

    public func validate() throws {
        guard hiddenSize > 0, hiddenSize <= 16384, intermediateSize > 0, intermediateSize <= 65536,
              numHiddenLayers >= 0, numHiddenLayers <= 256, numAttentionHeads > 0, hiddenSize % numAttentionHeads == 0,
              numChannels > 0, numChannels <= 16, patchSize > 0, imageSize >= patchSize, imageSize <= 4096,
              layerNormEps > 0, layerNormEps.isFinite else {
            throw EngineError.format("CLIP vision config out of range: \(self)")
        }
    }
}

/// CLIP's image tower. Immutable after loading: one instance may serve concurrent calls.
///
/// Keys under its loader's prefix (`vision_model` in a `CLIPModel`): `embeddings.class_embedding` [D],
/// `embeddings.patch_embedding.weight` [D, C, p, p] (no bias), `embeddings.position_embedding.weight`
/// [g²+1, D], `pre_layrnorm.*` (sic), `encoder.layers.i.*`, `post_layernorm.*`; `embeddings.position_ids`
/// is ignored when present. The caller checks for unused keys (`finish()`).
public struct CLIPVisionModel: Sendable {
    public let config: CLIPVisionConfig
    let classEmbedding: Tensor     // [D]
    let patchEmbedding: Conv2d     // [D, C, p, p], stride p
    let positionEmbedding: Tensor  // [g²+1, D]
    let preLayerNorm: LayerNorm
    let encoder: CLIPEncoder
    let postLayerNorm: LayerNorm

    public struct Output: Sendable {
        /// Encoder output (no post_layernorm): [N, g²+1, D].
        public let lastHiddenState: Tensor
        /// post_layernorm(class token): [N, D].
        public let pooledOutput: Tensor
    }

    public init(config: CLIPVisionConfig, weights w: WeightLoader) throws {
        try config.validate()
        self.config = config
        let d = config.hiddenSize
        let e = w.scoped("embeddings")
        classEmbedding = try e.tensor("class_embedding", shape: [d])
        patchEmbedding = try Conv2d(e.scoped("patch_embedding"), inChannels: config.numChannels, outChannels: d,
                                    kernel: config.patchSize, stride: config.patchSize, bias: false)
        positionEmbedding = try e.tensor("position_embedding.weight", shape: [config.tokens, d])
        e.ignore("position_ids")
        preLayerNorm = try LayerNorm(w.scoped("pre_layrnorm"), dim: d, eps: config.layerNormEps)
        encoder = try CLIPEncoder(w.scoped("encoder"), layers: config.numHiddenLayers, hidden: d,
                                  intermediate: config.intermediateSize, heads: config.numAttentionHeads,
                                  eps: config.layerNormEps, activation: config.hiddenAct)
        postLayerNorm = try LayerNorm(w.scoped("post_layernorm"), dim: d, eps: config.layerNormEps)
    }

    /// `CLIPVisionModel(pixel_values)`: pixel_values [N, C, image_size, image_size].
    public func callAsFunction(_ pixelValues: Tensor) throws -> Output {
        let s = config.imageSize
        guard pixelValues.rank == 4, pixelValues.shape[0] > 0, pixelValues.shape[1] == config.numChannels,
              pixelValues.shape[2] == s, pixelValues.shape[3] == s else {
            throw EngineError.invalidArgument("CLIP vision model expects [N, \(config.numChannels), \(s), \(s)], got \(pixelValues.shape)")
        }
        let (n, d, g) = (pixelValues.shape[0], config.hiddenSize, config.gridSize)
        let patches = g * g, l = config.tokens
        let conv = patchEmbedding(pixelValues)                                    // [N, D, g, g]
        // x[n, 0] = class + pos[0]; x[n, 1 + p] = conv[n, :, p] + pos[1 + p]      [N, g²+1, D]
        let x = Tensor(uninitialized: [n, l, d])
        withExtendedLifetime(conv) {
            for b in 0..<n {
                let xb = x.data + b * l * d, cb = conv.data + b * d * patches
                for j in 0..<d { xb[j] = classEmbedding.data[j] + positionEmbedding.data[j] }
                for p in 0..<patches {
                    let dst = xb + (1 + p) * d, pos = positionEmbedding.data + (1 + p) * d
                    for j in 0..<d { dst[j] = cb[j * patches + p] + pos[j] }
                }
            }
        }
        let h = preLayerNorm(x)                                                   // [N, g²+1, D]
        encoder.apply(h, mask: nil)
        let cls = Tensor(uninitialized: [n, d])                                   // [N, D]
        for b in 0..<n { (cls.data + b * d).update(from: h.data + b * l * d, count: d) }
        return Output(lastHiddenState: h, pooledOutput: postLayerNorm(cls))
    }

    /// FLOPs of one call on `batch` images (see `CLIPVisionConfig.flops`).
    public func flops(batch: Int) -> Double { config.flops(batch: batch) }
}
