// Conv2d: a convolution layer with its weights (PyTorch `nn.Conv2d`), loaded strictly by key.

/// `nn.Conv2d` over NCHW tensors. Keys: `weight` [Cout, Cin/groups, kh, kw] and, if present, `bias` [Cout].
public struct Conv2d: Sendable {
    public let weight: Weight
    public let bias: Tensor?
    public let params: Conv2DParams
    public let inChannels: Int, outChannels: Int

    public init(_ w: WeightLoader, inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, groups: Int = 1, bias: Bool = true) throws {
        self.params = Conv2DParams(kernel: kernel, stride: stride, padding: padding, groups: groups)
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.weight = try w.weight("weight", shape: [outChannels, inChannels / groups, kernel, kernel])
        self.bias = bias ? try w.tensor("bias", shape: [outChannels]) : nil
    }

    /// [N, Cin, H, W] → [N, Cout, Ho, Wo]
    public func callAsFunction(_ x: Tensor) -> Tensor {
        weight.withFloat32 { Ops.conv2d(x, weight: $0, bias: bias, params) }
    }
}
