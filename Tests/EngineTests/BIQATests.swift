// BIQA (AutoDIR's degradation detection and text contexts) against the same composition done in PyTorch
// on transformers' CLIPModel (tools/fixtures/make_clip_fixture.py). Tolerance 1e-4 (abs and rel).
import Foundation
import XCTest
@testable import Engine

final class BIQATests: XCTestCase {
    /// One BIQA for every test (creating it runs the 8 prompts and "" through the text tower).
    static let shared: Result<BIQA, Error> = Result {
        try BIQA(clip: try CLIPFixture.model(), tokenizer: try CLIPTokenizer(directory: Fixtures.path("tokenizer")))
    }
    func biqa() throws -> BIQA { try Self.shared.get() }
    let tol = CLIPFixture.tolerance

    func testDetectionMatchesPyTorch() throws {
        let biqa = try biqa(), io = try CLIPFixture.io()
        let d = try biqa.detect(try io.tensor("image"))
        let probs = try io.tensor("biqa_probs"), logits = try io.tensor("logits_per_text")
        for (i, c) in BIQA.defaultCategories.enumerated() {
            XCTAssertEqual(d.probabilities[c] ?? -1, probs.data[i], accuracy: tol, c)
            XCTAssertEqual(d.logits[c] ?? -1, logits.data[i], accuracy: tol * max(1, abs(logits.data[i])), c)
        }
        XCTAssertEqual(d.artifact, BIQA.defaultCategories[Int(try io.tensor("biqa_artifact").data[0])])
        assertClose(d.context, try io.tensor("biqa_context").reshaped([1, 77, 32]), atol: tol, rtol: tol, "BIQA context")
    }

    func testDetectionAmongRemainingCategories() throws {
        let biqa = try biqa(), io = try CLIPFixture.io()
        let index = try io.tensor("among_index").array.map { Int($0) }
        let among = index.map { BIQA.defaultCategories[$0] }
        let d = try biqa.detect(try io.tensor("image"), among: among.reversed())  // order does not matter
        XCTAssertEqual(Set(d.probabilities.keys), Set(among))
        let probs = try io.tensor("among_probs")
        for (i, c) in among.enumerated() { XCTAssertEqual(d.probabilities[c] ?? -1, probs.data[i], accuracy: tol, c) }
        XCTAssertEqual(d.probabilities.values.reduce(0, +), 1, accuracy: 1e-5)
        assertClose(d.context, try io.tensor("among_context").reshaped([1, 77, 32]), atol: tol, rtol: tol, "context among")
        let best = among.max { d.probabilities[$0]! < d.probabilities[$1]! }
        XCTAssertEqual(d.artifact, best)
        // One category left: probability 1, context = its prompt's states.
        let one = try biqa.detect(try io.tensor("image"), among: ["haze"])
        XCTAssertEqual(one.probabilities, ["haze": 1])
        XCTAssertEqual(one.artifact, "haze")
        assertClose(one.context, CLIPFixture.row(try io.tensor("prompt_last_masked"), 4), atol: tol, rtol: tol, "haze context")
    }

    func testPromptAndNullContexts() throws {
        let biqa = try biqa(), io = try CLIPFixture.io()
        let free = try io.tensor("free_last_nomask")
        assertClose(biqa.nullContext, CLIPFixture.row(free, 0), atol: tol, rtol: tol, "null context")
        assertClose(try biqa.promptContext(""), CLIPFixture.row(free, 0), atol: tol, rtol: tol, "\"\" context")
        assertClose(try biqa.promptContext("Make it brighter and remove the noise, please!"), CLIPFixture.row(free, 1),
                    atol: tol, rtol: tol, "free prompt context")
        // 10,000 characters: truncated to 77 tokens by the tokenizer, no crash, same as PyTorch.
        let long = String(String(repeating: "please remove the heavy rain streaks and the haze, then sharpen the blurry edges; ",
                                 count: 200).prefix(10_000))
        XCTAssertEqual(long.count, 10_000)
        assertClose(try biqa.promptContext(long), CLIPFixture.row(free, 2), atol: tol, rtol: tol, "10,000-character prompt")
        // The user prompt's context is computed WITHOUT the attention mask (unlike the category prompts).
        let noise = try biqa.promptContext("A photo needs noise artifact reduction")
        assertClose(noise, CLIPFixture.row(try io.tensor("prompt_last_nomask"), 0), atol: tol, rtol: tol, "unmasked prompt")
    }

    func testPreprocessingMatchesTransformersCenterCrop() throws {
        let io = try CLIPFixture.io()
        // Larger than the crop (61×83 → 56×56 centre) and a side below it (40×70: 40 padded with black, 70 cropped).
        assertClose(try BIQA.preprocess(try io.tensor("image"), cropSize: 56), try io.tensor("pixel_values"),
                    atol: 1e-5, rtol: 1e-5, "pixel_values")
        assertClose(try BIQA.preprocess(try io.tensor("small_image"), cropSize: 56), try io.tensor("small_pixel_values"),
                    atol: 1e-5, rtol: 1e-5, "small pixel_values")
        // [C, H, W] is accepted as one image.
        let chw = try io.tensor("image").reshaped([3, 61, 83])
        assertClose(try BIQA.preprocess(chw, cropSize: 56), try io.tensor("pixel_values"), atol: 1e-5, rtol: 1e-5, "CHW")
    }

    func testSmallAndGrayscaleImagesAreScoredAsTheReferenceScoresThem() throws {
        let biqa = try biqa(), io = try CLIPFixture.io()
        for (image, golden) in [("small_image", "small_logits_per_text"), ("gray_image", "gray_logits_per_text")] {
            let d = try biqa.detect(try io.tensor(image))
            let logits = try io.tensor(golden)
            for (i, c) in BIQA.defaultCategories.enumerated() {
                XCTAssertEqual(d.logits[c] ?? -1, logits.data[i], accuracy: tol * max(1, abs(logits.data[i])), "\(image) \(c)")
            }
        }
        // A 1×1 image is padded to the full crop: defined, finite.
        let tiny = try biqa.detect(Tensor(shape: [1, 3, 1, 1], repeating: 0.5))
        XCTAssertTrue(tiny.context.array.allSatisfy(\.isFinite))
        XCTAssertEqual(tiny.probabilities.values.reduce(0, +), 1, accuracy: 1e-5)
    }

    func testBadInputIsAnError() throws {
        let biqa = try biqa()
        let image = Tensor(zeros: [1, 3, 60, 60])
        XCTAssertThrowsError(try biqa.detect(image, among: []))
        XCTAssertThrowsError(try biqa.detect(image, among: ["snow"])) { XCTAssertTrue("\($0)".contains("snow")) }
        XCTAssertThrowsError(try biqa.detect(Tensor(zeros: [2, 3, 60, 60])))   // a batch
        XCTAssertThrowsError(try biqa.detect(Tensor(zeros: [1, 4, 60, 60])))   // RGBA
        XCTAssertThrowsError(try biqa.detect(Tensor(zeros: [1, 3, 0, 60])))    // empty
        XCTAssertThrowsError(try biqa.detect(Tensor(zeros: [60, 60])))
        let nan = Tensor(zeros: [1, 3, 60, 60])
        nan.data[7] = .nan
        XCTAssertThrowsError(try biqa.detect(nan))
        let clip = try CLIPFixture.model(), tok = try CLIPTokenizer(directory: Fixtures.path("tokenizer"))
        XCTAssertThrowsError(try BIQA(clip: clip, tokenizer: tok, categories: []))
        XCTAssertThrowsError(try BIQA(clip: clip, tokenizer: tok, categories: ["rain", "rain"]))
        XCTAssertThrowsError(try BIQA(clip: clip, tokenizer: tok, template: "no placeholder"))
    }

    func testCustomCategoriesAndTemplate() throws {
        let clip = try CLIPFixture.model(), tok = try CLIPTokenizer(directory: Fixtures.path("tokenizer"))
        let biqa = try BIQA(clip: clip, tokenizer: tok, categories: ["rain", "no"], template: "a {} photo")
        XCTAssertEqual(BIQA.prompt("a {} photo", "rain"), "a rain photo")
        let d = try biqa.detect(Tensor(zeros: [1, 3, 56, 56]))
        XCTAssertEqual(Set(d.probabilities.keys), ["rain", "no"])
    }
}
