// ResnetBlock2D and the fused GroupNorm+SiLU kernel against diffusers (tools/fixtures/make_vae_fixture.py).
import Foundation
import XCTest
@testable import Engine

final class ResnetBlock2DTests: XCTestCase {
    func testWithTimeEmbeddingAndShortcutMatchesDiffusers() throws {
        let file = try SafeTensors(path: Fixtures.path("vae/resnet.safetensors"))
        let w = try WeightLoader([file])
        let block = try ResnetBlock2D(w.scoped("block"), inChannels: 16, outChannels: 32, tembChannels: 24, groups: 8, eps: 1e-5)
        let same = try ResnetBlock2D(w.scoped("block_same"), inChannels: 32, outChannels: 32, tembChannels: nil, groups: 8, eps: 1e-6)
        for k in ["x", "out", "temb", "x_same", "out_same"] { w.ignore(k) }
        try w.finish()
        let out = block(try file.tensor("x"), temb: try file.tensor("temb"))       // [2, 32, 6, 10]
        assertClose(out, try file.tensor("out"), atol: 1e-4, rtol: 1e-4, "ResnetBlock2D 16→32 with temb")
        assertClose(same(try file.tensor("x_same"), temb: nil), try file.tensor("out_same"), atol: 1e-4, rtol: 1e-4,
                    "ResnetBlock2D 32→32 without temb")
    }

    func testStrictLoadingNamesMissingKeys() throws {
        let file = try SafeTensors(path: Fixtures.path("vae/resnet.safetensors"))
        // block_same has no conv_shortcut and no time_emb_proj: asking for them must fail by name.
        XCTAssertThrowsError(try ResnetBlock2D(WeightLoader([file]).scoped("block_same"), inChannels: 32, outChannels: 32,
                                               tembChannels: 24, groups: 8, eps: 1e-6)) {
            XCTAssertTrue("\($0)".contains("block_same.time_emb_proj.weight"), "\($0)")
        }
        XCTAssertThrowsError(try ResnetBlock2D(WeightLoader([file]).scoped("block_same"), inChannels: 16, outChannels: 32,
                                               tembChannels: nil, groups: 8, eps: 1e-6)) {
            XCTAssertTrue("\($0)".contains("block_same.norm1.weight"), "\($0)")
        }
        XCTAssertThrowsError(try ResnetBlock2D(WeightLoader([file]).scoped("block"), inChannels: 16, outChannels: 32,
                                               tembChannels: 24, groups: 5, eps: 1e-6))
    }

    func testGroupNormSiLUMatchesNaiveTwin() throws {
        var rng = TestRNG(seed: 7)
        for (shape, groups) in [([2, 12, 5, 7], 4), ([1, 64, 33, 17], 32), ([3, 8, 1, 1], 8)] {
            let x = rng.tensor(shape, scale: 3)
            for i in 0..<x.count where i % 3 == 0 { x.data[i] += 5 }  // a non-zero mean
            let c = shape[1]
            let g = rng.tensor([c]), b = rng.tensor([c])
            assertClose(Ops.groupNormSiLU(x, groups: groups, weight: g, bias: b, eps: 1e-6),
                        NaiveOps.groupNormSiLU(x, groups: groups, weight: g, bias: b, eps: 1e-6), atol: 2e-5, rtol: 1e-5,
                        "groupNormSiLU \(shape) groups \(groups)")
            // plain GroupNorm, in place
            let y = x.copy()
            Ops.groupNormSiLU(input: y.data, output: y.data, batch: shape[0], channels: c, plane: shape[2] * shape[3],
                              groups: groups, weight: g.data, bias: b.data, eps: 1e-6, silu: false)
            assertClose(y, NaiveOps.groupNorm(x, groups: groups, weight: g, bias: b, eps: 1e-6), atol: 2e-5, rtol: 1e-5,
                        "groupNorm in place \(shape)")
        }
    }
}

final class FusedUpsampleConvTests: XCTestCase {
    func testUpsampleNearest2xConv3x3MatchesNaiveTwin() {
        var rng = TestRNG(seed: 5)
        for (shape, cout) in [([2, 3, 5, 7], 4), ([1, 8, 1, 1], 3), ([1, 16, 9, 4], 16)] {
            let x = rng.tensor(shape)
            let w = rng.tensor([cout, shape[1], 3, 3], scale: 0.3), b = rng.tensor([cout])
            assertClose(Ops.upsampleNearest2xConv3x3(x, weight: w, bias: b), NaiveOps.upsampleNearest2xConv3x3(x, weight: w, bias: b),
                        atol: 1e-5, rtol: 1e-5, "upsample+conv \(shape) → \(cout)")
            assertClose(Ops.upsampleNearest2xConv3x3(x, weight: w, bias: nil), NaiveOps.upsampleNearest2xConv3x3(x, weight: w, bias: nil),
                        atol: 1e-5, rtol: 1e-5, "upsample+conv no bias \(shape)")
        }
        // small bands: the 2×2 convolution's 38 rows in bands of 1, 2 and 5 rows
        let x = rng.tensor([2, 6, 37, 21]), w = rng.tensor([5, 6, 3, 3], scale: 0.3), b = rng.tensor([5])
        let expected = NaiveOps.upsampleNearest2xConv3x3(x, weight: w, bias: b)
        for band in [1, 500, 1200] {
            assertClose(Ops.upsampleNearest2xConv3x3(x, weight: w, bias: b, bandFloats: band), expected,
                        atol: 1e-5, rtol: 1e-5, "upsample+conv in bands of \(band) floats")
        }
    }
}

final class FastExpTests: XCTestCase {
    func testFastExpIsWithinAFewUlpOfExp() {
        var worst: Double = 0
        var x: Float = -87
        while x <= 87 {
            let e = Double(Ops.fastExp(x)), r = Foundation.exp(Double(x))
            worst = max(worst, abs(e - r) / r)
            x += 0.001953125 * 7
        }
        XCTAssertLessThan(worst, 4e-7, "max relative error \(worst)")
        XCTAssertEqual(Ops.fastExp(0), 1)
        XCTAssertEqual(Ops.fastExp(-200), Ops.fastExp(-87))
        XCTAssertTrue(Ops.fastExp(200).isFinite)
    }
}
