// autodir: the command-line tool (scm, bench, …); thin wrappers over the Engine library.
import ArgumentParser
import Engine
import Foundation
import Worker

struct Autodir: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autodir",
        abstract: "AutoDIR all-in-one image restoration on the CPU.",
        version: AutodirVersion.string,
        subcommands: [RestoreCommand.self, DetectCommand.self, SCMCommand.self, BenchCommand.self, VersionCommand.self,
                      BrokerCommand.self, WorkerCommand.self, ServeCommand.self, KeygenCommand.self, ClientCommand.self])
}

/// Options shared by commands that compute.
struct ComputeOptions: ParsableArguments {
    @Option(help: "Threads for BLAS and the engine's own kernels (default: all cores).")
    var threads: Int?

    @Option(help: "Matrix-product backend: avx512 (the engine's own kernel, default where the CPU has AVX-512F) or openblas.")
    var gemm: String?

    @Option(help: ArgumentHelp("How convolution and linear weights stay in memory: f32, f16 or bf16 (16-bit: half the memory, widened per layer).",
                               discussion: "Default: $AUTODIR_WEIGHTS, else f32."))
    var weights: String?

    /// --weights, else $AUTODIR_WEIGHTS, else f32.
    func weightPrecision() throws -> WeightPrecision {
        let env = ProcessInfo.processInfo.environment["AUTODIR_WEIGHTS"].flatMap { $0.isEmpty ? nil : $0 }
        guard let name = weights ?? env else { return .float32 }
        guard let precision = WeightPrecision(rawValue: name.lowercased()) else {
            let source = weights != nil ? "--weights" : "AUTODIR_WEIGHTS"
            throw ValidationError("\(source) must be one of: \(WeightPrecision.allCases.map(\.rawValue).joined(separator: ", ")) (got \(name))")
        }
        return precision
    }

    func apply() throws {
        if let gemm {
            guard let backend = GEMMBackend(rawValue: gemm.lowercased()) else {
                throw ValidationError("--gemm must be one of: \(GEMMBackend.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard backend != .avx512 || BLAS.avx512Available else {
                throw ValidationError("--gemm avx512: this CPU has no AVX-512F")
            }
            BLAS.backend = backend
        }
        if let threads, threads > 0 {
            BLAS.setThreads(threads)
            Parallel.threads = threads
        }
    }
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print versions of autodir and its libraries.")
    func run() {
        print("autodir \(AutodirVersion.string) (libzmq \(ZMQ.version), matrix threads \(BLAS.threads), gemm \(BLAS.backend.rawValue))")
    }
}

/// Exits with a clear message for engine errors instead of a Swift trap or backtrace.
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as EngineError {
        FileHandle.standardError.write(Data("autodir: error: \(e)\n".utf8))
        throw ExitCode(1)
    }
}

Autodir.main()
