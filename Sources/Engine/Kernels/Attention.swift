// Attention: scaled dot-product attention over strided multi-head token layouts (torch `F.scaled_dot_product_attention`).
import Foundation

/// Where one operand of an attention call lives: element (batch b, token l, head h, channel d) is at
/// `base[b·batchStride + l·rowStride + h·headDim + d]`. Tokens laid out [B, L, heads·headDim] (diffusers, CLIP)
/// have rowStride = heads·headDim and batchStride = L·rowStride.
public struct AttentionOperand {
    public var base: UnsafeMutablePointer<Float>
    public var rowStride: Int
    public var batchStride: Int
    public init(_ base: UnsafeMutablePointer<Float>, rowStride: Int, batchStride: Int) {
        self.base = base; self.rowStride = rowStride; self.batchStride = batchStride
    }
}

extension Ops {
    /// out = softmax(q·kᵀ·scale + mask) · v for every batch and head, in blocks of queries so the score
    /// matrix never exceeds about 4 MiB (a 4096-token self-attention never builds its 64 MiB score matrix).
    /// - mask: optional additive bias [batch][lq × lk] (pass `maskBatchStride` 0 to share one across the batch),
    ///   e.g. −∞ above the diagonal for CLIP's causal mask.
    public static func attention(q: AttentionOperand, k: AttentionOperand, v: AttentionOperand, out: AttentionOperand,
                                 batch: Int, heads: Int, queries lq: Int, keys lk: Int, headDim: Int, scale: Float,
                                 mask: UnsafePointer<Float>? = nil, maskBatchStride: Int = 0) {
        let block = max(1, min(lq, (1 << 20) / max(lk, 1)))
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: block * lk)
        defer { scores.deallocate() }
        for b in 0..<batch {
            for h in 0..<heads {
                let qh = q.base + b * q.batchStride + h * headDim
                let kh = k.base + b * k.batchStride + h * headDim
                let vh = v.base + b * v.batchStride + h * headDim
                let oh = out.base + b * out.batchStride + h * headDim
                var r0 = 0
                while r0 < lq {
                    let rows = min(block, lq - r0)
                    // S = scale · Q[r0..] · Kᵀ                                       [rows, lk]
                    BLAS.gemm(transB: true, m: rows, n: lk, k: headDim, alpha: scale, a: qh + r0 * q.rowStride, lda: q.rowStride,
                              b: kh, ldb: k.rowStride, c: scores)
                    if let mask {
                        let m = mask + b * maskBatchStride + r0 * lk
                        Parallel.forEachChunk(rows * lk, grain: 1 << 15) { r in for i in r { scores[i] += m[i] } }
                    }
                    softmaxRowsFast(scores, rows: rows, cols: lk)
                    // O[r0..] = S · V                                                [rows, headDim]
                    BLAS.gemm(m: rows, n: headDim, k: lk, a: scores, b: vh, ldb: v.rowStride,
                              c: oh + r0 * out.rowStride, ldc: out.rowStride)
                    r0 += rows
                }
            }
        }
    }

    /// Tensor form: q [B, Lq, H·D], k and v [B, Lk, H·D] → [B, Lq, H·D], scale 1/√D unless given.
    public static func attention(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float? = nil,
                                 mask: Tensor? = nil) -> Tensor {
        let (b, lq, c) = (q.shape[0], q.shape[1], q.shape[2])
        let lk = k.shape[1], d = c / heads
        let out = Tensor(uninitialized: [b, lq, c])
        let maskStride = mask.map { $0.rank == 3 ? lq * lk : 0 } ?? 0
        attention(q: AttentionOperand(q.data, rowStride: c, batchStride: lq * c),
                  k: AttentionOperand(k.data, rowStride: c, batchStride: lk * c),
                  v: AttentionOperand(v.data, rowStride: c, batchStride: lk * c),
                  out: AttentionOperand(out.data, rowStride: c, batchStride: lq * c),
                  batch: b, heads: heads, queries: lq, keys: lk, headDim: d,
                  scale: scale ?? 1 / Float(d).squareRoot(), mask: mask.map { UnsafePointer($0.data) }, maskBatchStride: maskStride)
        return out
    }
}

extension NaiveOps {
    /// Plain-loop attention: q [B, Lq, H·D], k and v [B, Lk, H·D], optional additive mask [Lq, Lk] or [B, Lq, Lk].
    public static func attention(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float? = nil, mask: Tensor? = nil) -> Tensor {
        let (b, lq, c) = (q.shape[0], q.shape[1], q.shape[2])
        let lk = k.shape[1], d = c / heads
        let s = Double(scale ?? 1 / Float(d).squareRoot())
        let out = Tensor(zeros: [b, lq, c])
        for bi in 0..<b {
            for h in 0..<heads {
                for i in 0..<lq {
                    var logits = [Double](repeating: 0, count: lk)
                    for j in 0..<lk {
                        var dot: Double = 0
                        for t in 0..<d { dot += Double(q.data[(bi * lq + i) * c + h * d + t]) * Double(k.data[(bi * lk + j) * c + h * d + t]) }
                        logits[j] = dot * s
                        if let mask { logits[j] += Double(mask.data[(mask.rank == 3 ? bi * lq * lk : 0) + i * lk + j]) }
                    }
                    let mx = logits.max() ?? 0
                    let e = logits.map { ($0 - mx).isNaN ? 0 : Foundation.exp($0 - mx) }
                    let z = e.reduce(0, +)
                    for t in 0..<d {
                        var acc: Double = 0
                        for j in 0..<lk { acc += e[j] / z * Double(v.data[(bi * lk + j) * c + h * d + t]) }
                        out.data[(bi * lq + i) * c + h * d + t] = Float(acc)
                    }
                }
            }
        }
        return out
    }
}
