// ColorFix: AdaIN colour correction — give the result each channel's mean and standard deviation of the reference.

extension Ops {
    /// out[c] = (x[c] − μ_x[c]) / σ_x[c] · σ_ref[c] + μ_ref[c] for every channel of NCHW tensors of equal N and C
    /// (spatial sizes may differ), with σ = √(unbiased variance + 1e-5) as the usual `calc_mean_std` computes it.
    public static func adainColorFix(_ x: Tensor, reference: Tensor) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c), refPlane = reference.count / (n * c)
        let y = Tensor(uninitialized: x.shape)
        func stats(_ p: UnsafePointer<Float>, _ len: Int) -> (Double, Double) {
            var mean: Double = 0
            for i in 0..<len { mean += Double(p[i]) }
            mean /= Double(len)
            var variance: Double = 0
            for i in 0..<len { let d = Double(p[i]) - mean; variance += d * d }
            return (mean, (variance / Double(max(len - 1, 1)) + 1e-5).squareRoot())
        }
        for p in 0..<(n * c) {
            let (mx, sx) = stats(x.data + p * plane, plane)
            let (mr, sr) = stats(reference.data + p * refPlane, refPlane)
            let scale = Float(sr / sx), shift = Float(mr - mx * sr / sx)
            let src = x.data + p * plane, dst = y.data + p * plane
            for i in 0..<plane { dst[i] = src[i] * scale + shift }
        }
        return y
    }
}
