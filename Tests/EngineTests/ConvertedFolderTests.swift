// A model folder written by tools/convert_autodir_ckpt.py from a synthetic checkpoint with the official AutoDIR
// key layout (tools/fixtures/make_synthetic_autodir_ckpt.py --write-fixture, F16 weights), loaded with the
// engine's own loaders; every component runs once against what diffusers / transformers / the reference NAFNet
// compute from the same folder (converted/expected.safetensors: float64 on the F16 weights widened, rounded to
// float32). Tolerance 1e-3 (atol and rtol) for model outputs, exact for token ids.
import Foundation
import XCTest
@testable import Engine

final class ConvertedFolderTests: XCTestCase {
    let dir = Fixtures.path("converted")

    func expected() throws -> SafeTensors { try SafeTensors(path: dir + "/expected.safetensors") }

    func testModelIndex() throws {
        let index = try ModelIndex.load(directory: dir)
        XCTAssertEqual(index.className, "AutoDIRPipeline")
        XCTAssertEqual(index.autodir, AutoDIRSettings())  // the reference categories, template, 0.18215, w = 1
        XCTAssertEqual(index.autodir.defaults.steps, 100)
    }

    func testUNet() throws {
        let io = try expected()
        let unet = try UNet2DConditionModel(directory: dir + "/unet")
        XCTAssertEqual(unet.config.inChannels, 8)
        XCTAssertEqual(unet.config.crossAttentionDim, 8)
        let out = try unet(try io.tensor("unet_sample"), timestep: try io.tensor("unet_timestep").data[0],
                           context: try io.tensor("unet_context"))
        assertClose(out, try io.tensor("unet_out"), atol: 1e-3, rtol: 1e-3, "converted UNet")
    }

    func testVAE() throws {
        let io = try expected()
        let vae = try AutoencoderKL(directory: dir + "/vae")
        XCTAssertEqual(vae.config.scalingFactor, 0.18215)
        assertClose(try vae.encode(try io.tensor("vae_image")), try io.tensor("vae_latent"), atol: 1e-3, rtol: 1e-3,
                    "converted VAE encode (posterior mode)")
        assertClose(try vae.decode(try io.tensor("vae_z")), try io.tensor("vae_decoded"), atol: 1e-3, rtol: 1e-3,
                    "converted VAE decode")
    }

    func testTokenizerAndCLIP() throws {
        let io = try expected()
        let tokenizer = try CLIPTokenizer(directory: dir + "/tokenizer")
        let index = try ModelIndex.load(directory: dir)
        let encoded = index.autodir.categories.map { tokenizer(index.autodir.prompt(for: $0)) }
        let ids = encoded.map(\.ids), mask = encoded.map(\.attentionMask)
        XCTAssertEqual(ids.flatMap { $0.map(Float.init) }, try io.tensor("prompt_ids").array, "token ids")
        XCTAssertEqual(mask.flatMap { $0.map(Float.init) }, try io.tensor("prompt_mask").array, "attention mask")

        let clip = try CLIPModel(directory: dir + "/clip")
        XCTAssertEqual(clip.config.textConfig.eosTokenId, 2)  // the legacy argmax pooling of openai's config
        let text = try clip.textModel(inputIds: ids, attentionMask: mask)
        assertClose(text.lastHiddenState, try io.tensor("text_last"), atol: 1e-3, rtol: 1e-3, "CLIP last_hidden_state")
        let textEmbeds = clip.projectText(text.pooledOutput)
        assertClose(textEmbeds, try io.tensor("text_embeds"), atol: 1e-3, rtol: 1e-3, "CLIP text embeds")
        let imageEmbeds = try clip.imageEmbeds(pixelValues: try io.tensor("pixel_values"))
        assertClose(imageEmbeds, try io.tensor("image_embeds"), atol: 1e-3, rtol: 1e-3, "CLIP image embeds")
        let logits = try clip.logitsPerText(textEmbeds: textEmbeds, imageEmbeds: imageEmbeds)
        assertClose(logits, try io.tensor("logits_per_text"), atol: 1e-3, rtol: 1e-3, "CLIP logits_per_text")
    }

    func testSCM() throws {
        let io = try expected()
        let scm = try NAFNet(directory: dir + "/scm")
        assertClose(try scm(try io.tensor("scm_input")), try io.tensor("scm_output"), atol: 1e-3, rtol: 1e-3,
                    "converted NAFNet (SCM)")
    }

    func testScheduler() throws {
        let schedule = try NoiseSchedule(path: dir + "/scheduler/scheduler_config.json")
        XCTAssertEqual(schedule.config, SchedulerConfig())  // SD's scaled-linear 0.00085 → 0.012, 1000 steps
        // The checkpoint's own ᾱ buffer (ldm: float64 product stored as float32).
        let buffer = try expected().tensor("alphas_cumprod")
        XCTAssertEqual(buffer.count, schedule.count)
        let ours = Tensor(uninitialized: [schedule.count])
        for (i, a) in schedule.alphasCumprod.enumerated() { ours.data[i] = Float(a) }
        assertClose(ours, buffer, atol: 0, rtol: 1e-6, "ᾱ from scheduler_config vs the checkpoint's buffer")
    }
}
