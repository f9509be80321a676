// CLIPTextModel: CLIP's text tower, matching transformers `CLIPTextModel` / `CLIPTextTransformer`
// (models/clip/modeling_clip.py, transformers 5.24): token + position embeddings, a causal pre-norm
// encoder with an optional padding mask, final_layer_norm, and the EOS-pooled output.
import Foundation

/// The `text_config` of a transformers `clip/config.json`. Defaults: OpenAI ViT-L/14's text tower (AutoDIR).
public struct CLIPTextConfig: Codable, Sendable, Equatable {
    public var vocabSize = 49408
    public var hiddenSize = 768
    public var intermediateSize = 3072
    public var numHiddenLayers = 12
    public var numAttentionHeads = 12
    public var maxPositionEmbeddings = 77
    public var hiddenAct = CLIPActivation.quickGelu
    public var layerNormEps: Float = 1e-5
    /// transformers' pooling rule: 2 (legacy configs such as openai/clip-vit-large-patch14's) pools at
    /// argmax(input_ids); any other value pools at the first position holding `eos_token_id`.
    public var eosTokenId = 49407

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case maxPositionEmbeddings = "max_position_embeddings", hiddenAct = "hidden_act"
        case layerNormEps = "layer_norm_eps", eosTokenId = "eos_token_id"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPTextConfig()
        vocabSize = try c.decodeIfPresent(Int.self, forKey: .vocabSize) ?? d.vocabSize
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? d.hiddenSize
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? d.intermediateSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? d.numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? d.numAttentionHeads
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? d.maxPositionEmbeddings
        hiddenAct = try decodeCLIPActivation(c, .hiddenAct, default: d.hiddenAct)
        layerNormEps = try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? d.layerNormEps
        eosTokenId = try c.decodeIfPresent(Int.self, forKey: .eosTokenId) ?? d.eosTokenId
    }

    /// FLOPs of the tower on `batch` sequences of `tokens`, counted as PyTorch's FlopCounterMode does
    /// (every matrix product, 2 per multiply-add; the embedding gather is free).
    public func flops(batch: Int, tokens: Int) -> Double {
        CLIPEncoder.flops(layers: numHiddenLayers, hidden: hiddenSize, intermediate: intermediateSize,
                          batch: batch, tokens: tokens)
    }

    public func validate() throws {
        guard vocabSize > 0, vocabSize <= 1 << 22, hiddenSize > 0, hiddenSize <= 16384,
              intermediateSize > 0, intermediateSize <= 65536, numHiddenLayers >= 0, numHiddenLayers <= 256,
              numAttentionHeads > 0, hiddenSize % numAttentionHeads == 0,
              maxPositionEmbeddings > 0, maxPositionEmbeddings <= 4096, layerNormEps > 0, layerNormEps.isFinite else {
            throw EngineError.format("CLIP text config out of range: \(self)")
        }
    }
}

/// CLIP's text tower. Immutable after loading: one instance may serve concurrent calls.
///
/// Keys under its loader's prefix (`text_model` in a `CLIPModel`): `embeddings.token_embedding.weight`
/// [V, D], `embeddings.position_embedding.weight` [P, D], `encoder.layers.i.*`, `final_layer_norm.*`;
/// `embeddings.position_ids` is ignored when present. The caller checks for unused keys (`finish()`).
public struct CLIPTextModel: Sendable {
    public let config: CLIPTextConfig
    let tokenEmbedding: Weight     // [V, D]
    let positionEmbedding: Tensor  // [P, D]
    let encoder: CLIPEncoder
    let finalLayerNorm: LayerNorm

    public struct Output: Sendable {
        /// After final_layer_norm: [B, L, D].
        public let lastHiddenState: Tensor
        /// last_hidden_state at each sequence's EOS position: [B, D].
        public let pooledOutput: Tensor
    }

    public init(config: CLIPTextConfig, weights w: WeightLoader) throws {
        try config.validate()
        self.config = config
        let d = config.hiddenSize
        tokenEmbedding = try w.weight("embeddings.token_embedding.weight", shape: [config.vocabSize, d])
        positionEmbedding = try w.tensor("embeddings.position_embedding.weight", shape: [config.maxPositionEmbeddings, d])
        w.ignore("embeddings.position_ids")
        encoder = try CLIPEncoder(w.scoped("encoder"), layers: config.numHiddenLayers, hidden: d,
                                  intermediate: config.intermediateSize, heads: config.numAttentionHeads,
                                  eps: config.layerNormEps, activation: config.hiddenAct)
        finalLayerNorm = try LayerNorm(w.scoped("final_layer_norm"), dim: d, eps: config.layerNormEps)
    }

    /// `CLIPTextModel(input_ids, attention_mask)`: B sequences of the same length L ≤ max_position_embeddings.
    ///
    /// With `attentionMask` (1 = token, 0 = padding, as the tokenizer returns it) the padding keys are masked
    /// in addition to the causal mask, as transformers does; without it only the causal mask applies.
    /// A query row with nothing left to attend to (a mask whose first entry is 0) attends uniformly, as
    /// transformers' eager path does with its finite minimum.
    public func callAsFunction(inputIds: [[Int32]], attentionMask: [[Int32]]? = nil) throws -> Output {
        let b = inputIds.count
        guard b > 0, let l = inputIds.first?.count, l > 0 else {
            throw EngineError.invalidArgument("CLIP text model: empty input_ids")
        }
        guard l <= config.maxPositionEmbeddings, inputIds.allSatisfy({ $0.count == l }) else {
            throw EngineError.invalidArgument("CLIP text model: input_ids must be \(b) sequences of one length ≤ \(config.maxPositionEmbeddings)")
        }
        if let bad = inputIds.joined().first(where: { $0 < 0 || Int($0) >= config.vocabSize }) {
            throw EngineError.invalidArgument("CLIP text model: token id \(bad) outside 0..<\(config.vocabSize)")
        }
        if let m = attentionMask, m.count != b || m.contains(where: { $0.count != l }) {
            throw EngineError.invalidArgument("CLIP text model: attention_mask must have the shape of input_ids [\(b), \(l)]")
        }
        let d = config.hiddenSize
        // x = token_embedding[ids] + position_embedding[0..<L]                     [B, L, D]
        let x = Tensor(uninitialized: [b, l, d])
        for (s, ids) in inputIds.enumerated() {
            for (t, id) in ids.enumerated() {
                let dst = x.data + (s * l + t) * d
                tokenEmbedding.copyRow(Int(id), to: dst)
                let pos = positionEmbedding.data + t * d
                for j in 0..<d { dst[j] += pos[j] }
            }
        }
        let mask = Self.mask(length: l, attentionMask: attentionMask)             // [L, L] or [B, L, L]
        encoder.apply(x, mask: mask)
        let last = finalLayerNorm(x)                                              // [B, L, D]
        let pooled = Tensor(uninitialized: [b, d])                                // [B, D]
        for (s, ids) in inputIds.enumerated() {
            (pooled.data + s * d).update(from: last.data + (s * l + poolIndex(ids)) * d, count: d)
        }
        return Output(lastHiddenState: last, pooledOutput: pooled)
    }

    /// transformers' EOS position: argmax(ids) (first maximum) when eos_token_id == 2, otherwise the first
    /// position of eos_token_id (0 when absent).
    func poolIndex(_ ids: [Int32]) -> Int {
        if config.eosTokenId == 2 {
            var best = 0
            for (i, id) in ids.enumerated() where id > ids[best] { best = i }
            return best
        }
        return ids.firstIndex(of: Int32(truncatingIfNeeded: config.eosTokenId)) ?? 0
    }

    /// Additive attention bias: 0 where query i may see key j (j ≤ i and, with a padding mask, key j is a
    /// token), the most negative finite float elsewhere (torch.finfo(float32).min, as transformers).
    static func mask(length l: Int, attentionMask: [[Int32]]?) -> Tensor {
        let blocked = -Float.greatestFiniteMagnitude
        guard let attentionMask else {
            let m = Tensor(zeros: [l, l])
            for i in 0..<l { for j in (i + 1)..<max(i + 1, l) { m.data[i * l + j] = blocked } }
            return m
        }
        let b = attentionMask.count
        let m = Tensor(zeros: [b, l, l])
        for (s, keys) in attentionMask.enumerated() {
            let base = m.data + s * l * l
            for i in 0..<l {
                for j in 0..<l where j > i || keys[j] == 0 { base[i * l + j] = blocked }
            }
        }
        return m
    }

    /// FLOPs of one call on `batch` sequences of `tokens` (see `CLIPTextConfig.flops`).
    public func flops(batch: Int, tokens: Int) -> Double { config.flops(batch: batch, tokens: tokens) }
}
