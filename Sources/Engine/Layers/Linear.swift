// Linear, LayerNorm, GroupNorm: small layers with their weights (PyTorch nn.Linear, nn.LayerNorm, nn.GroupNorm).

/// `nn.Linear`: keys `weight` [out, in] and, if present, `bias` [out].
public struct Linear: Sendable {
    public let weight: Weight
    public let bias: Tensor?

    public init(_ w: WeightLoader, inFeatures: Int, outFeatures: Int, bias: Bool = true) throws {
        weight = try w.weight("weight", shape: [outFeatures, inFeatures])
        self.bias = bias ? try w.tensor("bias", shape: [outFeatures]) : nil
    }

    /// [..., in] → [..., out]
    public func callAsFunction(_ x: Tensor) -> Tensor { weight.withFloat32 { Ops.linear(x, weight: $0, bias: bias) } }
}

/// `nn.LayerNorm` over the last dimension: keys `weight`, `bias` [dim].
public struct LayerNorm: Sendable {
    public let weight: Tensor, bias: Tensor
    public let eps: Float

    public init(_ w: WeightLoader, dim: Int, eps: Float) throws {
        weight = try w.tensor("weight", shape: [dim])
        bias = try w.tensor("bias", shape: [dim])
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { Ops.layerNorm(x, weight: weight, bias: bias, eps: eps) }
}

/// `nn.GroupNorm` over NCHW: keys `weight`, `bias` [channels].
public struct GroupNorm: Sendable {
    public let weight: Tensor, bias: Tensor
    public let groups: Int
    public let eps: Float

    public init(_ w: WeightLoader, groups: Int, channels: Int, eps: Float) throws {
        weight = try w.tensor("weight", shape: [channels])
        bias = try w.tensor("bias", shape: [channels])
        self.groups = groups
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { Ops.groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps) }
}
