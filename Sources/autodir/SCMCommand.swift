// `autodir scm`: runs the structure-correction module alone on a PNG (until the full pipeline lands).
import ArgumentParser
import Engine
import Foundation

struct SCMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scm",
        abstract: "Run the structure-correction module (NAFNet) on a PNG: input [image, image] → corrected image.",
        discussion: "MODEL is a model folder with scm/config.json and scm/model.safetensors (default: models/scm-demo).")

    @Argument(help: "Input PNG.") var input: String
    @Option(name: .shortAndLong, help: "Output PNG.") var output: String
    @Option(help: "Model folder.") var model: String = "models/scm-demo"
    @Option(help: "Bits per channel of the output PNG (8 or 16).") var bitDepth: Int = 8
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        try runReportingErrors {
            let start = Date()
            let scm = try NAFNet(directory: model + "/scm", precision: try compute.weightPrecision())
            let image = try PNGImage.read(path: input)                                  // [1, 3, H, W] in [0, 1]
            let (h, w) = (image.shape[2], image.shape[3])
            log("loaded \(model)/scm (\(scm.config.width) wide, \(scm.parameterCount / 1000) k parameters) and \(input) (\(w)×\(h)) in \(elapsed(start))")
            let t0 = Date()
            let restored = try scm(Ops.concatChannels([image, image]))                    // [1, 6, H, W] → [1, 3, H, W]
            log("SCM forward \(elapsed(t0))")
            try PNGImage.write(restored, path: output, bitDepth: bitDepth)
            log("wrote \(output)")
        }
    }
}

func log(_ s: String) { FileHandle.standardError.write(Data("\(s)\n".utf8)) }
func elapsed(_ since: Date) -> String { String(format: "%.3f s", Date().timeIntervalSince(since)) }
