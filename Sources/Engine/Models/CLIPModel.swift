// CLIPModel: CLIP's two towers with their projections and logit scale, matching transformers `CLIPModel`
// (models/clip/modeling_clip.py, transformers 5.24): get_text_features, get_image_features, logits_per_text.
import Foundation

/// A transformers `clip/config.json`. Defaults: openai/clip-vit-large-patch14 (AutoDIR's BIQA).
public struct CLIPConfig: Codable, Sendable, Equatable {
    public var textConfig = CLIPTextConfig()
    public var visionConfig = CLIPVisionConfig()
    public var projectionDim = 768
    public var logitScaleInitValue: Float = 2.6592

    enum CodingKeys: String, CodingKey {
        case textConfig = "text_config", visionConfig = "vision_config"
        case projectionDim = "projection_dim", logitScaleInitValue = "logit_scale_init_value"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPConfig()
        textConfig = try c.decodeIfPresent(CLIPTextConfig.self, forKey: .textConfig) ?? d.textConfig
        visionConfig = try c.decodeIfPresent(CLIPVisionConfig.self, forKey: .visionConfig) ?? d.visionConfig
        projectionDim = try c.decodeIfPresent(Int.self, forKey: .projectionDim) ?? d.projectionDim
        logitScaleInitValue = try c.decodeIfPresent(Float.self, forKey: .logitScaleInitValue) ?? d.logitScaleInitValue
    }

    /// Reads and validates a `config.json`.
    public static func load(path: String) throws -> CLIPConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.io("cannot read CLIP config \(path)")
        }
        let config: CLIPConfig
        do { config = try JSONDecoder().decode(CLIPConfig.self, from: data) } catch let e as EngineError {
            throw e
        } catch {
            throw EngineError.format("CLIP config \(path): \(error)")
        }
        try config.validate()
        return config
    }

    public func validate() throws {
        try textConfig.validate()
        try visionConfig.validate()
        guard projectionDim > 0, projectionDim <= 16384 else {
            throw EngineError.format("CLIP config: projection_dim \(projectionDim) out of range")
        }
    }
}

/// transformers' `CLIPModel`. Immutable after loading: one instance may serve concurrent calls.
///
/// Keys, verbatim: `text_model.*`, `vision_model.*`, `visual_projection.weight` [P, Dv],
/// `text_projection.weight` [P, Dt] (neither has a bias), `logit_scale` (a scalar); the towers'
/// `embeddings.position_ids` buffers are ignored when present. Loading is strict.
public struct CLIPModel: Sendable {
    public let config: CLIPConfig
    public let textModel: CLIPTextModel
    public let visionModel: CLIPVisionModel
    let visualProjection: Linear  // [P, Dv]
    let textProjection: Linear    // [P, Dt]
    /// The learned log temperature; logits are scaled by exp(logitScale).
    public let logitScale: Float

    /// Loads from `weights` (keys as above) and fails on any key left unused.
    public init(config: CLIPConfig, weights w: WeightLoader) throws {
        try config.validate()
        self.config = config
        textModel = try CLIPTextModel(config: config.textConfig, weights: w.scoped("text_model"))
        visionModel = try CLIPVisionModel(config: config.visionConfig, weights: w.scoped("vision_model"))
        visualProjection = try Linear(w.scoped("visual_projection"), inFeatures: config.visionConfig.hiddenSize,
                                      outFeatures: config.projectionDim, bias: false)
        textProjection = try Linear(w.scoped("text_projection"), inFeatures: config.textConfig.hiddenSize,
                                    outFeatures: config.projectionDim, bias: false)
        let scale: Tensor
        if w.shape("logit_scale") == [1] {
            scale = try w.tensor("logit_scale", shape: [1])  // some exporters store it as [1]
        } else {
            scale = try w.tensor("logit_scale", shape: [])
        }
        logitScale = scale.data[0]
        guard logitScale.isFinite, logitScale < 80 else {
            throw EngineError.weights("CLIP logit_scale \(logitScale) is not a usable log temperature")
        }
        try w.finish()
    }

    /// Loads `config.json` + `model.safetensors` from a folder (the model folder's `clip/`).
    public init(directory: String, precision: WeightPrecision = .float32) throws {
        let config = try CLIPConfig.load(path: directory + "/config.json")
        try self.init(config: config, weights: try WeightLoader(path: directory + "/model.safetensors", precision: precision))
    }

    /// `get_text_features`: text_projection(pooled output), unnormalised: [B, P].
    public func textEmbeds(inputIds: [[Int32]], attentionMask: [[Int32]]? = nil) throws -> Tensor {
        textProjection(try textModel(inputIds: inputIds, attentionMask: attentionMask).pooledOutput)
    }

    /// Projects text pooled outputs [B, Dt] → [B, P].
    public func projectText(_ pooled: Tensor) -> Tensor { textProjection(pooled) }

    /// `get_image_features`: visual_projection(post_layernorm(class token)), unnormalised: [N, P].
    public func imageEmbeds(pixelValues: Tensor) throws -> Tensor {
        visualProjection(try visionModel(pixelValues).pooledOutput)
    }

    /// `logits_per_text` = exp(logit_scale) · normalize(text) · normalize(image)ᵀ:
    /// text embeds [T, P], image embeds [N, P] → [T, N].
    public func logitsPerText(textEmbeds: Tensor, imageEmbeds: Tensor) throws -> Tensor {
        let p = config.projectionDim
        guard textEmbeds.rank == 2, imageEmbeds.rank == 2, textEmbeds.shape[1] == p, imageEmbeds.shape[1] == p else {
            throw EngineError.invalidArgument("logitsPerText: expected [T, \(p)] and [N, \(p)], got \(textEmbeds.shape) and \(imageEmbeds.shape)")
        }
        let t = Self.normalizedRows(textEmbeds), i = Self.normalizedRows(imageEmbeds)
        let (nt, ni) = (textEmbeds.shape[0], imageEmbeds.shape[0])
        let logits = Tensor(uninitialized: [nt, ni])
        withExtendedLifetime((t, i)) {
            BLAS.gemm(transB: true, m: nt, n: ni, k: p, alpha: expf(logitScale), a: t.data, b: i.data, c: logits.data)
        }
        return logits
    }

    /// Each row divided by its L2 norm (`x / x.norm(p=2, dim=-1, keepdim=True)`; a zero row stays zero).
    static func normalizedRows(_ x: Tensor) -> Tensor {
        let (rows, cols) = (x.shape[0], x.shape[1])
        let y = Tensor(uninitialized: x.shape)
        for r in 0..<rows {
            let s = x.data + r * cols, o = y.data + r * cols
            var sum: Double = 0
            for j in 0..<cols { sum += Double(s[j]) * Double(s[j]) }
            let inv = sum > 0 ? Float(1 / sum.squareRoot()) : 0
            for j in 0..<cols { o[j] = s[j] * inv }
        }
        return y
    }
}
