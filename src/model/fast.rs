//! The fast forward pass: linear attention by associativity, K members at once.
use super::Arch;
use crate::config::{Attention, Parametrization};
use crate::data::Batch;
use tch::{Device, Kind, Tensor};

/// The same model as [`super::loss`], computed with far fewer operations, for K members at once
/// (`train.mode: fast` and [`crate::ensemble`]).
///
/// Why it exists: the faithful forward materialises, per layer and head, the (n+1)×(n+1)
/// attention scores `S = Z Q̃ Zᵀ` of every prompt, because that is what the authors' einsums
/// do. For linear attention, associativity gives `Attn = Z Q̃ (Zᵀ M Z) P̃ᵀ`, so a layer is
/// `Z ← Z R` with `R = I + Σ_h Q̃_h G P̃_hᵀ / n` and `G = Zᵀ M Z = Σ_{i<n} z_i z_iᵀ`, a
/// (d+1)×(d+1) matrix. Then `G ← Rᵀ G R` and the query row `q ← q R`: after one pass over
/// the tokens to form G, every layer works on (d+1)×(d+1) matrices only, and the last layer
/// only on the one entry that is read out. Another contraction order rounds differently, so
/// this agrees with [`loss`] to about 1e-6 relative (tests/fast_mode.rs), not bit for bit;
/// the faithful forward stays the reference.
///
/// Softmax attention needs the scores themselves; its layers are computed as the faithful
/// ones (batched over members), except that the last layer computes only the query's row.
///
/// Shapes: every parameter has a leading member axis K (`allparam [K, L, H, 2, k, k]`, MLP
/// weights `[K, …]`). `batch` holds U ≥ 1 data streams (`z [U, B, n+1, d+1]`,
/// `y_query [U, B]`); member i reads stream `member_rows[i]` (`None`: member i reads stream
/// i). Members that share a stream (same seed, other optimizer) thus share the work on the
/// tokens. Returns the K losses `[K]`.
pub fn fast_losses(
    arch: &Arch,
    params: &[Tensor],
    batch: &Batch,
    member_rows: Option<&Tensor>,
) -> Tensor {
    let (n, d1) = (arch.context, arch.dim + 1);
    let (members, device) = (params[0].size()[0], params[0].device());
    let prompts = batch.z.size()[1];
    // Member i's rows of a per-stream tensor, for the members [start, start + len).
    let pick = |t: &Tensor, start: i64, len: i64| match member_rows {
        Some(rows) => t.index_select(0, &rows.narrow(0, start, len)),
        None => t.narrow(0, start, len),
    };
    let emb = embedded_all(arch, &params[0]);
    let axis = PromptAxis::for_arch(arch);
    // Linear attention without the MLP reads the context only through G: once per stream.
    let moments = (arch.attention == Attention::Linear && arch.mlp_hidden == 0).then(|| {
        let streams = batch.z.size()[0];
        let gram = in_chunks(streams, n * d1 * d1 * prompts, device, |s, len| {
            gram_of(arch, &batch.z.narrow(0, s, len), axis)
        });
        (gram, query_of(arch, &batch.z, axis))
    });
    let prediction = in_chunks(members, d1 * d1 * d1 * prompts, device, |start, len| {
        let emb = emb.narrow(1, start, len);
        if let Some((gram, query)) = &moments {
            return linear_read_out(
                arch,
                &emb,
                pick(gram, start, len),
                pick(query, start, len),
                axis,
            );
        }
        let mut z = pick(&batch.z, start, len);
        if arch.mlp_hidden > 0 {
            let mlp: Vec<Tensor> = params[1..5]
                .iter()
                .map(|p| p.narrow(0, start, len))
                .collect();
            z = mlp_tokens_batched(arch, &mlp, &z);
        }
        match arch.attention {
            Attention::Linear => linear_read_out(
                arch,
                &emb,
                gram_of(arch, &z, axis),
                query_of(arch, &z, axis),
                axis,
            ),
            Attention::Softmax => softmax_read_out(arch, &emb, &z),
        }
    });
    let y_query = pick(&batch.y_query, 0, members);
    (prediction + y_query)
        .square()
        .mean_dim(-1, false, None::<Kind>)
}

/// Floats that one chunk of the fast forward may stream through memory on a CPU: about the
/// size of a core's L2 cache plus a share of L3. On the paper's sizes, 12 members in chunks of
/// 3 took half the time of one chunk of 12 (libtorch's elementwise kernels are memory-bound
/// there); one chunk of 1 was slower again (more, smaller operations).
const CPU_CHUNK_FLOATS: i64 = 700_000;

/// `f(start, len)` over chunks of `count` items (members or streams) concatenated along the
/// first axis. On a CPU a chunk holds as many items as keep `per_item` floats each within
/// [`CPU_CHUNK_FLOATS`]; a GPU takes all items at once (fewer, larger kernels).
fn in_chunks(
    count: i64,
    per_item: i64,
    device: Device,
    mut f: impl FnMut(i64, i64) -> Tensor,
) -> Tensor {
    let chunk = match device {
        Device::Cpu => (CPU_CHUNK_FLOATS / per_item.max(1)).clamp(1, count.max(1)),
        _ => count.max(1),
    };
    let parts: Vec<Tensor> = (0..count)
        .step_by(chunk as usize)
        .map(|s| f(s, chunk.min(count - s)))
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        Tensor::cat(&parts, 0)
    }
}

/// [`fast_losses`] for one member, with the shapes of [`loss`]: the parameters in
/// `state_dict` shapes and one batch `z [B, n+1, d+1]`. Returns the scalar loss.
pub fn fast_loss(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    let params: Vec<Tensor> = params.iter().map(|p| p.unsqueeze(0)).collect();
    let batch = Batch {
        z: batch.z.unsqueeze(0),
        y_query: batch.y_query.unsqueeze(0),
    };
    fast_losses(arch, &params, &batch, None).squeeze_dim(0)
}

/// Where the fast linear forward keeps the prompt axis of its per-prompt state (G and q).
///
/// Why it matters: per layer, each prompt's G is multiplied by its own small matrix R twice.
/// libtorch's CPU `bmm` computes products of matrices this small (d+1 = 6 for the paper) with a
/// scalar loop, one prompt at a time; most of a step went there. With the prompts on the last,
/// contiguous axis a per-prompt product is one broadcast multiply and one sum, vectorised
/// across prompts ([`per_prompt_matmul`]), and a shared matrix (P̃, Q̃) multiplies all prompts'
/// G in one large GEMM. For large matrices (L=8, d=20) `bmm`'s GEMMs win again; they need the
/// prompts first, with every matrix contiguous (a strided one makes `bmm` copy per prompt,
/// which with two threads cost 10× more than the product).
#[derive(Debug, Clone, Copy, PartialEq)]
enum PromptAxis {
    /// `G [K, B, d+1, d+1]`, `q [K, B, d+1]`.
    First,
    /// `G [K, d+1, d+1, B]`, `q [K, d+1, B]`.
    Last,
}

/// Largest r·s·c for which a per-prompt product is computed elementwise, prompt-last.
/// Measured with libtorch 2.11 on one CPU thread, B = 1000, square matrices of side s:
/// elementwise is 5× faster than `bmm` at s = 6, 2× at s = 11, and 2× slower at s = 16.
const ELEMENTWISE_MAX_WORK: i64 = 12 * 12 * 12;

impl PromptAxis {
    fn for_arch(arch: &Arch) -> PromptAxis {
        if (arch.dim + 1).pow(3) <= ELEMENTWISE_MAX_WORK {
            PromptAxis::Last
        } else {
            PromptAxis::First
        }
    }
}

/// G = Σ_{i<n} z_i z_iᵀ of tokens `z [K, B, n+1, d+1]`, laid out along `axis`.
fn gram_of(arch: &Arch, z: &Tensor, axis: PromptAxis) -> Tensor {
    let (n, d1) = (arch.context, arch.dim + 1);
    if axis == PromptAxis::Last && n * d1 * d1 <= ELEMENTWISE_MAX_WORK {
        let context = z.narrow(2, 0, n).permute([0, 2, 3, 1]).contiguous(); // [K, n, d+1, B]
        return per_prompt_matmul(&context.transpose(1, 2), &context);
    }
    let context = z.narrow(2, 0, n);
    let gram = context.transpose(-1, -2).matmul(&context);
    match axis {
        PromptAxis::First => gram,
        PromptAxis::Last => gram.permute([0, 2, 3, 1]).contiguous(),
    }
}

/// The query row z_n of tokens `z [K, B, n+1, d+1]`, laid out along `axis`.
fn query_of(arch: &Arch, z: &Tensor, axis: PromptAxis) -> Tensor {
    let query = z.select(2, arch.context);
    match axis {
        PromptAxis::First => query,
        PromptAxis::Last => query.transpose(1, 2),
    }
}

/// One small matrix product per prompt, prompt-last: `a [K, r, s, B]`, `b [K, s, c, B]` →
/// `[K, r, c, B]`, as one broadcast multiply and one sum (see [`PromptAxis`]).
fn per_prompt_matmul(a: &Tensor, b: &Tensor) -> Tensor {
    (a.unsqueeze(3) * b.unsqueeze(1)).sum_dim_intlist([2i64].as_slice(), false, None::<Kind>)
}

/// P̃ and Q̃ of every layer, head and member at once, `[L, K, H, 2, d+1, d+1]`, with the 1/n of
/// each layer folded into P̃ (for softmax the scale must stay outside the scores, and for
/// linear attention either factor will do).
fn embedded_all(arch: &Arch, allparam: &Tensor) -> Tensor {
    let (d, n) = (arch.dim, arch.context);
    let (kind, device) = (allparam.kind(), allparam.device());
    let scale = Tensor::ones([2, 1, 1], (kind, device));
    let _ = scale.get(0).fill_(1.0 / n as f64);
    let emb = match arch.parametrization {
        Parametrization::Full => allparam * &scale,
        Parametrization::Restricted => {
            // P~ = [[P,0],[0,1]], Q~ = [[Q,0],[0,0]] for all layers and heads in two ops.
            let corner = Tensor::zeros([2, d + 1, d + 1], (kind, device));
            let _ = corner.get(0).get(d).get(d).fill_(1.0);
            (allparam.constant_pad_nd([0, 1, 0, 1]) + corner) * &scale
        }
    };
    emb.transpose(0, 1)
}

/// Linear attention on (G, q) laid out along `axis`; returns the read-out entry `[K, B]`.
fn linear_read_out(
    arch: &Arch,
    emb: &Tensor,
    gram: Tensor,
    query: Tensor,
    axis: PromptAxis,
) -> Tensor {
    match axis {
        PromptAxis::Last => linear_read_out_prompt_last(arch, emb, gram, query),
        PromptAxis::First => linear_read_out_prompt_first(arch, emb, gram, query),
    }
}

/// Prompt-last: `gram [K, d+1, d+1, B]`, `query [K, d+1, B]`.
fn linear_read_out_prompt_last(
    arch: &Arch,
    emb: &Tensor,
    mut gram: Tensor,
    mut query: Tensor,
) -> Tensor {
    let (d1, heads) = (arch.dim + 1, arch.heads);
    let (k, b) = (gram.size()[0], gram.size()[3]);
    let eye = Tensor::eye(d1, (gram.kind(), gram.device())).unsqueeze(-1);
    for l in 0..arch.layers - 1 {
        let e = emb.get(l);
        let (p, q) = (e.select(2, 0), e.select(2, 1)); // [K, H, d+1, d+1]
                                                       // V_h = Q̃_h G for all heads and prompts in one GEMM per member (rows (h, i)) …
        let v = q
            .reshape([k, heads * d1, d1])
            .bmm(&gram.reshape([k, d1, d1 * b]));
        // … then Tᵀ = Σ_h P̃_h V_hᵀ in another, contracting (h, m): Tᵀ[l, i] = T[i, l].
        let v_t = v
            .view([k, heads, d1, d1, b])
            .permute([0, 1, 3, 2, 4])
            .reshape([k, heads * d1, d1 * b]);
        let p_cat = p.permute([0, 2, 1, 3]).reshape([k, d1, heads * d1]);
        let r_t = p_cat.bmm(&v_t).view([k, d1, d1, b]) + &eye; // Rᵀ, R = I + T
        gram = per_prompt_matmul(&r_t, &per_prompt_matmul(&gram, &r_t.transpose(1, 2)));
        query = (&r_t * query.unsqueeze(1)).sum_dim_intlist([2i64].as_slice(), false, None::<Kind>);
    }
    // Last layer, read-out entry only: q_d + Σ_h (Q̃_hᵀ q) · (G p_h), p_h = row d of P̃_h.
    let e = emb.get(arch.layers - 1);
    let (p, q) = (e.select(2, 0), e.select(2, 1));
    let r = q
        .transpose(2, 3)
        .reshape([k, heads * d1, d1])
        .bmm(&query)
        .view([k, heads, d1, b]);
    let g_t = gram.transpose(1, 2).reshape([k, d1, d1 * b]);
    let v = p.select(2, arch.dim).bmm(&g_t).view([k, heads, d1, b]);
    query.select(1, arch.dim) + (r * v).sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>)
}

/// Prompt-first: `gram [K, B, d+1, d+1]`, `query [K, B, d+1]`; every per-prompt matrix stays
/// contiguous (or a plain transpose) so that `bmm` hands it to the GEMM as it is.
fn linear_read_out_prompt_first(
    arch: &Arch,
    emb: &Tensor,
    mut gram: Tensor,
    mut query: Tensor,
) -> Tensor {
    let (d1, heads) = (arch.dim + 1, arch.heads);
    let (k, b) = (gram.size()[0], gram.size()[1]);
    let eye = Tensor::eye(d1, (gram.kind(), gram.device()));
    for l in 0..arch.layers - 1 {
        let e = emb.get(l);
        let (p, q) = (e.select(2, 0), e.select(2, 1)); // [K, H, d+1, d+1]
                                                       // U_h = G P̃_hᵀ for all prompts in one GEMM (G's rows stacked; columns (h, l)), then
                                                       // T = Σ_h Q̃_h U_h, contracting (h, j).
        let p_cat_t = p.permute([0, 3, 1, 2]).reshape([k, d1, heads * d1]);
        let q_cat = q.permute([0, 2, 1, 3]).reshape([k, d1, heads * d1]);
        let u = gram.reshape([k, b * d1, d1]).bmm(&p_cat_t);
        let u = u
            .view([k, b, d1, heads, d1])
            .permute([0, 1, 3, 2, 4])
            .reshape([k, b, heads * d1, d1]);
        let r = q_cat.unsqueeze(1).matmul(&u) + &eye; // R = I + T
        gram = r.transpose(-1, -2).matmul(&gram.matmul(&r));
        query = query.unsqueeze(-2).matmul(&r).squeeze_dim(-2);
    }
    // Last layer, read-out entry only: q_d + Σ_h (q Q̃_h) · (G p_h), p_h = row d of P̃_h.
    let e = emb.get(arch.layers - 1);
    let (p, q) = (e.select(2, 0), e.select(2, 1));
    let q_cat = q.permute([0, 2, 1, 3]).reshape([k, d1, heads * d1]);
    let p_d = p.select(2, arch.dim).transpose(1, 2); // [K, d+1 (m), H]
    let v = gram
        .reshape([k, b * d1, d1])
        .bmm(&p_d)
        .view([k, b, d1, heads]);
    let r = query.bmm(&q_cat).view([k, b, heads, d1]);
    query.select(-1, arch.dim)
        + (r * v.transpose(-1, -2)).sum_dim_intlist([-1i64, -2].as_slice(), false, None::<Kind>)
}

/// Softmax attention on the tokens `z [K, B, n+1, d+1]`, the query's row only in the last layer.
#[allow(clippy::assign_op_pattern)] // see forward
fn softmax_read_out(arch: &Arch, emb: &Tensor, z: &Tensor) -> Tensor {
    let (n, d) = (arch.context, arch.dim);
    let (k, b, n1, d1) = (z.size()[0], z.size()[1], n + 1, d + 1);
    // Column n of the scores is dropped after the softmax: M.
    let keep = Tensor::ones([n1], (z.kind(), z.device()));
    let _ = keep.get(n).fill_(0.0);
    let mut z = z.shallow_clone();
    for l in 0..arch.layers - 1 {
        let e = emb.get(l);
        let rows = z.reshape([k, b * n1, d1]);
        let mut acc: Option<Tensor> = None;
        for h in 0..arch.heads {
            let (p, q) = (e.select(1, h).select(1, 0), e.select(1, h).select(1, 1));
            let s = rows
                .bmm(&q)
                .view([k, b, n1, d1])
                .matmul(&z.transpose(-1, -2));
            let s = s.softmax(-1, None::<Kind>) * &keep;
            let values = rows.bmm(&p.transpose(1, 2)).view([k, b, n1, d1]);
            let a = s.matmul(&values);
            acc = Some(match acc {
                None => a,
                Some(acc) => acc + a,
            });
        }
        z = z + acc.expect("heads >= 1");
    }
    let e = emb.get(arch.layers - 1);
    let query = z.select(2, n); // [K, B, d+1]
    let rows = z.reshape([k, b * n1, d1]);
    let mut out = query.select(-1, d);
    for h in 0..arch.heads {
        let (p, q) = (e.select(1, h).select(1, 0), e.select(1, h).select(1, 1));
        // scores of the query: (q Q̃) Zᵀ; values: only their entry d, Z P̃[d, :]ᵀ.
        let s = z.matmul(&query.bmm(&q).unsqueeze(-1)).squeeze_dim(-1); // [K, B, n+1]
        let s = s.softmax(-1, None::<Kind>) * &keep;
        let value_d = rows.bmm(&p.select(1, d).unsqueeze(-1)).view([k, b, n1]);
        out = out + (s * value_d).sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>);
    }
    out
}

/// The MLP variant's covariate map φ for K members: `Z[…, :d] ← φ_k(Z[…, :d])`, with
/// `params = [w0 [K,h,d], b0 [K,h], w2 [K,d,h], b2 [K,d]]`.
fn mlp_tokens_batched(arch: &Arch, params: &[Tensor], z: &Tensor) -> Tensor {
    let size = z.size();
    let (k, b, n1, d) = (size[0], size[1], size[2], arch.dim);
    let x = z.narrow(-1, 0, d).reshape([k, b * n1, d]);
    let hidden = params[1]
        .unsqueeze(1)
        .baddbmm(&x, &params[0].transpose(1, 2), 1.0, 1.0)
        .relu();
    let phi = params[3]
        .unsqueeze(1)
        .baddbmm(&hidden, &params[2].transpose(1, 2), 1.0, 1.0);
    Tensor::cat(&[phi.view([k, b, n1, d]), z.narrow(-1, d, 1)], -1)
}
