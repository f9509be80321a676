// CLIPEncoder: the pre-norm transformer encoder shared by CLIP's text and vision towers
// (transformers models/clip/modeling_clip.py: CLIPEncoder, CLIPEncoderLayer, CLIPAttention, CLIPMLP).
//
// Tokens are laid out [B, L, D] (batch, tokens, hidden) throughout.
import Foundation

/// The MLP activation a CLIP config names in `hidden_act`.
public enum CLIPActivation: String, Codable, Sendable {
    /// x · sigmoid(1.702 x) (OpenAI CLIP, AutoDIR).
    case quickGelu = "quick_gelu"
    /// Exact (erf) GELU, `nn.GELU()`.
    case gelu = "gelu"

    func callAsFunction(_ x: Tensor) -> Tensor {
        switch self {
        case .quickGelu: return Ops.quickGelu(x)
        case .gelu: return Ops.gelu(x)
        }
    }
}

/// One `CLIPEncoderLayer`: `x = x + out_proj(attn(layer_norm1(x)))`, `x = x + fc2(act(fc1(layer_norm2(x))))`.
///
/// Keys under the layer's prefix: `self_attn.{q,k,v,out}_proj.{weight,bias}`, `layer_norm1.*`,
/// `mlp.fc1.*`, `mlp.fc2.*`, `layer_norm2.*`. q, k and v are fused at load into one [3D, D] weight
/// so each layer runs one gemm for them.
struct CLIPEncoderLayer: Sendable {
    let hidden: Int, heads: Int
    let layerNorm1: LayerNorm, layerNorm2: LayerNorm
    let qkvWeight: Weight  // [3D, D]: rows q, then k, then v
    let qkvBias: Tensor    // [3D]
    let outProj: Linear    // [D, D]
    let fc1: Linear        // [I, D]
    let fc2: Linear        // [D, I]
    let activation: CLIPActivation

    init(_ w: WeightLoader, hidden d: Int, intermediate: Int, heads: Int, eps: Float, activation: CLIPActivation) throws {
        self.hidden = d
        self.heads = heads
        self.activation = activation
        let attn = w.scoped("self_attn")
        let q = try Linear(attn.scoped("q_proj"), inFeatures: d, outFeatures: d)
        let k = try Linear(attn.scoped("k_proj"), inFeatures: d, outFeatures: d)
        let v = try Linear(attn.scoped("v_proj"), inFeatures: d, outFeatures: d)
        let stacked = Tensor(uninitialized: [3 * d, d])
        qkvBias = Tensor(uninitialized: [3 * d])
        for (i, p) in [q, k, v].enumerated() {
            let rows = p.weight.float32()
            withExtendedLifetime(rows) { (stacked.data + i * d * d).update(from: rows.data, count: d * d) }
            if let b = p.bias { (qkvBias.data + i * d).update(from: b.data, count: d) }
        }
        qkvWeight = try attn.resident(stacked, name: "qkv_proj.weight")
        outProj = try Linear(attn.scoped("out_proj"), inFeatures: d, outFeatures: d)
        layerNorm1 = try LayerNorm(w.scoped("layer_norm1"), dim: d, eps: eps)
        layerNorm2 = try LayerNorm(w.scoped("layer_norm2"), dim: d, eps: eps)
        fc1 = try Linear(w.scoped("mlp.fc1"), inFeatures: d, outFeatures: intermediate)
        fc2 = try Linear(w.scoped("mlp.fc2"), inFeatures: intermediate, outFeatures: d)
    }

    /// Runs the layer in place on x [B, L, D]. `mask`: additive [L, L] (shared) or [B, L, L], or nil.
    func apply(_ x: Tensor, mask: Tensor?) {
        let (b, l, d) = (x.shape[0], x.shape[1], x.shape[2])
        let h = layerNorm1(x)                                                     // [B, L, D]
        let qkv = qkvWeight.withFloat32 { Ops.linear(h, weight: $0, bias: qkvBias) }  // [B, L, 3D]
        let attn = Tensor(uninitialized: [b, l, d])                               // [B, L, D]
        withExtendedLifetime((qkv, mask)) {
            let row = 3 * d, batch = l * 3 * d
            Ops.attention(q: AttentionOperand(qkv.data, rowStride: row, batchStride: batch),
                          k: AttentionOperand(qkv.data + d, rowStride: row, batchStride: batch),
                          v: AttentionOperand(qkv.data + 2 * d, rowStride: row, batchStride: batch),
                          out: AttentionOperand(attn.data, rowStride: d, batchStride: l * d),
                          batch: b, heads: heads, queries: l, keys: l, headDim: d / heads,
                          scale: 1 / Float(d / heads).squareRoot(),
                          mask: mask.map { UnsafePointer($0.data) }, maskBatchStride: mask?.rank == 3 ? l * l : 0)
        }
        Self.addLinear(attn, outProj, into: x)                                   // x += out_proj(attn)
        let u = activation(fc1(layerNorm2(x)))                                    // [B, L, I]
        Self.addLinear(u, fc2, into: x)                                           // x += fc2(u)
    }

    /// y += x · Wᵀ + b (the residual add fused into the gemm): x [..., in], y [..., out].
    static func addLinear(_ x: Tensor, _ layer: Linear, into y: Tensor) {
        layer.weight.withFloat32 { Ops.linear(x, weight: $0, bias: layer.bias, accumulatingInto: y) }
    }
}

/// `CLIPEncoder`: `num_hidden_layers` layers under `layers.i`.
struct CLIPEncoder: Sendable {
    let layers: [CLIPEncoderLayer]

    init(_ w: WeightLoader, layers n: Int, hidden: Int, intermediate: Int, heads: Int, eps: Float,
         activation: CLIPActivation) throws {
        layers = try (0..<n).map {
            try CLIPEncoderLayer(w.scoped("layers.\($0)"), hidden: hidden, intermediate: intermediate, heads: heads,
                                 eps: eps, activation: activation)
        }
    }

    /// Runs every layer in place on x [B, L, D].
    func apply(_ x: Tensor, mask: Tensor?) {
        for layer in layers { layer.apply(x, mask: mask) }
    }

    /// Floating-point operations for `batch` sequences of `tokens`, counted as PyTorch's FlopCounterMode
    /// does: 2 per multiply-add of every matrix product (projections, MLP, q·kᵀ and p·v); element-wise work not counted.
    static func flops(layers: Int, hidden d: Int, intermediate: Int, batch: Int, tokens l: Int) -> Double {
        let rows = Double(batch * l), dd = Double(d)
        let perLayer = 2 * rows * dd * (3 * dd + dd + 2 * Double(intermediate)) + 4 * Double(batch) * Double(l * l) * dd
        return Double(layers) * perLayer
    }
}

/// Reads a sub-config's `hidden_act` ("quick_gelu" or "gelu").
func decodeCLIPActivation<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K, default d: CLIPActivation) throws -> CLIPActivation {
    guard let name = try c.decodeIfPresent(String.self, forKey: key) else { return d }
    guard let act = CLIPActivation(rawValue: name) else {
        throw EngineError.format("CLIP config: hidden_act '\(name)' is not supported (quick_gelu, gelu)")
    }
    return act
}
