// NaiveOps: the plain-loop twins of `Ops`, written for obviousness, used only to check the fast kernels.
import Foundation

/// Reference implementations: direct loops, double accumulation, no BLAS, no threads.
public enum NaiveOps {
    public static func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, _ p: Conv2DParams) -> Tensor {
        let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let cout = weight.shape[0]
        let (ho, wo) = p.outputSize(h, w)
        let cinG = cin / p.groups, coutG = cout / p.groups
        let y = Tensor(zeros: [n, cout, ho, wo])
        for b in 0..<n {
            for co in 0..<cout {
                let g = co / coutG
                for oy in 0..<ho {
                    for ox in 0..<wo {
                        var s = Double(bias?.data[co] ?? 0)
                        for ci in 0..<cinG {
                            for ky in 0..<p.kernelH {
                                for kx in 0..<p.kernelW {
                                    let iy = oy * p.stride - p.padding + ky, ix = ox * p.stride - p.padding + kx
                                    guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                                    let xv = x.data[((b * cin + g * cinG + ci) * h + iy) * w + ix]
                                    let wv = weight.data[((co * cinG + ci) * p.kernelH + ky) * p.kernelW + kx]
                                    s += Double(xv) * Double(wv)
                                }
                            }
                        }
                        y.data[((b * cout + co) * ho + oy) * wo + ox] = Float(s)
                    }
                }
            }
        }
        return y
    }

    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let inF = weight.shape[1], outF = weight.shape[0], rows = x.count / inF
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outF])
        for r in 0..<rows {
            for o in 0..<outF {
                var s = Double(bias?.data[o] ?? 0)
                for i in 0..<inF { s += Double(x.data[r * inF + i]) * Double(weight.data[o * inF + i]) }
                y.data[r * outF + o] = Float(s)
            }
        }
        return y
    }

    public static func matmul(_ a: Tensor, _ b: Tensor) -> Tensor {
        let (m, k, n) = (a.shape[0], a.shape[1], b.shape[1])
        let y = Tensor(uninitialized: [m, n])
        for i in 0..<m {
            for j in 0..<n {
                var s: Double = 0
                for t in 0..<k { s += Double(a.data[i * k + t]) * Double(b.data[t * n + j]) }
                y.data[i * n + j] = Float(s)
            }
        }
        return y
    }

    public static func bmm(_ a: Tensor, _ b: Tensor) -> Tensor {
        let (batch, m, k, n) = (a.shape[0], a.shape[1], a.shape[2], b.shape[2])
        let y = Tensor(uninitialized: [batch, m, n])
        for z in 0..<batch {
            let am = Tensor(shape: [m, k], values: Array(UnsafeBufferPointer(start: a.data + z * m * k, count: m * k)))
            let bm = Tensor(shape: [k, n], values: Array(UnsafeBufferPointer(start: b.data + z * k * n, count: k * n)))
            let product = matmul(am, bm)
            withExtendedLifetime(product) { (y.data + z * m * n).update(from: product.data, count: m * n) }
        }
        return y
    }

    public static func softmax(_ x: Tensor) -> Tensor {
        let d = x.shape[x.rank - 1]
        let y = Tensor(uninitialized: x.shape)
        for r in 0..<(x.count / d) {
            let row = (0..<d).map { Double(x.data[r * d + $0]) }
            let mx = row.max() ?? 0
            let e = row.map { exp($0 - mx) }
            let s = e.reduce(0, +)
            for j in 0..<d { y.data[r * d + j] = Float(e[j] / s) }
        }
        return y
    }

    public static func silu(_ x: Tensor) -> Tensor { map(x) { $0 / (1 + exp(-$0)) } }
    public static func gelu(_ x: Tensor) -> Tensor { map(x) { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) } }
    public static func quickGelu(_ x: Tensor) -> Tensor { map(x) { $0 / (1 + exp(-1.702 * $0)) } }

    static func map(_ x: Tensor, _ f: (Double) -> Double) -> Tensor {
        let y = Tensor(uninitialized: x.shape)
        for i in 0..<x.count { y.data[i] = Float(f(Double(x.data[i]))) }
        return y
    }

    public static func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c), cg = c / groups
        let y = Tensor(uninitialized: x.shape)
        for b in 0..<n {
            for g in 0..<groups {
                let idx = (0..<(cg * plane)).map { (b * c + g * cg) * plane + $0 }
                let mean = idx.reduce(0.0) { $0 + Double(x.data[$1]) } / Double(idx.count)
                let variance = idx.reduce(0.0) { $0 + pow(Double(x.data[$1]) - mean, 2) } / Double(idx.count)
                for i in idx {
                    let ch = (i / plane) % c
                    let v = (Double(x.data[i]) - mean) / (variance + Double(eps)).squareRoot()
                    y.data[i] = Float(v * Double(weight?.data[ch] ?? 1) + Double(bias?.data[ch] ?? 0))
                }
            }
        }
        return y
    }

    public static func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let d = x.shape[x.rank - 1]
        let y = Tensor(uninitialized: x.shape)
        for r in 0..<(x.count / d) {
            let row = (0..<d).map { Double(x.data[r * d + $0]) }
            let mean = row.reduce(0, +) / Double(d)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(d)
            for j in 0..<d {
                let v = (row[j] - mean) / (variance + Double(eps)).squareRoot()
                y.data[r * d + j] = Float(v * Double(weight?.data[j] ?? 1) + Double(bias?.data[j] ?? 0))
            }
        }
        return y
    }

    public static func layerNorm2d(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c)
        let y = Tensor(uninitialized: x.shape)
        for b in 0..<n {
            for p in 0..<plane {
                let vals = (0..<c).map { Double(x.data[(b * c + $0) * plane + p]) }
                let mean = vals.reduce(0, +) / Double(c)
                let variance = vals.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(c)
                for ch in 0..<c {
                    let v = (vals[ch] - mean) / (variance + Double(eps)).squareRoot()
                    y.data[(b * c + ch) * plane + p] = Float(v * Double(weight?.data[ch] ?? 1) + Double(bias?.data[ch] ?? 0))
                }
            }
        }
        return y
    }

    public static func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(uninitialized: [n, c, 2 * h, 2 * w])
        for p in 0..<(n * c) {
            for oy in 0..<(2 * h) {
                for ox in 0..<(2 * w) { y.data[(p * 2 * h + oy) * 2 * w + ox] = x.data[(p * h + oy / 2) * w + ox / 2] }
            }
        }
        return y
    }

    public static func pixelShuffle(_ x: Tensor, _ r: Int) -> Tensor {
        let (n, cr, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let c = cr / (r * r)
        let y = Tensor(uninitialized: [n, c, h * r, w * r])
        for b in 0..<n {
            for ch in 0..<c {
                for oy in 0..<(h * r) {
                    for ox in 0..<(w * r) {
                        let src = ((b * cr + ch * r * r + (oy % r) * r + ox % r) * h + oy / r) * w + ox / r
                        y.data[((b * c + ch) * h * r + oy) * w * r + ox] = x.data[src]
                    }
                }
            }
        }
        return y
    }

    public static func globalAvgPool(_ x: Tensor) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let plane = x.count / (n * c)
        let y = Tensor(uninitialized: [n, c, 1, 1])
        for p in 0..<(n * c) {
            var s: Double = 0
            for i in 0..<plane { s += Double(x.data[p * plane + i]) }
            y.data[p] = Float(s / Double(plane))
        }
        return y
    }

    public static func concatChannels(_ xs: [Tensor]) -> Tensor {
        let (n, h, w) = (xs[0].shape[0], xs[0].shape[2], xs[0].shape[3])
        let c = xs.reduce(0) { $0 + $1.shape[1] }
        let y = Tensor(uninitialized: [n, c, h, w])
        for b in 0..<n {
            var c0 = 0
            for x in xs {
                let cx = x.shape[1]
                for ch in 0..<cx {
                    for i in 0..<(h * w) { y.data[((b * c) + c0 + ch) * h * w + i] = x.data[(b * cx + ch) * h * w + i] }
                }
                c0 += cx
            }
        }
        return y
    }

    public static func padRightBottom(_ x: Tensor, right: Int, bottom: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(zeros: [n, c, h + bottom, w + right])
        for p in 0..<(n * c) {
            for iy in 0..<h {
                for ix in 0..<w { y.data[(p * (h + bottom) + iy) * (w + right) + ix] = x.data[(p * h + iy) * w + ix] }
            }
        }
        return y
    }

    public static func crop(_ x: Tensor, top: Int, left: Int, height: Int, width: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(uninitialized: [n, c, height, width])
        for p in 0..<(n * c) {
            for iy in 0..<height {
                for ix in 0..<width { y.data[(p * height + iy) * width + ix] = x.data[(p * h + top + iy) * w + left + ix] }
            }
        }
        return y
    }
}
