// BIQA: AutoDIR's blind image quality assessment (AUTODIR.md §2; the reference's `model_assessment`):
// CLIP scores "A photo needs {category} artifact reduction" prompts against the image, the softmax gives
// each artifact's probability, and the probability-weighted prompts' text states are the diffusion context.
import Foundation

/// Degradation detection and text contexts with a CLIP model. Immutable: one instance may serve
/// concurrent calls.
///
/// The prompts' text states and embeddings are computed once, when the BIQA is created, so each
/// `detect` costs one vision pass (plus a [K, P]·[P] product).
public struct BIQA: Sendable {
    /// AutoDIR's categories, in the reference's order.
    public static let defaultCategories = ["noise", "blur", "rain", "underexposure", "haze", "low resolution", "raindrop", "no"]
    /// AutoDIR's prompt template; `{}` is replaced by the category.
    public static let defaultTemplate = "A photo needs {} artifact reduction"
    /// CLIP's normalisation (CLIPImageProcessor's image_mean / image_std).
    public static let imageMean: [Float] = [0.48145466, 0.4578275, 0.40821073]
    public static let imageStd: [Float] = [0.26862954, 0.26130258, 0.27577711]

    public let clip: CLIPModel
    public let tokenizer: CLIPTokenizer
    public let categories: [String]
    public let template: String
    /// Each category's prompt last_hidden_state, computed WITH the tokenizer's attention mask: [K, L, D].
    let promptStates: Tensor
    /// Each category's prompt text embedding (get_text_features, unnormalised): [K, P].
    let promptEmbeds: Tensor
    /// The classifier-free-guidance null context: last_hidden_state of "" (input_ids only): [1, L, D].
    public let nullContext: Tensor

    /// The result of one detection.
    public struct Detection: Sendable {
        /// Softmax of logits_per_text over the categories in play (they sum to 1).
        public let probabilities: [String: Float]
        /// The category with the highest probability (the first in category order on a tie).
        public let artifact: String
        /// Σ p_i · last_hidden_state_i over the categories in play: [1, L, D].
        public let context: Tensor
        /// logits_per_text of the categories in play.
        public let logits: [String: Float]
    }

    public init(clip: CLIPModel, tokenizer: CLIPTokenizer, categories: [String] = BIQA.defaultCategories,
                template: String = BIQA.defaultTemplate) throws {
        guard !categories.isEmpty, Set(categories).count == categories.count else {
            throw EngineError.invalidArgument("BIQA: categories must be a non-empty list of distinct names, got \(categories)")
        }
        guard template.contains("{}") else {
            throw EngineError.invalidArgument("BIQA: prompt template \"\(template)\" has no {} for the category")
        }
        self.clip = clip
        self.tokenizer = tokenizer
        self.categories = categories
        self.template = template
        let length = clip.config.textConfig.maxPositionEmbeddings
        let encoded = categories.map { tokenizer(BIQA.prompt(template, $0), maxLength: length) }
        let out = try clip.textModel(inputIds: encoded.map(\.ids), attentionMask: encoded.map(\.attentionMask))
        promptStates = out.lastHiddenState                                        // [K, L, D]
        promptEmbeds = clip.projectText(out.pooledOutput)                          // [K, P]
        nullContext = try BIQA.context(clip, tokenizer, "")                        // [1, L, D]
    }

    /// The prompt for `category`: the template with its first `{}` replaced.
    public static func prompt(_ template: String, _ category: String) -> String {
        guard let r = template.range(of: "{}") else { return template }
        return template.replacingCharacters(in: r, with: category)
    }

    /// The text context of a user prompt: its last_hidden_state from input_ids only (no attention mask),
    /// as AutoDIR's user-customised restoration does: [1, L, D]. Text past the 77-token window is
    /// truncated by the tokenizer; "" gives `nullContext`.
    public func promptContext(_ text: String) throws -> Tensor {
        try BIQA.context(clip, tokenizer, text)
    }

    static func context(_ clip: CLIPModel, _ tokenizer: CLIPTokenizer, _ text: String) throws -> Tensor {
        let ids = tokenizer(text, maxLength: clip.config.textConfig.maxPositionEmbeddings).ids
        return try clip.textModel(inputIds: [ids]).lastHiddenState
    }

    /// Scores `image` ([1, C, H, W] or [C, H, W], C = 3, or 1 for grayscale, values in [-1, 1]) against the
    /// prompts of `among` (all categories when nil; names must be categories; order does not matter).
    public func detect(_ image: Tensor, among: [String]? = nil) throws -> Detection {
        let inPlay: [Int]
        if let among {
            if let bad = among.first(where: { !categories.contains($0) }) {
                throw EngineError.invalidArgument("BIQA: '\(bad)' is not one of the categories \(categories)")
            }
            inPlay = categories.indices.filter { among.contains(categories[$0]) }
            guard !inPlay.isEmpty else { throw EngineError.invalidArgument("BIQA: no category left to score") }
        } else {
            inPlay = Array(categories.indices)
        }
        let pixels = try BIQA.preprocess(image, cropSize: clip.config.visionConfig.imageSize)
        let imageEmbeds = try clip.imageEmbeds(pixelValues: pixels)                // [1, P]
        let logits = try clip.logitsPerText(textEmbeds: promptEmbeds, imageEmbeds: imageEmbeds)  // [K, 1]
        // p = softmax over the categories in play
        let z = inPlay.map { Double(logits.data[$0]) }
        let m = z.max() ?? 0
        let e = z.map { Foundation.exp($0 - m) }
        let sum = e.reduce(0, +)
        let p = e.map { $0 / sum }
        var best = 0
        for i in p.indices where p[i] > p[best] { best = i }
        // context = Σ p_i · T_i                                                   [1, L, D]
        let stride = promptStates.count / categories.count
        let context = Tensor(zeros: [1] + Array(promptStates.shape.dropFirst()))
        for (i, k) in inPlay.enumerated() {
            let w = Float(p[i]), src = promptStates.data + k * stride
            for j in 0..<stride { context.data[j] += w * src[j] }
        }
        var probabilities: [String: Float] = [:], logitMap: [String: Float] = [:]
        for (i, k) in inPlay.enumerated() {
            probabilities[categories[k]] = Float(p[i])
            logitMap[categories[k]] = logits.data[k]
        }
        return Detection(probabilities: probabilities, artifact: categories[inPlay[best]], context: context, logits: logitMap)
    }

    /// AutoDIR's CLIP preprocessing: the [-1, 1] image mapped to [0, 255], then transformers'
    /// `CLIPFeatureExtractor(do_resize=False)`: a centre crop of cropSize × cropSize at native resolution,
    /// ÷255, CLIP mean/std. → pixel_values [1, 3, cropSize, cropSize].
    ///
    /// - A side shorter than cropSize is padded with zeros (black, value 0 before ÷255), centred, the odd
    ///   pixel going before (top/left): exactly what transformers' numpy `center_crop` does with a small
    ///   image, so a small image is scored as the reference scores it (with a black border), not resized.
    /// - A 1-channel (grayscale) image is replicated to RGB first, as `convert_rgb` does.
    /// - Values are not clamped (the reference does not clamp); non-finite values are an error.
    public static func preprocess(_ image: Tensor, cropSize s: Int) throws -> Tensor {
        let dims = image.rank == 3 ? [1] + image.shape : image.shape
        guard dims.count == 4, dims[0] == 1, dims[1] == 1 || dims[1] == 3, dims[2] > 0, dims[3] > 0, s > 0 else {
            throw EngineError.invalidArgument("BIQA expects one image [1, 3 or 1, H, W] with H, W > 0, got \(image.shape)")
        }
        let (c, h, w) = (dims[1], dims[2], dims[3])
        for i in 0..<image.count where !image.data[i].isFinite {
            throw EngineError.invalidArgument("BIQA: the image holds a non-finite value at element \(i)")
        }
        let top = h >= s ? (h - s) / 2 : -((s - h + 1) / 2)
        let left = w >= s ? (w - s) / 2 : -((s - w + 1) / 2)
        let out = Tensor(uninitialized: [1, 3, s, s])
        for ch in 0..<3 {
            let plane = image.data + (c == 1 ? 0 : ch) * h * w
            let mean = imageMean[ch], std = imageStd[ch]
            let padValue = (0 - mean) / std
            for y in 0..<s {
                let sy = top + y
                let dst = out.data + (ch * s + y) * s
                guard sy >= 0 && sy < h else {
                    dst.update(repeating: padValue, count: s)
                    continue
                }
                for x in 0..<s {
                    let sx = left + x
                    if sx >= 0 && sx < w {
                        let v255 = (plane[sy * w + sx] + 1) * 127.5
                        dst[x] = (v255 / 255 - mean) / std
                    } else {
                        dst[x] = padValue
                    }
                }
            }
        }
        return out
    }
}
