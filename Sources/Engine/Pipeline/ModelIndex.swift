// ModelIndex: the model folder's `model_index.json` (ARCHITECTURE.md §3), diffusers-style with an "autodir" section.
import Foundation

/// `model_index.json` of an AutoDIR model folder. Unknown keys are ignored; missing ones take the reference defaults.
public struct ModelIndex: Codable, Sendable, Equatable {
    public var className = "AutoDIRPipeline"
    public var formatVersion = 1
    public var autodir = AutoDIRSettings()

    enum CodingKeys: String, CodingKey {
        case className = "_class_name", formatVersion = "format_version", autodir
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        className = try c.decodeIfPresent(String.self, forKey: .className) ?? "AutoDIRPipeline"
        formatVersion = try c.decodeIfPresent(Int.self, forKey: .formatVersion) ?? 1
        autodir = try c.decodeIfPresent(AutoDIRSettings.self, forKey: .autodir) ?? AutoDIRSettings()
    }

    /// Reads and validates `DIR/model_index.json`.
    public static func load(directory: String) throws -> ModelIndex {
        let path = directory + "/model_index.json"
        guard FileManager.default.fileExists(atPath: directory) else {
            throw EngineError.io("model folder \(directory) does not exist")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.io("cannot read \(path)")
        }
        let index: ModelIndex
        do { index = try JSONDecoder().decode(ModelIndex.self, from: data) } catch {
            throw EngineError.format("\(path): \(error)")
        }
        guard index.formatVersion == 1 else {
            throw EngineError.format("\(path): format_version \(index.formatVersion) is not supported (this engine reads 1)")
        }
        try index.autodir.validate(path)
        return index
    }
}

/// The "autodir" section: categories, prompt template, latent scale, SCM weight and sampling defaults.
public struct AutoDIRSettings: Codable, Sendable, Equatable {
    /// BIQA categories in order; the last one ("no") means "nothing left to restore".
    public var categories = ["noise", "blur", "rain", "underexposure", "haze", "low resolution", "raindrop", "no"]
    public var promptTemplate = "A photo needs {} artifact reduction"
    public var scaleFactor: Float = 0.18215
    public var scmWeight: Float = 1
    public var defaults = SamplingDefaults()

    enum CodingKeys: String, CodingKey {
        case categories, promptTemplate = "prompt_template", scaleFactor = "scale_factor", scmWeight = "scm_weight", defaults
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = AutoDIRSettings()
        categories = try c.decodeIfPresent([String].self, forKey: .categories) ?? d.categories
        promptTemplate = try c.decodeIfPresent(String.self, forKey: .promptTemplate) ?? d.promptTemplate
        scaleFactor = try c.decodeIfPresent(Float.self, forKey: .scaleFactor) ?? d.scaleFactor
        scmWeight = try c.decodeIfPresent(Float.self, forKey: .scmWeight) ?? d.scmWeight
        defaults = try c.decodeIfPresent(SamplingDefaults.self, forKey: .defaults) ?? d.defaults
    }

    /// The prompt for one category: the template with "{}" replaced.
    public func prompt(for category: String) -> String {
        promptTemplate.replacingOccurrences(of: "{}", with: category)
    }

    func validate(_ path: String) throws {
        guard categories.count >= 2, Set(categories).count == categories.count, categories.contains("no"),
              promptTemplate.contains("{}"), scaleFactor > 0, scaleFactor.isFinite, scmWeight.isFinite else {
            throw EngineError.format("\(path): invalid \"autodir\" settings (categories must be unique and include \"no\"; the template needs \"{}\")")
        }
        try defaults.validate(path)
    }
}

/// Sampling defaults of a model folder.
public struct SamplingDefaults: Codable, Sendable, Equatable {
    public var steps = 100
    public var cfgText: Float = 1
    public var cfgImage: Float = 1
    public var maxPasses = 7
    public var sampler = "euler_ancestral"

    enum CodingKeys: String, CodingKey {
        case steps, cfgText = "cfg_text", cfgImage = "cfg_image", maxPasses = "max_passes", sampler
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = SamplingDefaults()
        steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? d.steps
        cfgText = try c.decodeIfPresent(Float.self, forKey: .cfgText) ?? d.cfgText
        cfgImage = try c.decodeIfPresent(Float.self, forKey: .cfgImage) ?? d.cfgImage
        maxPasses = try c.decodeIfPresent(Int.self, forKey: .maxPasses) ?? d.maxPasses
        sampler = try c.decodeIfPresent(String.self, forKey: .sampler) ?? d.sampler
    }

    func validate(_ path: String) throws {
        guard (1...1000).contains(steps), (1...16).contains(maxPasses), cfgText.isFinite, cfgImage.isFinite else {
            throw EngineError.format("\(path): sampling defaults out of range (steps 1…1000, max_passes 1…16)")
        }
    }
}
