// Guidance: AutoDIR's three-branch classifier-free guidance (InstructPix2Pix's `CFGDenoiser`, as used by the
// AutoDIR reference `eval_w_SCM.py`), as a combinator over denoisers, with the one-evaluation shortcut.
//
// Branches: cond = (text context, image latent), imageCond = (null text, image latent),
// uncond = (null text, zero image latent); out = uncond + s_text·(cond − imageCond) + s_img·(imageCond − uncond).
// With s_text = s_img = 1 that is exactly cond, so only the cond branch is evaluated (the reference runs
// all three). The combination acts on the denoiser outputs as in the reference; since the three weights
// sum to 1 and the three branches share x and σ, combining ε's instead would give the same result.

/// One conditioning branch of the guided batch.
public enum GuidanceBranch: Int, Sendable, CaseIterable {
    /// Text context and image latent (c_crossattn = text, c_concat = z_img).
    case cond
    /// Null-text context and image latent.
    case imageCond
    /// Null-text context and a zero image latent.
    case uncond
}

/// An ε-model over a batch made of several branches: `xIn` is [B·N, …] where rows b·N ..< (b+1)·N belong to
/// `branches[b]` (N = the latent's batch); the model conditions each block on its branch and returns ε
/// with `xIn`'s shape. `t` is the same for all rows.
public typealias BranchedEpsilonModel = (_ xIn: Tensor, _ t: Float, _ branches: [GuidanceBranch]) throws -> Tensor

/// A denoiser over the same branch-blocked batch layout as `BranchedEpsilonModel`.
public typealias BranchedDenoiser = (_ x: Tensor, _ sigma: Float, _ branches: [GuidanceBranch]) throws -> Tensor

extension CompVisDenoiser {
    /// The branched model as a branched denoiser (c_in, t(σ) and x − σ·ε applied to the whole batch).
    public func wrap(_ model: @escaping BranchedEpsilonModel) -> BranchedDenoiser {
        { x, sigma, branches in try denoise(x, sigma: sigma, model: { xIn, t in try model(xIn, t, branches) }) }
    }
}

/// Three-branch classifier-free guidance with text scale s_text and image scale s_img.
public struct ClassifierFreeGuidance: Sendable, Equatable {
    public var textScale: Float
    public var imageScale: Float

    /// The AutoDIR reference defaults (1, 1): the guided output is the cond branch.
    public init(textScale: Float = 1, imageScale: Float = 1) {
        self.textScale = textScale
        self.imageScale = imageScale
    }

    /// True when both scales are 1: one evaluation (the cond branch) per step suffices.
    public var isSingleBranch: Bool { textScale == 1 && imageScale == 1 }

    /// The branches evaluated per step, in batch order.
    public var branches: [GuidanceBranch] { isSingleBranch ? [.cond] : [.cond, .imageCond, .uncond] }

    /// uncond + s_text·(cond − imageCond) + s_img·(imageCond − uncond), element-wise in this order.
    public func combine(cond: Tensor, imageCond: Tensor, uncond: Tensor) throws -> Tensor {
        guard cond.shape == imageCond.shape, cond.shape == uncond.shape else {
            throw EngineError.invalidArgument("guidance branches differ in shape: \(cond.shape), \(imageCond.shape), \(uncond.shape)")
        }
        let out = Tensor(uninitialized: cond.shape)
        let st = textScale, si = imageScale
        for i in 0..<out.count {
            let c = cond.data[i], ic = imageCond.data[i], u = uncond.data[i]
            out.data[i] = u + st * (c - ic) + si * (ic - u)
        }
        return out
    }

    /// The guided denoiser: one call of `branched` per step, with the batch [x] (shortcut) or [x; x; x]
    /// for (cond, imageCond, uncond), whose three outputs are combined.
    public func guided(_ branched: @escaping BranchedDenoiser) -> Denoiser {
        let guidance = self
        return { x, sigma in
            guard let n = x.shape.first, n > 0 else {
                throw EngineError.invalidArgument("guidance needs a batched latent, got shape \(x.shape)")
            }
            if guidance.isSingleBranch {
                return try Samplers.checked(branched(x, sigma, [.cond]), like: x)
            }
            let branches = guidance.branches
            var batchShape = x.shape
            batchShape[0] = n * branches.count
            let xb = Tensor(uninitialized: batchShape)                 // [3N, …] = [x; x; x]
            for b in 0..<branches.count { (xb.data + b * x.count).update(from: x.data, count: x.count) }
            let out = try branched(xb, sigma, branches)
            guard out.shape == batchShape else {
                throw EngineError.invalidArgument("guided denoiser returned shape \(out.shape) for input \(batchShape)")
            }
            let parts = (0..<branches.count).map { b -> Tensor in
                let p = Tensor(uninitialized: x.shape)
                p.data.update(from: out.data + b * x.count, count: x.count)
                return p
            }
            return try guidance.combine(cond: parts[0], imageCond: parts[1], uncond: parts[2])
        }
    }

    /// Guidance over a CompVis ε-model: `guided(compVis.wrap(model))`.
    public func denoiser(_ compVis: CompVisDenoiser, model: @escaping BranchedEpsilonModel) -> Denoiser {
        guided(compVis.wrap(model))
    }
}
