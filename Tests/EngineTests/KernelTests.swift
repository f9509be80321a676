// Kernel tests: each fast op against PyTorch goldens (tools/fixtures/make_kernel_fixtures.py) and against its naive twin.
import Foundation
import XCTest
@testable import Engine

final class KernelTests: XCTestCase {
    struct Case: Decodable { let name: String; let op: String; let params: [String: JSONValue] }
    struct Cases: Decodable { let cases: [Case] }
    enum JSONValue: Decodable {
        case number(Double), array([Double]), string(String), bool(Bool)
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let v = try? c.decode(Double.self) { self = .number(v) }
            else if let v = try? c.decode([Double].self) { self = .array(v) }
            else if let v = try? c.decode(Bool.self) { self = .bool(v) }
            else { self = .string(try c.decode(String.self)) }
        }
        var int: Int {
            switch self { case .number(let v): return Int(v); case .array(let a): return Int(a[0]); default: return 0 }
        }
        var float: Float { if case .number(let v) = self { return Float(v) }; return 0 }
    }

    /// Runs `fast` and `naive` on a golden case; both must match PyTorch to 1e-5.
    func testAgainstPyTorchGoldens() throws {
        let file = try SafeTensors(path: Fixtures.path("kernels/kernels.safetensors"))
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("kernels/cases.json")))
        let cases = try JSONDecoder().decode(Cases.self, from: data).cases
        XCTAssertGreaterThanOrEqual(cases.count, 22)
        for c in cases {
            func t(_ role: String) throws -> Tensor { try file.tensor("\(c.name).\(role)") }
            let golden = try t("out")
            var results: [(String, Tensor)] = []
            switch c.op {
            case "conv2d":
                let p = Conv2DParams(kernel: c.params["kernel_size"]!.int, stride: c.params["stride"]!.int,
                                     padding: c.params["padding"]!.int, groups: c.params["groups"]!.int)
                let (x, w, b) = (try t("in"), try t("weight"), try t("bias"))
                results = [("fast", Ops.conv2d(x, weight: w, bias: b, p)), ("naive", NaiveOps.conv2d(x, weight: w, bias: b, p))]
            case "linear":
                let (x, w, b) = (try t("in"), try t("weight"), try t("bias"))
                results = [("fast", Ops.linear(x, weight: w, bias: b)), ("naive", NaiveOps.linear(x, weight: w, bias: b))]
            case "matmul":
                results = [("fast", Ops.matmul(try t("a"), try t("b"))), ("naive", NaiveOps.matmul(try t("a"), try t("b")))]
            case "bmm":
                results = [("fast", Ops.bmm(try t("a"), try t("b"))), ("naive", NaiveOps.bmm(try t("a"), try t("b")))]
            case "softmax":
                results = [("fast", Ops.softmax(try t("in"))), ("naive", NaiveOps.softmax(try t("in")))]
            case "group_norm":
                let (x, w, b, g, eps) = (try t("in"), try t("weight"), try t("bias"), c.params["num_groups"]!.int, c.params["eps"]!.float)
                results = [("fast", Ops.groupNorm(x, groups: g, weight: w, bias: b, eps: eps)),
                           ("naive", NaiveOps.groupNorm(x, groups: g, weight: w, bias: b, eps: eps))]
            case "layer_norm":
                let (x, w, b, eps) = (try t("in"), try t("weight"), try t("bias"), c.params["eps"]!.float)
                results = [("fast", Ops.layerNorm(x, weight: w, bias: b, eps: eps)), ("naive", NaiveOps.layerNorm(x, weight: w, bias: b, eps: eps))]
            case "layernorm2d":
                let (x, w, b, eps) = (try t("in"), try t("weight"), try t("bias"), c.params["eps"]!.float)
                results = [("fast", Ops.layerNorm2d(x, weight: w, bias: b, eps: eps)), ("naive", NaiveOps.layerNorm2d(x, weight: w, bias: b, eps: eps))]
            case "silu": results = [("fast", Ops.silu(try t("in"))), ("naive", NaiveOps.silu(try t("in")))]
            case "gelu": results = [("fast", Ops.gelu(try t("in"))), ("naive", NaiveOps.gelu(try t("in")))]
            case "quick_gelu": results = [("fast", Ops.quickGelu(try t("in"))), ("naive", NaiveOps.quickGelu(try t("in")))]
            case "upsample_nearest":
                results = [("fast", Ops.upsampleNearest2x(try t("in"))), ("naive", NaiveOps.upsampleNearest2x(try t("in")))]
            case "pixel_shuffle":
                let r = c.params["upscale_factor"]!.int
                results = [("fast", Ops.pixelShuffle(try t("in"), r)), ("naive", NaiveOps.pixelShuffle(try t("in"), r))]
            case "adaptive_avg_pool2d":
                results = [("fast", Ops.globalAvgPool(try t("in"))), ("naive", NaiveOps.globalAvgPool(try t("in")))]
            case "concat":
                let xs = [try t("in0"), try t("in1")]
                results = [("fast", Ops.concatChannels(xs)), ("naive", NaiveOps.concatChannels(xs))]
            case "pad":
                let (r, b) = (c.params["right"]!.int, c.params["bottom"]!.int)
                results = [("fast", Ops.padRightBottom(try t("in"), right: r, bottom: b)),
                           ("naive", NaiveOps.padRightBottom(try t("in"), right: r, bottom: b))]
            case "crop":
                let (top, left, h, w) = (c.params["top"]!.int, c.params["left"]!.int, c.params["height"]!.int, c.params["width"]!.int)
                results = [("fast", Ops.crop(try t("in"), top: top, left: left, height: h, width: w)),
                           ("naive", NaiveOps.crop(try t("in"), top: top, left: left, height: h, width: w))]
            default:
                XCTFail("unknown op \(c.op) in case \(c.name)")
            }
            for (which, y) in results { assertClose(y, golden, atol: 1e-5, rtol: 1e-5, "\(c.name) (\(which))") }
        }
    }

    /// Fast vs naive convolution on shapes that exercise every path: 1×1 GEMM, banded im2col, strides, groups, depthwise.
    func testConvolutionPathsAgreeWithNaive() {
        var rng = TestRNG(seed: 1)
        let shapes: [(cin: Int, cout: Int, h: Int, w: Int, p: Conv2DParams)] = [
            (16, 24, 13, 11, Conv2DParams(kernel: 1)),
            (8, 8, 20, 17, Conv2DParams(kernel: 3, padding: 1)),
            (6, 10, 33, 35, Conv2DParams(kernel: 3, stride: 2, padding: 1)),
            (12, 24, 18, 14, Conv2DParams(kernel: 2, stride: 2)),
            (8, 12, 9, 9, Conv2DParams(kernel: 3, padding: 1, groups: 4)),
            (16, 16, 15, 21, Conv2DParams(kernel: 3, padding: 1, groups: 16)),
            (10, 10, 15, 12, Conv2DParams(kernel: 3, stride: 2, padding: 1, groups: 10)),
            (4, 4, 1, 1, Conv2DParams(kernel: 3, padding: 1, groups: 4)),
            (3, 5, 7, 1, Conv2DParams(kernel: 3, padding: 1)),
            (5, 7, 12, 10, Conv2DParams(kernel: 3, padding: 0)),
        ]
        for s in shapes {
            let x = rng.tensor([2, s.cin, s.h, s.w])
            let wgt = rng.tensor([s.cout, s.cin / s.p.groups, s.p.kernelH, s.p.kernelW], scale: 0.5)
            let b = rng.tensor([s.cout])
            assertClose(Ops.conv2d(x, weight: wgt, bias: b, s.p), NaiveOps.conv2d(x, weight: wgt, bias: b, s.p),
                        atol: 1e-5, rtol: 1e-4, "conv \(s)")
        }
    }

    /// Winograd F(2×2, 3×3) against the naive convolution: odd and even sizes, one-pixel images, no bias,
    /// accumulation into the output (the residual form), and bands of one and several tile rows.
    func testWinogradConvolutionMatchesNaive() {
        var rng = TestRNG(seed: 9)
        for (cin, cout, h, w) in [(3, 5, 7, 9), (16, 8, 32, 33), (5, 17, 1, 1), (4, 4, 2, 1), (24, 20, 35, 30)] {
            let x = rng.tensor([1, cin, h, w]), wgt = rng.tensor([cout, cin, 3, 3], scale: 0.5), b = rng.tensor([cout])
            let p = Conv2DParams(kernel: 3, padding: 1)
            let expected = NaiveOps.conv2d(x, weight: wgt, bias: b, p)
            let residual = rng.tensor([1, cout, h, w])
            for band in [1, 2000, 4 << 20] {
                let y = Tensor(uninitialized: [1, cout, h, w]), acc = residual.copy()
                Ops.winogradConv3x3(input: x.data, channels: cin, height: h, width: w, weight: wgt.data, bias: b.data,
                                    outChannels: cout, output: y.data, accumulate: false, bandFloats: band)
                Ops.winogradConv3x3(input: x.data, channels: cin, height: h, width: w, weight: wgt.data, bias: nil,
                                    outChannels: cout, output: acc.data, accumulate: true, bandFloats: band)
                assertClose(y, expected, atol: 2e-5, rtol: 1e-4, "winograd \(cin)→\(cout) \(h)×\(w) band \(band)")
                let expectedAcc = NaiveOps.conv2d(x, weight: wgt, bias: nil, p)
                for i in 0..<expectedAcc.count { expectedAcc.data[i] += residual.data[i] }
                assertClose(acc, expectedAcc, atol: 2e-5, rtol: 1e-4, "winograd accumulate \(cin)→\(cout) \(h)×\(w)")
            }
        }
        // and through Ops.conv2d, which picks it for shapes where it pays
        XCTAssertTrue(Ops.winogradPays(inChannels: 24, outChannels: 20, height: 35, width: 30))
        let x = rng.tensor([2, 24, 35, 30]), wgt = rng.tensor([20, 24, 3, 3], scale: 0.3), b = rng.tensor([20])
        let p = Conv2DParams(kernel: 3, padding: 1)
        assertClose(Ops.conv2d(x, weight: wgt, bias: b, p), NaiveOps.conv2d(x, weight: wgt, bias: b, p),
                    atol: 2e-5, rtol: 1e-4, "conv2d via winograd")
    }

    /// im2col works in bands of output rows; a tall image with many channels forces several bands.
    func testBandedIm2colMatchesNaive() {
        var rng = TestRNG(seed: 2)
        let x = rng.tensor([1, 64, 260, 140])
        let w = rng.tensor([4, 64, 3, 3], scale: 0.1)
        let p = Conv2DParams(kernel: 3, padding: 1)
        assertClose(Ops.conv2d(x, weight: w, bias: nil, p), NaiveOps.conv2d(x, weight: w, bias: nil, p),
                    atol: 1e-4, rtol: 1e-4, "banded conv")
    }

    func testNormsAndLayoutAgreeWithNaiveOnLargerShapes() {
        var rng = TestRNG(seed: 3)
        let x = rng.tensor([2, 64, 19, 23], scale: 3)
        let w = rng.tensor([64]), b = rng.tensor([64])
        assertClose(Ops.layerNorm2d(x, weight: w, bias: b, eps: 1e-6), NaiveOps.layerNorm2d(x, weight: w, bias: b, eps: 1e-6),
                    atol: 1e-5, rtol: 1e-4, "layerNorm2d")
        assertClose(Ops.groupNorm(x, groups: 32, weight: w, bias: b, eps: 1e-6),
                    NaiveOps.groupNorm(x, groups: 32, weight: w, bias: b, eps: 1e-6), atol: 1e-5, rtol: 1e-4, "groupNorm")
        let rows = rng.tensor([37, 768], scale: 4)
        let g = rng.tensor([768]), bb = rng.tensor([768])
        assertClose(Ops.layerNorm(rows, weight: g, bias: bb, eps: 1e-5), NaiveOps.layerNorm(rows, weight: g, bias: bb, eps: 1e-5),
                    atol: 1e-5, rtol: 1e-4, "layerNorm")
        assertClose(Ops.softmax(rows), NaiveOps.softmax(rows), atol: 1e-6, rtol: 1e-4, "softmax")
        assertClose(Ops.pixelShuffle(x, 2), NaiveOps.pixelShuffle(x, 2), atol: 0, rtol: 0, "pixelShuffle")
        assertClose(Ops.upsampleNearest2x(x), NaiveOps.upsampleNearest2x(x), atol: 0, rtol: 0, "upsample")
        let a = rng.tensor([3, 33, 17]), bm = rng.tensor([3, 17, 29])
        assertClose(Ops.bmm(a, bm), NaiveOps.bmm(a, bm), atol: 1e-5, rtol: 1e-4, "bmm")
        let bt = Tensor(uninitialized: [3, 29, 17])
        for z in 0..<3 { for i in 0..<17 { for j in 0..<29 { bt.data[(z * 29 + j) * 17 + i] = bm.data[(z * 17 + i) * 29 + j] } } }
        assertClose(Ops.bmm(a, bt, transposeB: true), NaiveOps.bmm(a, bm), atol: 1e-5, rtol: 1e-4, "bmm transposed")
    }
}

final class AttentionTests: XCTestCase {
    /// Blocked, strided attention against the plain loops: several heads, Lq ≠ Lk, a mask, and enough
    /// queries to need more than one block.
    func testAttentionAgreesWithNaive() {
        var rng = TestRNG(seed: 4)
        for (b, lq, lk, heads, d) in [(2, 7, 5, 3, 4), (1, 300, 4000, 2, 8), (1, 77, 77, 4, 16)] {
            let q = rng.tensor([b, lq, heads * d]), k = rng.tensor([b, lk, heads * d]), v = rng.tensor([b, lk, heads * d])
            assertClose(Ops.attention(q: q, k: k, v: v, heads: heads), NaiveOps.attention(q: q, k: k, v: v, heads: heads),
                        atol: 1e-5, rtol: 1e-4, "attention \(b)×\(lq)×\(lk)×\(heads)×\(d)")
        }
        // Causal mask, as CLIP's text encoder uses.
        let (l, c) = (9, 12)
        let causal = Tensor(zeros: [l, l])
        for i in 0..<l { for j in (i + 1)..<l { causal.data[i * l + j] = -.infinity } }
        let q = rng.tensor([2, l, c]), k = rng.tensor([2, l, c]), v = rng.tensor([2, l, c])
        assertClose(Ops.attention(q: q, k: k, v: v, heads: 3, mask: causal),
                    NaiveOps.attention(q: q, k: k, v: v, heads: 3, mask: causal), atol: 1e-5, rtol: 1e-4, "causal attention")
    }
}
