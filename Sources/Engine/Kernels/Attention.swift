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
    ///
    /// The (batch, head, query block) items are spread over the cores, each running single-threaded BLAS
    /// (gemm, exp, gemm, then 1/Σ on the headDim-wide output rows instead of the lk-wide scores): no
    /// hand-offs between BLAS's threads and ours on every block, and no BLAS threads spinning meanwhile.
    public static func attention(q: AttentionOperand, k: AttentionOperand, v: AttentionOperand, out: AttentionOperand,
                                 batch: Int, heads: Int, queries lq: Int, keys lk: Int, headDim: Int, scale: Float,
                                 mask: UnsafePointer<Float>? = nil, maskBatchStride: Int = 0) {
        let block = max(1, min(lq, (1 << 20) / max(lk, 1)))
        let perHead = (lq + block - 1) / block
        let items = batch * heads * perHead
        func run(_ range: Range<Int>) {
            let scores = UnsafeMutablePointer<Float>.allocateAligned(capacity: block * lk)
            let sums = UnsafeMutablePointer<Float>.allocateAligned(capacity: block)
            defer { scores.deallocate(); sums.deallocate() }
            for item in range {
                let (bh, blk) = item.quotientAndRemainder(dividingBy: perHead)
                let (b, h) = bh.quotientAndRemainder(dividingBy: heads)
                let r0 = blk * block, rows = min(block, lq - r0)
                let qh = q.base + b * q.batchStride + h * headDim + r0 * q.rowStride
                let kh = k.base + b * k.batchStride + h * headDim
                let vh = v.base + b * v.batchStride + h * headDim
                let oh = out.base + b * out.batchStride + h * headDim + r0 * out.rowStride
                // S = scale · Q[r0..] · Kᵀ (+ mask)                                  [rows, lk]
                BLAS.gemm(transB: true, m: rows, n: lk, k: headDim, alpha: scale, a: qh, lda: q.rowStride,
                          b: kh, ldb: k.rowStride, c: scores)
                if let mask {
                    let m = mask + b * maskBatchStride + r0 * lk
                    for i in 0..<(rows * lk) { scores[i] += m[i] }
                }
                // P = exp(S − rowmax), Σ per row; O[r0..] = P · V / Σ                [rows, headDim]
                expRowsUnnormalized(scores, rows: rows, cols: lk, sums: sums)
                BLAS.gemm(m: rows, n: headDim, k: lk, a: scores, b: vh, ldb: v.rowStride, c: oh, ldc: out.rowStride)
                for r in 0..<rows {
                    let o = oh + r * out.rowStride, inv = 1 / sums[r]
                    for d in 0..<headDim { o[d] *= inv }
                }
            }
        }
        if items >= Parallel.threads && Parallel.threads > 1 {
            BLAS.singleThreaded { Parallel.forEachChunk(items) { run($0) } }
        } else {
            run(0..<items)
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
