//! Softmax attention (paper Fig. 4) in the native kernel: per prompt and layer the scores
//! `S = Z Q̃ Zᵀ` of every head, their softmax over each row (before the mask, as the authors'
//! `linear_transformer_unconstrained.py` does), `A = softmax(S) M Z P̃ᵀ`, and the closed-form
//! backward pass of exactly these steps. Unlike linear attention there is no Gram form: the
//! scores of all n + 1 tokens are needed, so a layer costs O(n²·d) per prompt.
//!
//! Per prompt and head (the 1/n is folded into P̃, as for linear attention):
//! `U = Z Q̃`, `S = U Zᵀ`, `Π = softmax_rows(S)`, `V = Z P̃ᵀ`, `Z ← Z + Σ_h Π M V`. Backward,
//! from `Ā` (the gradient of the layer's output): `Π̄ = Ā Vᵀ M` (column n zero),
//! `V̄ = M Πᵀ Ā`, `S̄ = Π ⊙ (Π̄ − rowsum(Π ⊙ Π̄))`, `Ū = S̄ Z`, and
//! `Z̄ = Ā + S̄ᵀ U + Ū Q̃ᵀ + V̄ P̃`, `Q̃̄ += Zᵀ Ū`, `P̃̄ += V̄ᵀ Z`. The last layer computes the
//! query's row only. Sums run in a fixed order within a lane, as in the rest of the kernel.
use super::{lane, lane_mut, mm_pp, mm_ps, Dims, Embedded, Lane, Real, View, LANES};

/// One thread's working memory for a chunk of [`LANES`] prompts.
#[derive(Debug, Default)]
pub(super) struct Work<T> {
    /// Z_l for every layer, `[L, N, side]` (N = n + 1 tokens).
    zs: Vec<T>,
    /// The softmax of every layer but the last, `[L − 1, H, N, N]`, and of the last layer's
    /// query row, `[H, N]`.
    probs: Vec<T>,
    last: Vec<T>,
    /// The last layer's `u_h = z_n Q̃_h` `[H, side]` and `v_h = Z P̃_h[d, :]ᵀ` `[H, N]`.
    uq: Vec<T>,
    vd: Vec<T>,
    /// `[N, side]` temporaries: U, V and their gradients.
    u: Vec<T>,
    v: Vec<T>,
    ubar: Vec<T>,
    vbar: Vec<T>,
    /// `[N, N]`: Π̄, then S̄.
    pbar: Vec<T>,
    /// Z̄ of the layer's input and output, `[N, side]`; after [`backward`], `zbar` holds
    /// ∂loss/∂Z₀.
    pub(super) zbar: Vec<T>,
    zbar_next: Vec<T>,
}

impl<T: Real> Work<T> {
    pub(super) fn fit(&mut self, dims: &Dims) {
        let (l, h, s, n1) = (dims.layers, dims.heads, dims.side, dims.context + 1);
        let zero = T::default();
        self.zs.resize(l * n1 * s * LANES, zero);
        self.probs.resize((l - 1) * h * n1 * n1 * LANES, zero);
        self.last.resize(h * n1 * LANES, zero);
        self.uq.resize(h * s * LANES, zero);
        self.vd.resize(h * n1 * LANES, zero);
        for t in [
            &mut self.u,
            &mut self.v,
            &mut self.ubar,
            &mut self.vbar,
            &mut self.zbar,
            &mut self.zbar_next,
        ] {
            t.resize(n1 * s * LANES, zero);
        }
        self.pbar.resize(n1 * n1 * LANES, zero);
    }
}

/// Softmax over each of `rows` rows of `cols` lanes, in place: shifted by the row's largest
/// entry, as `torch.softmax` does.
#[inline(always)]
fn softmax_rows<T: Real>(buf: &mut [T], rows: usize, cols: usize) {
    for i in 0..rows {
        let row = &mut buf[i * cols * LANES..(i + 1) * cols * LANES];
        let mut top: Lane<T> = lane(row, 0);
        for j in 1..cols {
            let x = lane(row, j);
            for w in 0..LANES {
                if (x[w] - top[w]).positive() {
                    top[w] = x[w];
                }
            }
        }
        let mut sum: Lane<T> = [T::default(); LANES];
        for j in 0..cols {
            let x = lane_mut(row, j);
            for w in 0..LANES {
                x[w] = (x[w] - top[w]).exp();
                sum[w] += x[w];
            }
        }
        let inv = sum.map(T::recip);
        for j in 0..cols {
            let x = lane_mut(row, j);
            for w in 0..LANES {
                x[w] = x[w] * inv[w];
            }
        }
    }
}

/// The model's read-out `(Z_L)_{n,d}` of a chunk whose tokens are `z0 [N, side]`, keeping in
/// `work` what [`backward`] needs. `s` is the side (a constant where the caller knows it).
#[inline(always)]
pub(super) fn forward<T: Real>(
    dims: &Dims,
    s: usize,
    params: &Embedded<T>,
    z0: &[T],
    work: &mut Work<T>,
) -> Lane<T> {
    let (layers, heads, n) = (dims.layers, dims.heads, dims.context);
    let (n1, m, d) = (n + 1, s * s, s - 1);
    let (plain, trans) = (View::plain(s), View::transposed(s));
    let (pt, qt) = (&params.pt, &params.qt);
    let Work {
        zs,
        probs,
        last,
        uq,
        vd,
        u,
        v,
        ..
    } = work;
    let per = n1 * s * LANES;
    zs[..per].copy_from_slice(&z0[..per]);
    for l in 0..layers - 1 {
        let (z_now, z_rest) = zs[l * per..].split_at_mut(per);
        let z_next = &mut z_rest[..per];
        z_next.copy_from_slice(z_now);
        for h in 0..heads {
            let lh = l * heads + h;
            let (pt_h, qt_h) = (&pt[lh * m..(lh + 1) * m], &qt[lh * m..(lh + 1) * m]);
            let p = &mut probs[lh * n1 * n1 * LANES..(lh + 1) * n1 * n1 * LANES];
            mm_ps(u, z_now, plain, qt_h, plain, (n1, s, s), false); // U = Z Q̃
            mm_pp(p, u, plain, z_now, trans, (n1, s, n1), false); // S = U Zᵀ
            softmax_rows(p, n1, n1);
            mm_ps(v, z_now, plain, pt_h, trans, (n1, s, s), false); // V = Z P̃ᵀ
                                                                    // Z_{l+1} += Π M V: the mask drops column n of Π, so the sum runs over j < n.
            mm_pp(z_next, p, View::plain(n1), v, plain, (n1, n, s), true);
        }
    }
    // The last layer: the query's row only, and of its output only entry d.
    let l = layers - 1;
    let z_l = &zs[l * per..(l + 1) * per];
    let query = &z_l[n * s * LANES..n1 * s * LANES];
    let (row_vec, column) = (View { row: 0, col: 1 }, View { row: 1, col: 0 });
    let mut out: Lane<T> = lane(query, d);
    for h in 0..heads {
        let lh = l * heads + h;
        let uq_h = &mut uq[h * s * LANES..(h + 1) * s * LANES];
        let p = &mut last[h * n1 * LANES..(h + 1) * n1 * LANES];
        let vd_h = &mut vd[h * n1 * LANES..(h + 1) * n1 * LANES];
        mm_ps(uq_h, query, row_vec, &qt[lh * m..], plain, (1, s, s), false);
        mm_pp(p, uq_h, row_vec, z_l, trans, (1, s, n1), false);
        softmax_rows(p, 1, n1);
        let p_row = &pt[lh * m + d * s..lh * m + (d + 1) * s];
        mm_ps(vd_h, z_l, plain, p_row, column, (n1, s, 1), false);
        for j in 0..n {
            let (pj, vj) = (lane(p, j), lane(vd_h, j));
            for w in 0..LANES {
                out[w] = pj[w].mul_add(vj[w], out[w]);
            }
        }
    }
    out
}

/// `pbar ← Π ⊙ (Π̄ − rowsum(Π ⊙ Π̄))` for `rows` rows of `cols`: the softmax's backward pass.
#[inline(always)]
fn softmax_backward<T: Real>(pbar: &mut [T], p: &[T], rows: usize, cols: usize) {
    for i in 0..rows {
        let mut dot: Lane<T> = [T::default(); LANES];
        for j in 0..cols {
            let (x, g) = (lane(p, i * cols + j), lane(pbar, i * cols + j));
            for w in 0..LANES {
                dot[w] = x[w].mul_add(g[w], dot[w]);
            }
        }
        for j in 0..cols {
            let x = lane(p, i * cols + j);
            let g = lane_mut(pbar, i * cols + j);
            for w in 0..LANES {
                g[w] = x[w] * (g[w] - dot[w]);
            }
        }
    }
}

/// The backward pass of the chunk [`forward`] last computed, from `obar` = ∂loss/∂(read-out):
/// adds ∂loss/∂P̃ and ∂loss/∂Q̃ to `gpt` and `gqt` (`[L, H, side, side, LANES]`) and leaves
/// ∂loss/∂Z₀ in `work.zbar`.
#[inline(always)]
pub(super) fn backward<T: Real>(
    dims: &Dims,
    s: usize,
    params: &Embedded<T>,
    obar: &Lane<T>,
    work: &mut Work<T>,
    gpt: &mut [T],
    gqt: &mut [T],
) {
    backward_top(dims, s, params, obar, work, gpt, gqt);
    backward_lower(dims, s, params, work, gpt, gqt);
}

/// The last layer's part of [`backward`]: from ō to Z̄ of the last layer's input, in `zbar`.
#[inline(always)]
fn backward_top<T: Real>(
    dims: &Dims,
    s: usize,
    params: &Embedded<T>,
    obar: &Lane<T>,
    work: &mut Work<T>,
    gpt: &mut [T],
    gqt: &mut [T],
) {
    let (layers, heads, n) = (dims.layers, dims.heads, dims.context);
    let (n1, m, d) = (n + 1, s * s, s - 1);
    let zero = T::default();
    let (plain, trans) = (View::plain(s), View::transposed(s));
    let (row_vec, column) = (View { row: 0, col: 1 }, View { row: 1, col: 0 });
    let (pt, qt) = (&params.pt, &params.qt);
    let Work {
        zs,
        last,
        uq,
        vd,
        ubar,
        vbar,
        pbar,
        zbar,
        ..
    } = work;
    let per = n1 * s * LANES;
    // The last layer: out = z_n[d] + Σ_h Σ_{j<n} π_j v_j.
    let l = layers - 1;
    let z_l = &zs[l * per..(l + 1) * per];
    let query = &z_l[n * s * LANES..n1 * s * LANES];
    zbar.fill(zero);
    *lane_mut(zbar, n * s + d) = *obar;
    for h in 0..heads {
        let lh = l * heads + h;
        let uq_h = &uq[h * s * LANES..(h + 1) * s * LANES];
        let p = &last[h * n1 * LANES..(h + 1) * n1 * LANES];
        let vd_h = &vd[h * n1 * LANES..(h + 1) * n1 * LANES];
        // π̄_j = ō v_j and v̄_j = ō π_j for j < n (the mask zeroes j = n); pbar row 0 holds
        // π̄ then s̄, vbar's first column v̄.
        for j in 0..n1 {
            let (pj, vj) = (lane(p, j), lane(vd_h, j));
            let (gp, gv) = (lane_mut(pbar, j), &mut [zero; LANES]);
            for w in 0..LANES {
                (gp[w], gv[w]) = if j < n {
                    (obar[w] * vj[w], obar[w] * pj[w])
                } else {
                    (zero, zero)
                };
            }
            *lane_mut(vbar, j) = *gv;
        }
        softmax_backward(pbar, p, 1, n1);
        let sbar = &pbar[..n1 * LANES];
        // ū = s̄ Z; Z̄ += s̄ᵀ u; Q̃̄ += z_nᵀ ū; z̄_n += ū Q̃ᵀ.
        let ubar_q = &mut ubar[..s * LANES];
        mm_pp(ubar_q, sbar, row_vec, z_l, plain, (1, n1, s), false);
        mm_pp(zbar, sbar, column, uq_h, row_vec, (n1, 1, s), true);
        let gq = &mut gqt[lh * m * LANES..(lh + 1) * m * LANES];
        mm_pp(gq, query, column, ubar_q, row_vec, (s, 1, s), true);
        let zbar_n = &mut zbar[n * s * LANES..n1 * s * LANES];
        mm_ps(
            zbar_n,
            ubar_q,
            row_vec,
            &qt[lh * m..],
            trans,
            (1, s, s),
            true,
        );
        // v_j = z_j · P̃[d, :]: P̃̄[d, :] += v̄ᵀ Z; Z̄ += v̄ P̃[d, :].
        let vbar_d = &vbar[..n1 * LANES];
        let gp_row = &mut gpt[(lh * m + d * s) * LANES..(lh * m + (d + 1) * s) * LANES];
        mm_pp(gp_row, vbar_d, row_vec, z_l, plain, (1, n1, s), true);
        let p_row = &pt[lh * m + d * s..lh * m + (d + 1) * s];
        mm_ps(zbar, vbar_d, column, p_row, row_vec, (n1, 1, s), true);
    }
}

/// The layers before the last, from the top, in [`backward`]: `zbar` holds Ā, the gradient
/// of Z_{l+1}, and ends as ∂loss/∂Z₀.
#[inline(always)]
fn backward_lower<T: Real>(
    dims: &Dims,
    s: usize,
    params: &Embedded<T>,
    work: &mut Work<T>,
    gpt: &mut [T],
    gqt: &mut [T],
) {
    let (layers, heads, n) = (dims.layers, dims.heads, dims.context);
    let (n1, m) = (n + 1, s * s);
    let zero = T::default();
    let (plain, trans) = (View::plain(s), View::transposed(s));
    let (pt, qt) = (&params.pt, &params.qt);
    let Work {
        zs,
        probs,
        u,
        v,
        ubar,
        vbar,
        pbar,
        zbar,
        zbar_next,
        ..
    } = work;
    let per = n1 * s * LANES;
    for l in (0..layers - 1).rev() {
        let z_l = &zs[l * per..(l + 1) * per];
        zbar_next.copy_from_slice(zbar);
        for h in 0..heads {
            let lh = l * heads + h;
            let (pt_h, qt_h) = (&pt[lh * m..(lh + 1) * m], &qt[lh * m..(lh + 1) * m]);
            let p = &probs[lh * n1 * n1 * LANES..(lh + 1) * n1 * n1 * LANES];
            let pv = View::plain(n1);
            mm_ps(u, z_l, plain, qt_h, plain, (n1, s, s), false); // U = Z Q̃
            mm_ps(v, z_l, plain, pt_h, trans, (n1, s, s), false); // V = Z P̃ᵀ
                                                                  // Π̄ = Ā Vᵀ, column n zero (the mask); V̄ = Πᵀ Ā on rows j < n.
            mm_pp(pbar, zbar, plain, v, trans, (n1, s, n1), false);
            for i in 0..n1 {
                *lane_mut(pbar, i * n1 + n) = [zero; LANES];
            }
            mm_pp(
                vbar,
                p,
                View::transposed(n1),
                zbar,
                plain,
                (n, n1, s),
                false,
            );
            softmax_backward(pbar, p, n1, n1);
            // Ū = S̄ Z; Z̄ += S̄ᵀ U + Ū Q̃ᵀ + V̄ P̃; Q̃̄ += Zᵀ Ū; P̃̄ += V̄ᵀ Z.
            mm_pp(ubar, pbar, pv, z_l, plain, (n1, n1, s), false);
            mm_pp(
                zbar_next,
                pbar,
                View::transposed(n1),
                u,
                plain,
                (n1, n1, s),
                true,
            );
            mm_ps(zbar_next, ubar, plain, qt_h, trans, (n1, s, s), true);
            mm_ps(zbar_next, vbar, plain, pt_h, plain, (n, s, s), true);
            let gq = &mut gqt[lh * m * LANES..(lh + 1) * m * LANES];
            mm_pp(gq, z_l, trans, ubar, plain, (s, n1, s), true);
            let gp = &mut gpt[lh * m * LANES..(lh + 1) * m * LANES];
            mm_pp(gp, vbar, trans, z_l, plain, (s, n, s), true);
        }
        std::mem::swap(zbar, zbar_next);
    }
}
