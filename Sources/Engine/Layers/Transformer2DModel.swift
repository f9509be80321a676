// Transformer2DModel: diffusers `transformer_2d.py` (continuous input) with `BasicTransformerBlock` and
// `Attention` (`attention.py`, `attention_processor.py`) as the SD 1.x UNet uses them.
//
// Tokens are kept as [N, H·W, inner] rows throughout the block stack: proj_in reads the NCHW map
// transposed straight into token rows, every linear is one gemm over all N·H·W rows, attention reads
// heads in place from the fused q/k/v rows, and proj_out writes back to NCHW fused with the residual.
import Foundation

/// diffusers `Attention` with the defaults of `BasicTransformerBlock`: to_q, to_k, to_v without bias,
/// to_out.0 with bias, scale 1/√head_dim. Self-attention when `contextDim` is nil.
struct TransformerAttention: Sendable {
    let heads: Int, headDim: Int
    let qkv: Weight?         // [3·inner, dim]: to_q, to_k, to_v stacked (self-attention)
    let q: Weight?           // [inner, dim] (cross-attention)
    let kv: Weight?          // [2·inner, contextDim]: to_k, to_v stacked (cross-attention)
    let outWeight: Weight, outBias: Tensor  // to_out.0: [dim, inner], [dim]

    init(_ w: WeightLoader, queryDim: Int, contextDim: Int?, heads: Int, headDim: Int) throws {
        self.heads = heads
        self.headDim = headDim
        let inner = heads * headDim
        let wq = try w.tensor("to_q.weight", shape: [inner, queryDim])
        let wk = try w.tensor("to_k.weight", shape: [inner, contextDim ?? queryDim])
        let wv = try w.tensor("to_v.weight", shape: [inner, contextDim ?? queryDim])
        if contextDim == nil {
            qkv = try w.resident(TransformerAttention.stack([wq, wk, wv]), name: "to_qkv.weight"); q = nil; kv = nil
        } else {
            qkv = nil
            q = try w.resident(wq.copy(), name: "to_q.weight")
            kv = try w.resident(TransformerAttention.stack([wk, wv]), name: "to_kv.weight")
        }
        outWeight = try w.weight("to_out.0.weight", shape: [queryDim, inner])
        outBias = try w.tensor("to_out.0.bias", shape: [queryDim])
    }

    static func stack(_ ts: [Tensor]) -> Tensor {
        let cols = ts[0].shape[1]
        let y = Tensor(uninitialized: [ts.reduce(0) { $0 + $1.shape[0] }, cols])
        var off = 0
        for t in ts { (y.data + off).update(from: t.data, count: t.count); off += t.count }
        return y
    }

    /// residual += to_out(attention(x, context)): x [N, L, dim] (normed), context [N, Lc, contextDim].
    func apply(_ x: Tensor, context: Tensor?, residual: Tensor) {
        let (n, l) = (x.shape[0], x.shape[1])
        let inner = heads * headDim
        let out = Tensor(uninitialized: [n, l, inner])
        let scale = 1 / Float(headDim).squareRoot()
        if let qkv {
            let p = qkv.withFloat32 { Ops.linear(x, weight: $0, bias: nil) }                // [N, L, 3·inner]
            let s = 3 * inner
            Ops.attention(q: AttentionOperand(p.data, rowStride: s, batchStride: l * s),
                          k: AttentionOperand(p.data + inner, rowStride: s, batchStride: l * s),
                          v: AttentionOperand(p.data + 2 * inner, rowStride: s, batchStride: l * s),
                          out: AttentionOperand(out.data, rowStride: inner, batchStride: l * inner),
                          batch: n, heads: heads, queries: l, keys: l, headDim: headDim, scale: scale)
            withExtendedLifetime(p) {}
        } else if let q, let kv, let context {
            let lc = context.shape[1]
            let pq = q.withFloat32 { Ops.linear(x, weight: $0, bias: nil) }                  // [N, L, inner]
            let pkv = kv.withFloat32 { Ops.linear(context, weight: $0, bias: nil) }          // [N, Lc, 2·inner]
            let s = 2 * inner
            Ops.attention(q: AttentionOperand(pq.data, rowStride: inner, batchStride: l * inner),
                          k: AttentionOperand(pkv.data, rowStride: s, batchStride: lc * s),
                          v: AttentionOperand(pkv.data + inner, rowStride: s, batchStride: lc * s),
                          out: AttentionOperand(out.data, rowStride: inner, batchStride: l * inner),
                          batch: n, heads: heads, queries: l, keys: lc, headDim: headDim, scale: scale)
            withExtendedLifetime((pq, pkv)) {}
        }
        outWeight.withFloat32 { Ops.linear(out, weight: $0, bias: outBias, accumulatingInto: residual) }  // [N, L, dim]
    }
}

/// diffusers `BasicTransformerBlock` (layer norms, self-attention, cross-attention, GEGLU feed-forward).
struct BasicTransformerBlock: Sendable {
    let norm1: LayerNorm, attn1: TransformerAttention
    let norm2: LayerNorm, attn2: TransformerAttention
    let norm3: LayerNorm
    let ffIn: Linear    // ff.net.0.proj: [2·4·dim, dim]
    let ffOut: Linear   // ff.net.2: [dim, 4·dim]

    init(_ w: WeightLoader, dim: Int, heads: Int, headDim: Int, contextDim: Int) throws {
        norm1 = try LayerNorm(w.scoped("norm1"), dim: dim, eps: 1e-5)
        attn1 = try TransformerAttention(w.scoped("attn1"), queryDim: dim, contextDim: nil, heads: heads, headDim: headDim)
        norm2 = try LayerNorm(w.scoped("norm2"), dim: dim, eps: 1e-5)
        attn2 = try TransformerAttention(w.scoped("attn2"), queryDim: dim, contextDim: contextDim, heads: heads, headDim: headDim)
        norm3 = try LayerNorm(w.scoped("norm3"), dim: dim, eps: 1e-5)
        ffIn = try Linear(w.scoped("ff.net.0.proj"), inFeatures: dim, outFeatures: 8 * dim)
        ffOut = try Linear(w.scoped("ff.net.2"), inFeatures: 4 * dim, outFeatures: dim)
    }

    /// Updates the token rows x [N, L, dim] in place.
    func apply(_ x: Tensor, context: Tensor) {
        attn1.apply(norm1(x), context: nil, residual: x)                                     // x += attn1(norm1(x))
        attn2.apply(norm2(x), context: context, residual: x)                                 // x += attn2(norm2(x), ctx)
        let h = Ops.geglu(ffIn(norm3(x)))                                                    // [N, L, 4·dim]
        ffOut.weight.withFloat32 { Ops.linear(h, weight: $0, bias: ffOut.bias, accumulatingInto: x) }  // x += ff(norm3(x))
    }
}

/// diffusers `Transformer2DModel` for continuous (NCHW) input: GroupNorm (eps 1e-6), proj_in, the
/// transformer blocks, proj_out, residual. proj_in/proj_out are 1×1 convolutions, or linears when
/// `use_linear_projection` (the same product on the same weights, stored [out, in] instead of [out, in, 1, 1]).
public struct Transformer2DModel: Sendable {
    public let heads: Int, headDim: Int
    let norm: GroupNorm
    let projInWeight: Weight, projInBias: Tensor     // [inner, C(, 1, 1)], [inner]
    let blocks: [BasicTransformerBlock]
    let projOutWeight: Weight, projOutBias: Tensor   // [C, inner(, 1, 1)], [C]

    public init(_ w: WeightLoader, heads: Int, headDim: Int, inChannels c: Int, layers: Int = 1,
                crossAttentionDim: Int, groups: Int, useLinearProjection: Bool) throws {
        self.heads = heads
        self.headDim = headDim
        let inner = heads * headDim
        norm = try GroupNorm(w.scoped("norm"), groups: groups, channels: c, eps: 1e-6)
        let tail = useLinearProjection ? [] : [1, 1]
        projInWeight = try w.weight("proj_in.weight", shape: [inner, c] + tail)
        projInBias = try w.tensor("proj_in.bias", shape: [inner])
        blocks = try (0..<layers).map {
            try BasicTransformerBlock(w.scoped("transformer_blocks.\($0)"), dim: inner, heads: heads, headDim: headDim,
                                      contextDim: crossAttentionDim)
        }
        projOutWeight = try w.weight("proj_out.weight", shape: [c, inner] + tail)
        projOutBias = try w.tensor("proj_out.bias", shape: [c])
    }

    /// x [N, C, H, W], context [N, Lc, cross_attention_dim] → [N, C, H, W].
    public func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        let normed = norm(x)                                                                 // [N, C, H, W]
        let tokens = projInWeight.withFloat32 { Ops.projectToTokens(normed, weight: $0, bias: projInBias) }  // [N, H·W, inner]
        for block in blocks { block.apply(tokens, context: context) }
        return projOutWeight.withFloat32 {
            Ops.projectFromTokens(tokens, weight: $0, bias: projOutBias, residual: x)       // [N, C, H, W]
        }
    }
}

extension Transformer2DModel {
    /// FLOPs as PyTorch's FlopCounterMode counts them (2 per multiply-add of linears, 1×1 convs and the two
    /// attention matmuls) for n images of `tokens` positions and `contextTokens` context rows.
    static func flops(channels c: Int, inner: Int, layers: Int, contextDim: Int, tokens l: Int, contextTokens lc: Int) -> Double {
        let (c, d, l, lc, cd) = (Double(c), Double(inner), Double(l), Double(lc), Double(contextDim))
        let block = 2 * l * (3 * d * d + d * d)          // attn1 q, k, v, out
            + 4 * l * l * d                               // attn1 QKᵀ and PV
            + 2 * l * (d * d + d * d) + 2 * lc * 2 * cd * d  // attn2 q, out; k, v from the context
            + 4 * l * lc * d                              // attn2 QKᵀ and PV
            + 2 * l * (8 * d * d + 4 * d * d)             // GEGLU proj, ff.net.2
        return 2 * l * c * d * 2 + Double(layers) * block
    }
}
