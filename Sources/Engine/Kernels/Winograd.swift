// Winograd: 3×3, stride-1, padding-1 convolutions as Winograd F(2×2, 3×3) (Lavin & Gray, 2016) — 16 matrix
// products over 2×2 output tiles instead of one 9-tap product per pixel: 2.25× less arithmetic.
//
//   U = G g Gᵀ (each 3×3 filter → 4×4)       G  = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]
//   V = Bᵀ d B (each 4×4 input patch)         Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]
//   M[ξ] = U[ξ] · V[ξ] for the 16 positions ξ, a [Cout × Cin] · [Cin × tiles] product each
//   Y = Aᵀ M A (each 4×4 → the 2×2 output tile) Aᵀ = [1 1 1 0; 0 1 −1 −1]
//
// Tiles are processed in bands of tile rows so that V and M stay near `bandFloats` floats each.
import Foundation

extension Ops {
    /// Worth it when there are enough tiles for the 16 products to run at speed and enough channels to
    /// amortise the transforms (measured on the VAE and UNet shapes).
    @inline(__always)
    static func winogradPays(inChannels cin: Int, outChannels cout: Int, height h: Int, width w: Int) -> Bool {
        cin >= 16 && cout >= 16 && h * w >= 1024
    }

    /// output [Cout, H, W] (+)= conv3x3(input [Cin, H, W], weight [Cout, Cin, 3, 3], padding 1) + bias.
    static func winogradConv3x3(input: UnsafePointer<Float>, channels cin: Int, height h: Int, width w: Int,
                                weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, outChannels cout: Int,
                                output: UnsafeMutablePointer<Float>, accumulate: Bool, bandFloats: Int = 4 << 20) {
        let th = (h + 1) / 2, tw = (w + 1) / 2
        let bandRows = max(1, min(th, bandFloats / max(1, 16 * max(cin, cout) * tw)))
        ScratchPool.withBuffer(16 * cout * cin) { u in                              // U [16, Cout, Cin]
            ScratchPool.withBuffer(16 * cin * bandRows * tw) { v in                  // V [16, Cin, tiles]
                ScratchPool.withBuffer(16 * cout * bandRows * tw) { m in             // M [16, Cout, tiles]
                    winogradFilters(weight, inChannels: cin, outChannels: cout, into: u)
                    var ty0 = 0
                    while ty0 < th {
                        let rows = min(bandRows, th - ty0)
                        let tiles = rows * tw
                        winogradInput(input, channels: cin, height: h, width: w, tileRow: ty0, tileRows: rows,
                                      tilesWide: tw, v: v)
                        // M[ξ] = U[ξ] · V[ξ]: 16 independent products, one thread each at a time
                        BLAS.singleThreaded {
                            Parallel.forEachChunk(16) { range in
                                for xi in range {
                                    BLAS.gemm(m: cout, n: tiles, k: cin, a: u + xi * cout * cin, b: v + xi * cin * tiles,
                                              c: m + xi * cout * tiles)
                                }
                            }
                        }
                        winogradOutput(m, channels: cout, height: h, width: w, tileRow: ty0, tileRows: rows,
                                       tilesWide: tw, bias: bias, output: output, accumulate: accumulate)
                        ty0 += rows
                    }
                }
            }
        }
    }

    /// U[ξ][co][ci] = (G g Gᵀ)[ξ] for every filter g = weight[co][ci], into u [16, Cout, Cin].
    static func winogradFilters(_ weight: UnsafePointer<Float>, inChannels cin: Int, outChannels cout: Int,
                                into u: UnsafeMutablePointer<Float>) {
        let stride = cout * cin
        Parallel.forEachChunk(cout, grain: 8) { range in
            for co in range {
                for ci in 0..<cin {
                    let g = weight + (co * cin + ci) * 9
                    // Gg [4 × 3]: rows g0, (g0+g1+g2)/2, (g0−g1+g2)/2, g2 (g_r = kernel row r), column by column
                    @inline(__always) func fold(_ a: Float, _ b: Float, _ d: Float) -> (Float, Float, Float, Float) {
                        (a, 0.5 * (a + b + d), 0.5 * (a - b + d), d)
                    }
                    let c0 = fold(g[0], g[3], g[6]), c1 = fold(g[1], g[4], g[7]), c2 = fold(g[2], g[5], g[8])
                    // (Gg) Gᵀ: each row (a, b, d) of Gg → (a, (a+b+d)/2, (a−b+d)/2, d)
                    let o = u + co * cin + ci
                    @inline(__always) func store(row r: Int, _ a: Float, _ b: Float, _ d: Float) {
                        let f = fold(a, b, d)
                        o[(4 * r) * stride] = f.0
                        o[(4 * r + 1) * stride] = f.1
                        o[(4 * r + 2) * stride] = f.2
                        o[(4 * r + 3) * stride] = f.3
                    }
                    store(row: 0, c0.0, c1.0, c2.0)
                    store(row: 1, c0.1, c1.1, c2.1)
                    store(row: 2, c0.2, c1.2, c2.2)
                    store(row: 3, c0.3, c1.3, c2.3)
                }
            }
        }
    }

    /// V[ξ][c][t] = (Bᵀ d B)[ξ] for the 4×4 input patch d of tile t (tile rows tileRow ..< tileRow+tileRows),
    /// patch origin (2·ty − 1, 2·tx − 1), zeros outside the image.
    static func winogradInput(_ x: UnsafePointer<Float>, channels cin: Int, height h: Int, width w: Int,
                              tileRow ty0: Int, tileRows rows: Int, tilesWide tw: Int,
                              v: UnsafeMutablePointer<Float>) {
        let tiles = rows * tw
        let len = 2 * tw + 2                                  // padded row: columns −1 ... 2·tw
        let xiStride = cin * tiles
        Parallel.forEachChunk(cin, grain: 1) { range in
            let d = UnsafeMutablePointer<Float>.allocateAligned(capacity: 4 * len)  // 4 padded input rows
            let t = UnsafeMutablePointer<Float>.allocateAligned(capacity: 4 * len)  // Bᵀ d, row-wise
            defer { d.deallocate(); t.deallocate() }
            for c in range {
                let plane = x + c * h * w
                for tyl in 0..<rows {
                    let ty = ty0 + tyl
                    for r in 0..<4 {
                        let iy = 2 * ty - 1 + r
                        let row = d + r * len
                        row.update(repeating: 0, count: len)
                        if iy >= 0 && iy < h { (row + 1).update(from: plane + iy * w, count: w) }
                    }
                    let (d0, d1, d2, d3) = (d, d + len, d + 2 * len, d + 3 * len)
                    let (t0, t1, t2, t3) = (t, t + len, t + 2 * len, t + 3 * len)
                    for j in 0..<len {
                        t0[j] = d0[j] - d2[j]
                        t1[j] = d1[j] + d2[j]
                        t2[j] = d2[j] - d1[j]
                        t3[j] = d1[j] - d3[j]
                    }
                    // columns of each Bᵀd row: the same combination along x, over patch columns 2tx … 2tx+3 (padded)
                    for i in 0..<4 {
                        let p = t + i * len
                        let base = v + (4 * i) * xiStride + c * tiles + tyl * tw
                        let v0 = base, v1 = base + xiStride, v2 = base + 2 * xiStride, v3 = base + 3 * xiStride
                        for tx in 0..<tw {
                            let (a, b, e, f) = (p[2 * tx], p[2 * tx + 1], p[2 * tx + 2], p[2 * tx + 3])
                            v0[tx] = a - e
                            v1[tx] = b + e
                            v2[tx] = e - b
                            v3[tx] = b - f
                        }
                    }
                }
            }
        }
    }

    /// output[co] (+)= Aᵀ M A per tile + bias, for the tile rows of one band.
    static func winogradOutput(_ m: UnsafePointer<Float>, channels cout: Int, height h: Int, width w: Int,
                               tileRow ty0: Int, tileRows rows: Int, tilesWide tw: Int,
                               bias: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let tiles = rows * tw
        let xiStride = cout * tiles
        Parallel.forEachChunk(cout, grain: 1) { range in
            // s[r][j] rows over tx: s0j = m0j + m1j + m2j, s1j = m1j − m2j − m3j
            let s = UnsafeMutablePointer<Float>.allocateAligned(capacity: 8 * tw)
            defer { s.deallocate() }
            for co in range {
                let bv = bias?[co] ?? 0
                let plane = output + co * h * w
                for tyl in 0..<rows {
                    let base = m + co * tiles + tyl * tw
                    for j in 0..<4 {
                        let m0 = base + j * xiStride, m1 = base + (4 + j) * xiStride
                        let m2 = base + (8 + j) * xiStride, m3 = base + (12 + j) * xiStride
                        let s0 = s + j * tw, s1 = s + (4 + j) * tw
                        for tx in 0..<tw {
                            s0[tx] = m0[tx] + m1[tx] + m2[tx]
                            s1[tx] = m1[tx] - m2[tx] - m3[tx]
                        }
                    }
                    for r in 0..<2 {
                        let oy = 2 * (ty0 + tyl) + r
                        if oy >= h { continue }
                        let sr = s + 4 * r * tw
                        let (a, b, c, d) = (sr, sr + tw, sr + 2 * tw, sr + 3 * tw)
                        let out = plane + oy * w
                        let pairs = w / 2                               // tiles whose both columns are inside
                        if accumulate {
                            for tx in 0..<pairs {
                                out[2 * tx] += a[tx] + b[tx] + c[tx] + bv
                                out[2 * tx + 1] += b[tx] - c[tx] - d[tx] + bv
                            }
                            if pairs < tw { out[2 * pairs] += a[pairs] + b[pairs] + c[pairs] + bv }
                        } else {
                            for tx in 0..<pairs {
                                out[2 * tx] = a[tx] + b[tx] + c[tx] + bv
                                out[2 * tx + 1] = b[tx] - c[tx] - d[tx] + bv
                            }
                            if pairs < tw { out[2 * pairs] = a[pairs] + b[pairs] + c[pairs] + bv }
                        }
                    }
                }
            }
        }
    }
}
