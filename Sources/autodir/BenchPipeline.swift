// `autodir bench pipeline_pass`: one AutoDIR pass on the full-size architecture with random weights
// (compare with tools/bench/torch_pipeline_pass.py, which runs the reference's three UNet branches per step).
import Engine
import Foundation

/// The first of `relative` found in the current directory or above the executable (the repository it was built in).
func findRepositoryPath(_ relative: String) -> String? {
    let fm = FileManager.default
    var candidates = [fm.currentDirectoryPath + "/" + relative]
    if var dir = Bundle.main.executableURL?.resolvingSymlinksInPath().deletingLastPathComponent() {
        for _ in 0..<6 {
            candidates.append(dir.path + "/" + relative)
            dir = dir.deletingLastPathComponent()
        }
    }
    return candidates.first { fm.fileExists(atPath: $0) }
}

/// Builds the full-size pipeline (UNet, VAE, CLIP ViT-L/14, NAFNet SCM at their AutoDIR defaults; random weights)
/// and returns one pass on a random res×res image as a benchmark body with its FLOP count.
///
/// The pass: BIQA detection (CLIP vision on the 224 centre crop), then `restore` with an empty prompt and
/// cfg 1/1, i.e. the null-prompt text context (one text-tower run, ≈0.1 % of the work), VAE encode,
/// `steps` UNet evaluations (the one-branch CFG shortcut), VAE decode and the SCM. A random BIQA could pick
/// "no" and skip the pass; the prompt path always restores, so the timed work does not depend on the weights.
func pipelinePassBench(res: Int, steps: Int, precision: WeightPrecision) throws -> (body: () throws -> Void, gflop: Double) {
    guard let tokenizerDir = findRepositoryPath("Tests/EngineTests/Fixtures/tokenizer")
            ?? findRepositoryPath("models/autodir-tiny/tokenizer") else {
        throw EngineError.io("pipeline_pass needs CLIP tokenizer files (vocab.json, merges.txt): run it from the autodir repository")
    }
    let w = WeightLoader.random(seed: 0, precision: precision)
    let unet = try UNet2DConditionModel(config: UNet2DConditionModelConfig(), weights: w)
    let vae = try AutoencoderKL(config: AutoencoderKLConfig(), weights: WeightLoader.random(seed: 1, precision: precision))
    let clip = try CLIPModel(config: CLIPConfig(), weights: WeightLoader.random(seed: 2, precision: precision))
    let biqa = try BIQA(clip: clip, tokenizer: try CLIPTokenizer(directory: tokenizerDir))
    let scm = try NAFNet(config: NAFNetConfig(), weights: WeightLoader.random(seed: 3, precision: precision))
    var index = ModelIndex()
    index.autodir.defaults.steps = steps
    let pipeline = try AutoDIRPipeline(index: index, unet: unet, vae: vae, biqa: biqa, scm: scm, schedule: try NoiseSchedule())
    let image = Tensor(uninitialized: [1, 3, res, res])
    var rng = SplitMix64(seed: 1)
    for i in 0..<image.count { image.data[i] = rng.nextFloat() }
    var options = RestoreOptions()
    options.prompt = ""
    options.steps = steps
    let m = pipeline.sizeMultiple
    let side = (res + m - 1) / m * m, lat = side / vae.downsampleFactor
    let flops = clip.visionModel.flops(batch: 1) + clip.textModel.flops(batch: 1, tokens: 77)
        + vae.encodeFlops(height: side, width: side) + Double(steps) * unet.flops(height: lat, width: lat)
        + vae.decodeFlops(height: lat, width: lat) + scm.flops(height: side, width: side)
    return ({
        _ = try pipeline.detect(image)
        _ = try pipeline.restore(image, options: options)
    }, flops / 1e9)
}

/// One BIQA detection on a loaded full-size BIQA (CLIP ViT-L/14, random weights, the 8 AutoDIR prompts
/// embedded once at load, as the pipeline does): preprocessing of a res×res image, the vision tower, the
/// similarities and the softmax — what `autodir detect` costs per image once the model is loaded.
func detectBench(res: Int, precision: WeightPrecision) throws -> (body: () throws -> Void, gflop: Double) {
    guard let tokenizerDir = findRepositoryPath("Tests/EngineTests/Fixtures/tokenizer")
            ?? findRepositoryPath("models/autodir-tiny/tokenizer") else {
        throw EngineError.io("detect needs CLIP tokenizer files (vocab.json, merges.txt): run it from the autodir repository")
    }
    let clip = try CLIPModel(config: CLIPConfig(), weights: WeightLoader.random(seed: 2, precision: precision))
    let biqa = try BIQA(clip: clip, tokenizer: try CLIPTokenizer(directory: tokenizerDir))
    let image = Tensor(uninitialized: [1, 3, res, res])
    var rng = SplitMix64(seed: 1)
    for i in 0..<image.count { image.data[i] = rng.nextFloat() }
    return ({ _ = try biqa.detect(image) }, clip.visionModel.flops(batch: 1) / 1e9)
}
