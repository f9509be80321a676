// swift-tools-version:5.9
// autodir: AutoDIR all-in-one image restoration as a CPU inference engine, a C library and a ZeroMQ worker pool.
import PackageDescription

// Release builds are tuned for the CPU that builds them (AVX2 / AVX-512 code in the engine's own kernels), as
// llama.cpp does by default; AUTODIR_PORTABLE=1 at build time gives a baseline x86-64 / arm64 build instead.
// (The GEMM in Sources/CGemm picks AVX-512 or OpenBLAS at run time either way.)
let portable = Context.environment["AUTODIR_PORTABLE"].map { $0 != "" && $0 != "0" } ?? false
let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"] + (portable ? [] : ["-target-cpu", "native"]),
                                             .when(configuration: .release))]

let package = Package(
    name: "autodir",
    products: [
        .library(name: "autodir", type: .dynamic, targets: ["CAPI"]),
        .executable(name: "autodir-cli", targets: ["autodir"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries, found through pkg-config (Debian: libopenblas-dev, libzmq3-dev, libpng-dev).
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZmq", providers: [.apt(["libzmq3-dev"])]),  // zmq.h is in /usr/include; its .pc adds flags SwiftPM refuses
        // libpng reports errors by longjmp, which Swift cannot cross: a small C shim keeps setjmp on the C side.
        .target(name: "CLibPNG", linkerSettings: [.linkedLibrary("png16")]),

        // The engine's own AVX-512 sgemm (used where the CPU has AVX-512F; OpenBLAS elsewhere).
        .target(name: "CGemm", cSettings: [.unsafeFlags(["-O3"], .when(configuration: .release))]),

        .target(name: "Engine", dependencies: ["COpenBLAS", "CLibPNG", "CGemm"], swiftSettings: optimize),
        // include/autodir.h as a module (no sources), so that CAPI's @_cdecl exports use the header's own C types.
        .systemLibrary(name: "CAutodirABI", path: "Sources/CAutodirABI"),
        // libautodir.so carries the Swift runtime and Foundation statically (C and Python users need no Swift
        // toolchain; a version script keeps the exports to autodir_* and a few Swift type-metadata symbols). -static-stdlib links swiftCore and
        // dispatch; Foundation's static archives need their C parts listed; -z defs fails the link on anything left out.
        .target(name: "CAPI", dependencies: ["Engine", "CAutodirABI"], swiftSettings: optimize,
                linkerSettings: [.unsafeFlags(["-static-stdlib", "-Xlinker", "-z", "-Xlinker", "defs",
                                               "-lFoundation", "-lFoundationEssentials", "-lFoundationInternationalization",
                                               "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCollections",
                                               "-l_FoundationCShims", "-lswiftSynchronization", "-lswift_RegexParser",
                                               "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/CAutodirABI/libautodir.map"])]),
        .target(name: "Worker", dependencies: ["Engine", "CZmq"], swiftSettings: optimize),
        .executableTarget(name: "autodir",
                          dependencies: ["Engine", "Worker", .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: optimize),

        .testTarget(name: "EngineTests", dependencies: ["Engine"], resources: [.copy("Fixtures")]),
        .testTarget(name: "WorkerTests", dependencies: ["Worker"]),
    ]
)
