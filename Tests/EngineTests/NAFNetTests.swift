// NAFNet (SCM) against the PyTorch reference (tools/fixtures/make_nafnet_fixture.py: tiny random config, odd size).
import Foundation
import XCTest
@testable import Engine

final class NAFNetTests: XCTestCase {
    func loadTiny() throws -> NAFNet { try NAFNet(directory: Fixtures.path("nafnet")) }

    func testMatchesPyTorchOnOddSizeWithIntermediates() throws {
        let model = try loadTiny()
        let io = try SafeTensors(path: Fixtures.path("nafnet/io.safetensors"))
        var traced: [String: Tensor] = [:]
        let out = try model(try io.tensor("input")) { name, t in traced[name] = t.copy() }
        for name in ["intro_out", "block_in", "block_out", "enc0_out", "enc1_out", "middle_out", "dec0_out", "dec1_out", "ending_out"] {
            guard let t = traced[name] else { XCTFail("no trace \(name)"); continue }
            assertClose(t, try io.tensor(name), atol: 1e-4, rtol: 1e-4, name)
        }
        assertClose(out, try io.tensor("output"), atol: 1e-4, rtol: 1e-4, "output 37×23")
    }

    func testMatchesPyTorchOnDivisibleSize() throws {
        let model = try loadTiny()
        let io = try SafeTensors(path: Fixtures.path("nafnet/io.safetensors"))
        assertClose(try model(try io.tensor("input_16")), try io.tensor("output_16"), atol: 1e-4, rtol: 1e-4, "output 16×16")
    }

    /// The feed-forward half runs in pixel tiles on narrow levels: on an image spanning several tiles it must
    /// give what the whole-tensor path gives.
    func testTiledFeedForwardMatchesWholeTensorPath() throws {
        var config = NAFNetConfig()
        config.width = 16; config.encBlkNums = [1, 1]; config.middleBlkNum = 1; config.decBlkNums = [1, 1]
        let net = try NAFNet(config: config, weights: WeightLoader.random(seed: 3))
        var rng = TestRNG(seed: 4)
        let x = rng.tensor([1, 6, 96, 72])          // 6912 pixels: several 2048-pixel tiles at width 16
        let saved = NAFBlock.tiledFeedForwardMaxChannels
        defer { NAFBlock.tiledFeedForwardMaxChannels = saved }
        NAFBlock.tiledFeedForwardMaxChannels = 1 << 20
        let tiled = try net(x)
        NAFBlock.tiledFeedForwardMaxChannels = 0
        let whole = try net(x)
        assertClose(tiled, whole, atol: 1e-5, rtol: 1e-5, "tiled vs whole-tensor feed-forward")
    }

    /// The fused depthwise 3×3 + SimpleGate + mean pass against the naive depthwise convolution, on sizes
    /// with one-pixel rows and columns.
    func testDepthwiseGateMatchesNaiveConvolutionAndGate() {
        var rng = TestRNG(seed: 6)
        for (c, h, w) in [(3, 5, 7), (2, 1, 9), (2, 6, 1), (1, 1, 1), (4, 17, 33)] {
            let t = rng.tensor([1, 2 * c, h, w]), wgt = rng.tensor([2 * c, 1, 3, 3]), b = rng.tensor([2 * c])
            let dw = NaiveOps.conv2d(t, weight: wgt, bias: b, Conv2DParams(kernel: 3, padding: 1, groups: 2 * c))
            let expected = Tensor(uninitialized: [1, c, h, w])
            for i in 0..<(c * h * w) { expected.data[i] = dw.data[i] * dw.data[c * h * w + i] }
            let g = Tensor(uninitialized: [1, c, h, w]), pooled = Tensor(uninitialized: [c])
            NAFBlock.depthwiseGate(t.data, channels: c, height: h, width: w, weight: wgt.data, bias: b.data,
                                   output: g.data, pooled: pooled.data)
            assertClose(g, expected, atol: 1e-5, rtol: 1e-5, "depthwise gate \(c)×\(h)×\(w)")
            for ch in 0..<c {
                let mean = (0..<(h * w)).reduce(0.0) { $0 + Double(expected.data[ch * h * w + $1]) } / Double(h * w)
                XCTAssertEqual(Double(pooled.data[ch]), mean, accuracy: 1e-5, "pooled mean, channel \(ch)")
            }
        }
    }

    func testConfigDefaultsAreTheFullAutoDIRSCM() throws {
        let c = try JSONDecoder().decode(NAFNetConfig.self, from: Data("{}".utf8))
        XCTAssertEqual(c, NAFNetConfig())
        XCTAssertEqual([c.imgChannel, c.outChannel, c.width, c.middleBlkNum], [6, 3, 64, 12])
        XCTAssertEqual(c.encBlkNums, [2, 2, 4, 8])
        XCTAssertEqual(c.decBlkNums, [2, 2, 2, 2])
    }

    func testWrongInputChannelsIsAnError() throws {
        let model = try loadTiny()
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 3, 8, 8])))
        XCTAssertThrowsError(try model(Tensor(zeros: [6, 8, 8])))
    }

    func testStrictLoadingNamesTheProblem() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nafnet-strict-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try SafeTensors(path: Fixtures.path("nafnet/model.safetensors"))
        var tensors = try file.keys.map { ($0, try file.tensor($0)) }
        // Missing key
        try SafeTensors.write(tensors.filter { $0.0 != "encoders.0.0.conv2.bias" }, to: dir + "/missing.safetensors")
        let config = try NAFNetConfig.load(path: Fixtures.path("nafnet/config.json"))
        XCTAssertThrowsError(try NAFNet(config: config, weights: WeightLoader(path: dir + "/missing.safetensors"))) {
            XCTAssertTrue("\($0)".contains("encoders.0.0.conv2.bias"), "\($0)")
        }
        // Unexpected key
        tensors.append(("encoders.0.0.extra", Tensor(zeros: [1])))
        try SafeTensors.write(tensors, to: dir + "/extra.safetensors")
        XCTAssertThrowsError(try NAFNet(config: config, weights: WeightLoader(path: dir + "/extra.safetensors"))) {
            XCTAssertTrue("\($0)".contains("encoders.0.0.extra"), "\($0)")
        }
        // Missing folder
        XCTAssertThrowsError(try NAFNet(directory: dir + "/nope"))
    }
}
