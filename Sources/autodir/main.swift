// autodir: the command-line tool (restore, detect, bench, serve, …).
import ArgumentParser
import Engine
import Worker

struct Autodir: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autodir",
        abstract: "AutoDIR all-in-one image restoration on the CPU.",
        version: AutodirVersion.string,
        subcommands: [])
}
Autodir.main()
