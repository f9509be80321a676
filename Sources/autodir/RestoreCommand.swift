// `autodir restore` and `autodir detect`: the AutoDIR pipeline on PNG files, with the default model folder
// found as users of diffusion CLIs expect (flag, then environment, then the repository's shipped model).
import ArgumentParser
import Engine
import Foundation

/// Model folder options shared by `restore` and `detect`.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("AutoDIR model folder (model_index.json, unet/, vae/, clip/, tokenizer/, scm/, scheduler/).",
                               discussion: "Default: $AUTODIR_MODEL, else models/autodir-tiny in the current directory or in the repository the executable was built in."))
    var model: String?

    /// The folder to load: --model, $AUTODIR_MODEL, ./models/autodir-tiny, then models/autodir-tiny above the executable.
    func resolve() throws -> String {
        if let model { return model }
        if let env = ProcessInfo.processInfo.environment["AUTODIR_MODEL"], !env.isEmpty { return env }
        if let found = findRepositoryPath("models/autodir-tiny/model_index.json") {
            return (found as NSString).deletingLastPathComponent
        }
        throw EngineError.io("no AutoDIR model folder found: pass --model DIR or set AUTODIR_MODEL. The default, "
            + "models/autodir-tiny, ships with the autodir repository (run from its checkout, or see its README); "
            + "an official AutoDIR .ckpt converts with tools/convert_autodir_ckpt.py")
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a PNG with AutoDIR: detect the artifact, remove it, repeat (or follow --prompt).",
        discussion: "Automatic mode runs up to --max-passes passes; each detects the dominant artifact with CLIP "
            + "among those not yet removed and stops when \"no\" wins. --prompt replaces detection and runs one pass. "
            + "Any image size is accepted. Ctrl-C cancels cleanly.")

    @Argument(help: "Input PNG.") var input: String
    @Option(name: .shortAndLong, help: "Output PNG.") var output: String
    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Text instruction instead of automatic detection (one pass), e.g. \"remove the rain\".") var prompt: String?
    @Option(help: "Sampling steps per pass (default: the model's).") var steps: Int?
    @Option(help: "Seed of the noise (same as torch.manual_seed in the PyTorch reference).") var seed: UInt64 = 0
    @Option(help: "Text guidance scale (default: the model's, 1).") var cfgText: Float?
    @Option(help: "Image guidance scale (default: the model's, 1).") var cfgImage: Float?
    @Option(help: "Most restoration passes in automatic mode (default: the model's, 7).") var maxPasses: Int?
    @Flag(help: "AdaIN colour correction of the result against the input.") var colorFix = false
    @Option(help: "Write every pass's images (AIR output, SCM output, result) to this folder.") var savePasses: String?
    @Option(help: "euler_ancestral (default), euler, ddim or dpmpp_2m.") var sampler: String?
    @Option(help: "Bits per channel of the output PNG (8 or 16).") var bitDepth: Int = 8
    @Flag(help: "No progress output.") var quiet = false
    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if let steps, !(1...1000).contains(steps) { throw ValidationError("--steps must be in 1…1000") }
        if let maxPasses, !(1...16).contains(maxPasses) { throw ValidationError("--max-passes must be in 1…16") }
        if let sampler, SamplerKind(rawValue: sampler) == nil {
            throw ValidationError("--sampler must be one of \(SamplerKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard bitDepth == 8 || bitDepth == 16 else { throw ValidationError("--bit-depth must be 8 or 16") }
    }

    func run() throws {
        try compute.apply()
        try runReportingErrors {
            let start = Date()
            let dir = try modelOptions.resolve()
            let pipeline = try AutoDIRPipeline(directory: dir, precision: try compute.weightPrecision())
            let image = try PNGImage.read(path: input)                                      // [1, 3, H, W] in [0, 1]
            if !quiet {
                log("loaded \(dir) and \(input) (\(image.shape[3])×\(image.shape[2])) in \(elapsed(start))")
            }
            var options = RestoreOptions()
            options.prompt = prompt
            options.steps = steps
            options.seed = seed
            options.cfgText = cfgText
            options.cfgImage = cfgImage
            options.maxPasses = maxPasses
            options.colorFix = colorFix
            options.sampler = sampler
            let token = CancellationToken()
            let interrupt = cancelOnInterrupt(token)
            defer { interrupt.cancel(); signal(SIGINT, SIG_DFL) }
            let bar = ProgressBar(enabled: !quiet)
            let t0 = Date()
            let result = try pipeline.restore(image, options: options, cancel: token) { bar.update($0); return true }
            bar.finish()
            if let savePasses {
                try FileManager.default.createDirectory(atPath: savePasses, withIntermediateDirectories: true)
                for (i, p) in result.passes.enumerated() {
                    let stem = savePasses + "/pass\(i + 1)_" + p.artifact.prefix(40).map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
                    try PNGImage.write(p.airImage, path: stem + "_air.png", bitDepth: bitDepth)
                    try PNGImage.write(p.scmImage, path: stem + "_scm.png", bitDepth: bitDepth)
                    try PNGImage.write(p.image, path: stem + "_result.png", bitDepth: bitDepth)
                }
            }
            try PNGImage.write(result.image, path: output, bitDepth: bitDepth)
            if !quiet {
                let what = result.passes.isEmpty ? "nothing to restore (BIQA: \"no\")"
                    : result.passes.map { p in
                        p.probabilities.isEmpty ? "\"\(p.artifact)\"" : "\(p.artifact) (p " + String(format: "%.2f", p.probabilities[p.artifact] ?? 0) + ")"
                    }.joined(separator: " → ")
                log("\(result.passes.count) pass(es): \(what); \(elapsed(t0)); wrote \(output)")
            }
        }
    }
}

struct DetectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detect",
        abstract: "Detect the dominant artifact of a PNG with AutoDIR's CLIP-based BIQA.")

    @Argument(help: "Input PNG.") var input: String
    @OptionGroup var modelOptions: ModelOptions
    @Flag(help: "Print {\"artifact\": …, \"probabilities\": {…}} as JSON.") var json = false
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        try runReportingErrors {
            let pipeline = try AutoDIRPipeline(directory: try modelOptions.resolve(), precision: try compute.weightPrecision())
            let d = try pipeline.detect(try PNGImage.read(path: input))
            if json {
                let object: [String: Any] = ["artifact": d.artifact,
                                             "probabilities": d.probabilities.mapValues { Double($0) }]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(d.artifact)
                for (k, v) in d.probabilities.sorted(by: { $0.value > $1.value }) {
                    print("  " + k.padding(toLength: max(16, k.count), withPad: " ", startingAt: 0) + String(format: " %.4f", v))
                }
            }
        }
    }
}

/// Cancels `token` on SIGINT (Ctrl-C), so the pipeline stops at the next step and the command exits with a message.
func cancelOnInterrupt(_ token: CancellationToken) -> DispatchSourceSignal {
    signal(SIGINT, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    source.setEventHandler { token.cancel() }
    source.resume()
    return source
}

/// Progress on stderr: a redrawn bar on a terminal, plain lines otherwise (one per stage and step).
final class ProgressBar: @unchecked Sendable {
    let enabled: Bool
    let tty = isatty(STDERR_FILENO) != 0
    let start = Date()
    var drawn = false

    init(enabled: Bool) { self.enabled = enabled }

    func update(_ p: RestoreProgress) {
        guard enabled else { return }
        let what = p.artifact.map { "[\($0.count > 30 ? String($0.prefix(29)) + "…" : $0)] " } ?? ""
        let head = "pass \(p.pass)/\(p.maxPasses) \(what)\(p.stage)"
        if tty {
            let width = 24
            let filled = p.totalSteps > 0 ? min(width, p.step * width / p.totalSteps) : 0
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            let line = String(format: "\r%@ %@ %d/%d %6.1f s", head, bar, p.step, p.totalSteps, Date().timeIntervalSince(start))
            FileHandle.standardError.write(Data((line + "\u{1B}[K").utf8))
            drawn = true
        } else {
            let step = p.stage == "denoise" ? " step \(p.step)/\(p.totalSteps)" : ""
            FileHandle.standardError.write(Data(String(format: "%@%@ (%.1f s)\n", head, step, Date().timeIntervalSince(start)).utf8))
        }
    }

    func finish() {
        if enabled && tty && drawn { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
