// swift-tools-version:5.9
// autodir: AutoDIR all-in-one image restoration as a CPU inference engine, a C library and a ZeroMQ worker pool.
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

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

        .target(name: "Engine", dependencies: ["COpenBLAS", "CLibPNG"], swiftSettings: optimize),
        // include/autodir.h as a module (no sources), so that CAPI's @_cdecl exports use the header's own C types.
        .systemLibrary(name: "CAutodirABI", path: "Sources/CAutodirABI"),
        .target(name: "CAPI", dependencies: ["Engine", "CAutodirABI"], swiftSettings: optimize),
        .target(name: "Worker", dependencies: ["Engine", "CZmq"], swiftSettings: optimize),
        .executableTarget(name: "autodir",
                          dependencies: ["Engine", "Worker", .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: optimize),

        .testTarget(name: "EngineTests", dependencies: ["Engine"], resources: [.copy("Fixtures")]),
        .testTarget(name: "WorkerTests", dependencies: ["Worker"]),
    ]
)
