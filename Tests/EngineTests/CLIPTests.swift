// CLIP text and vision towers and CLIPModel against transformers 5.24's CLIPModel
// (tools/fixtures/make_clip_fixture.py: tiny random config with the real 49408-token vocabulary, F16 weights,
// float64 goldens from exactly those weights). Tolerance 1e-4 (abs and rel) throughout.
import Foundation
import XCTest
@testable import Engine

/// The fixture's model and goldens, loaded once for all CLIP and BIQA tests.
enum CLIPFixture {
    static let tolerance: Float = 1e-4

    static func model() throws -> CLIPModel { try CLIPModel(directory: Fixtures.path("clip")) }
    static func io() throws -> SafeTensors { try SafeTensors(path: Fixtures.path("clip/io.safetensors")) }

    /// Rows of a [B, L] float tensor of token ids (stored as exact floats).
    static func ids(_ io: SafeTensors, _ name: String) throws -> [[Int32]] {
        let t = try io.tensor(name)
        let (b, l) = (t.shape[0], t.shape[1])
        return (0..<b).map { r in (0..<l).map { Int32(t.data[r * l + $0]) } }
    }

    /// Row `i` of a [B, ...] tensor as [1, ...].
    static func row(_ t: Tensor, _ i: Int) -> Tensor {
        let n = t.count / t.shape[0]
        let r = Tensor(uninitialized: [1] + Array(t.shape.dropFirst()))
        r.data.update(from: t.data + i * n, count: n)
        return r
    }
}

final class CLIPTests: XCTestCase {
    func testTokenizerGivesTheFixtureIds() throws {
        let io = try CLIPFixture.io()
        let tok = try CLIPTokenizer(directory: Fixtures.path("tokenizer"))
        let ids = try CLIPFixture.ids(io, "prompt_ids"), mask = try CLIPFixture.ids(io, "prompt_mask")
        for (i, c) in BIQA.defaultCategories.enumerated() {
            let enc = tok(BIQA.prompt(BIQA.defaultTemplate, c))
            XCTAssertEqual(enc.ids, ids[i], c)
            XCTAssertEqual(enc.attentionMask, mask[i], c)
        }
    }

    func testTextModelWithAndWithoutAttentionMask() throws {
        let clip = try CLIPFixture.model(), io = try CLIPFixture.io()
        let ids = try CLIPFixture.ids(io, "prompt_ids"), mask = try CLIPFixture.ids(io, "prompt_mask")
        let tol = CLIPFixture.tolerance
        let masked = try clip.textModel(inputIds: ids, attentionMask: mask)
        assertClose(masked.lastHiddenState, try io.tensor("prompt_last_masked"), atol: tol, rtol: tol, "last_hidden_state (mask)")
        assertClose(masked.pooledOutput, try io.tensor("prompt_pooled_masked"), atol: tol, rtol: tol, "pooled (mask)")
        let plain = try clip.textModel(inputIds: ids)
        assertClose(plain.lastHiddenState, try io.tensor("prompt_last_nomask"), atol: tol, rtol: tol, "last_hidden_state (ids only)")
        assertClose(plain.pooledOutput, try io.tensor("prompt_pooled_nomask"), atol: tol, rtol: tol, "pooled (ids only)")
        assertClose(try clip.textEmbeds(inputIds: ids, attentionMask: mask), try io.tensor("prompt_text_embeds"),
                    atol: tol, rtol: tol, "text_embeds")
    }

    func testFreePromptsIncludingEmptyAndTruncated() throws {
        let clip = try CLIPFixture.model(), io = try CLIPFixture.io()
        let ids = try CLIPFixture.ids(io, "free_ids")
        assertClose(try clip.textModel(inputIds: ids).lastHiddenState, try io.tensor("free_last_nomask"),
                    atol: CLIPFixture.tolerance, rtol: CLIPFixture.tolerance, "free prompts last_hidden_state")
    }

    func testBothEOSPoolingRules() throws {
        let io = try CLIPFixture.io()
        let ids = try CLIPFixture.ids(io, "noeos_ids")
        var config = try CLIPConfig.load(path: Fixtures.path("clip/config.json"))
        for (eos, golden) in [(49407, "noeos_pooled_eos49407"), (2, "noeos_pooled_eos2")] {
            config.textConfig.eosTokenId = eos
            let clip = try CLIPModel(config: config, weights: WeightLoader(path: Fixtures.path("clip/model.safetensors")))
            assertClose(try clip.textModel(inputIds: ids).pooledOutput, try io.tensor(golden),
                        atol: CLIPFixture.tolerance, rtol: CLIPFixture.tolerance, "pooled, eos_token_id \(eos)")
        }
    }

    func testVisionModelAndImageEmbeds() throws {
        let clip = try CLIPFixture.model(), io = try CLIPFixture.io()
        let tol = CLIPFixture.tolerance
        let pixels = try io.tensor("pixel_values")
        let out = try clip.visionModel(pixels)
        assertClose(out.lastHiddenState, try io.tensor("vision_last"), atol: tol, rtol: tol, "vision last_hidden_state")
        assertClose(out.pooledOutput, try io.tensor("vision_pooled"), atol: tol, rtol: tol, "vision pooled")
        assertClose(try clip.imageEmbeds(pixelValues: pixels), try io.tensor("image_embeds"), atol: tol, rtol: tol, "image_embeds")
    }

    func testLogitsPerText() throws {
        let clip = try CLIPFixture.model(), io = try CLIPFixture.io()
        let ids = try CLIPFixture.ids(io, "prompt_ids"), mask = try CLIPFixture.ids(io, "prompt_mask")
        let logits = try clip.logitsPerText(textEmbeds: try clip.textEmbeds(inputIds: ids, attentionMask: mask),
                                            imageEmbeds: try clip.imageEmbeds(pixelValues: try io.tensor("pixel_values")))
        assertClose(logits, try io.tensor("logits_per_text"), atol: CLIPFixture.tolerance, rtol: CLIPFixture.tolerance, "logits_per_text")
        XCTAssertThrowsError(try clip.logitsPerText(textEmbeds: Tensor(zeros: [2, 3]), imageEmbeds: Tensor(zeros: [1, 16])))
    }

    func testConfigDefaultsAreViTL14() throws {
        let c = try JSONDecoder().decode(CLIPConfig.self, from: Data("{}".utf8))
        XCTAssertEqual(c, CLIPConfig())
        let t = c.textConfig, v = c.visionConfig
        XCTAssertEqual([t.hiddenSize, t.intermediateSize, t.numHiddenLayers, t.numAttentionHeads, t.maxPositionEmbeddings, t.vocabSize],
                       [768, 3072, 12, 12, 77, 49408])
        XCTAssertEqual([v.hiddenSize, v.intermediateSize, v.numHiddenLayers, v.numAttentionHeads, v.patchSize, v.imageSize],
                       [1024, 4096, 24, 16, 14, 224])
        XCTAssertEqual(t.hiddenAct, .quickGelu)
        XCTAssertEqual(v.hiddenAct, .quickGelu)
        XCTAssertEqual(c.projectionDim, 768)
        // The counts the benchmark reports match PyTorch's FlopCounterMode figures (162 and 106 GFLOP).
        XCTAssertEqual(v.flops(batch: 1) / 1e9, 162, accuracy: 0.5)
        XCTAssertEqual(t.flops(batch: 8, tokens: 77) / 1e9, 106.3, accuracy: 0.5)
    }

    func testGeluConfigAndUnknownActivation() throws {
        let json = #"{"text_config": {"hidden_act": "gelu"}, "vision_config": {"hidden_act": "quick_gelu"}}"#
        let c = try JSONDecoder().decode(CLIPConfig.self, from: Data(json.utf8))
        XCTAssertEqual(c.textConfig.hiddenAct, .gelu)
        let bad = #"{"text_config": {"hidden_act": "relu"}}"#
        XCTAssertThrowsError(try JSONDecoder().decode(CLIPConfig.self, from: Data(bad.utf8)))
    }

    func testBadTextInputIsAnError() throws {
        let clip = try CLIPFixture.model()
        XCTAssertThrowsError(try clip.textModel(inputIds: []))
        XCTAssertThrowsError(try clip.textModel(inputIds: [[]]))
        XCTAssertThrowsError(try clip.textModel(inputIds: [[Int32](repeating: 1, count: 78)]))  // longer than 77
        XCTAssertThrowsError(try clip.textModel(inputIds: [[49406, 49408]]))                     // id out of vocabulary
        XCTAssertThrowsError(try clip.textModel(inputIds: [[49406, -1]]))
        XCTAssertThrowsError(try clip.textModel(inputIds: [[1, 2], [1]]))                        // ragged
        XCTAssertThrowsError(try clip.textModel(inputIds: [[1, 2]], attentionMask: [[1]]))
        // A mask with nothing to attend to in the first row: defined (uniform attention), finite.
        let out = try clip.textModel(inputIds: [[49406, 320, 49407]], attentionMask: [[0, 1, 1]])
        XCTAssertTrue(out.lastHiddenState.array.allSatisfy(\.isFinite))
    }

    func testFusedResidualLinearAgreesWithLinearPlusAdd() throws {
        var rng = TestRNG(seed: 7)
        let x = rng.tensor([2, 5, 12]), y = rng.tensor([2, 5, 9])
        let layer = try Linear(WeightLoader.random(seed: 3), inFeatures: 12, outFeatures: 9)
        let expected = NaiveOps.linear(x, weight: layer.weight.float32(), bias: layer.bias)
        for i in 0..<expected.count { expected.data[i] += y.data[i] }
        CLIPEncoderLayer.addLinear(x, layer, into: y)
        assertClose(y, expected, atol: 1e-5, rtol: 1e-5, "y += linear(x)")
    }

    func testAttentionMaskIsCausalPlusPadding() {
        let blocked = -Float.greatestFiniteMagnitude
        let causal = CLIPTextModel.mask(length: 3, attentionMask: nil)
        XCTAssertEqual(causal.shape, [3, 3])
        XCTAssertEqual(causal.array, [0, blocked, blocked, 0, 0, blocked, 0, 0, 0])
        let padded = CLIPTextModel.mask(length: 3, attentionMask: [[1, 1, 0], [1, 0, 0]])
        XCTAssertEqual(padded.shape, [2, 3, 3])
        XCTAssertEqual(Array(padded.array[0..<9]), [0, blocked, blocked, 0, 0, blocked, 0, 0, blocked])
        XCTAssertEqual(Array(padded.array[9..<18]), [0, blocked, blocked, 0, blocked, blocked, 0, blocked, blocked])
    }

    func testBadPixelValuesAreAnError() throws {
        let clip = try CLIPFixture.model()
        XCTAssertThrowsError(try clip.visionModel(Tensor(zeros: [1, 3, 55, 56])))
        XCTAssertThrowsError(try clip.visionModel(Tensor(zeros: [1, 1, 56, 56])))
        XCTAssertThrowsError(try clip.visionModel(Tensor(zeros: [3, 56, 56])))
    }

    func testStrictLoadingNamesTheProblem() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("clip-strict-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try SafeTensors(path: Fixtures.path("clip/model.safetensors"))
        let config = try CLIPConfig.load(path: Fixtures.path("clip/config.json"))
        let tensors = try file.keys.map { ($0, try file.tensor($0)) }
        func load(_ ts: [(String, Tensor)], _ name: String) throws -> CLIPModel {
            try SafeTensors.write(ts, to: dir + "/" + name)
            return try CLIPModel(config: config, weights: WeightLoader(path: dir + "/" + name))
        }
        // position_ids buffers (older checkpoints carry them) are ignored.
        let withIds = tensors + [("text_model.embeddings.position_ids", Tensor(zeros: [1, 77])),
                                 ("vision_model.embeddings.position_ids", Tensor(zeros: [1, 17]))]
        XCTAssertNoThrow(try load(withIds, "ids.safetensors"))
        // Missing, unexpected, mis-shaped keys name the key.
        let missing = "text_model.encoder.layers.1.self_attn.v_proj.bias"
        XCTAssertThrowsError(try load(tensors.filter { $0.0 != missing }, "missing.safetensors")) {
            XCTAssertTrue("\($0)".contains(missing), "\($0)")
        }
        XCTAssertThrowsError(try load(tensors + [("vision_model.extra", Tensor(zeros: [1]))], "extra.safetensors")) {
            XCTAssertTrue("\($0)".contains("vision_model.extra"), "\($0)")
        }
        let shaped = tensors.map { $0.0 == "visual_projection.weight" ? ($0.0, Tensor(zeros: [16, 31])) : $0 }
        XCTAssertThrowsError(try load(shaped, "shape.safetensors")) {
            XCTAssertTrue("\($0)".contains("visual_projection.weight"), "\($0)")
        }
        XCTAssertThrowsError(try load(tensors.filter { $0.0 != "logit_scale" }, "noscale.safetensors")) {
            XCTAssertTrue("\($0)".contains("logit_scale"), "\($0)")
        }
        // Missing folder, bad config.
        XCTAssertThrowsError(try CLIPModel(directory: dir + "/nope"))
        try Data(#"{"text_config": {"hidden_size": 30, "num_attention_heads": 4}}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertThrowsError(try CLIPConfig.load(path: dir + "/config.json"))
        try Data("not json".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertThrowsError(try CLIPConfig.load(path: dir + "/config.json"))
    }
}
