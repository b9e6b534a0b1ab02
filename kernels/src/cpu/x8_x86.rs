//! x86-64 kernels for x8-packed weights ([`super::x8`]): AVX2 + FMA + F16C, and the same with
//! AVX-512 VNNI's `vpdpbusd` (256-bit, AVX-512VL) for the 8-bit multiply-adds. One macro writes
//! both so that the helpers inline with the caller's features.
//!
//! Lane `r` of every vector is weight row `r` of the group: an activation's four bytes broadcast
//! to all lanes meet four values of each of the eight rows.

macro_rules! x8_kernels {
    ($module:ident, $features:literal, $vnni:literal) => {
        pub mod $module {
            use core::arch::x86_64::*;

            use super::super::x8::{ActRow, GROUP};

            /// Each row's eight group outputs, one per lane of its accumulator.
            #[inline]
            #[target_feature(enable = $features)]
            fn lanes<const R: usize>(acc: &[__m256; R]) -> [[f32; GROUP]; R] {
                let mut out = [[0.0f32; GROUP]; R];
                for (o, a) in out.iter_mut().zip(acc) {
                    // SAFETY: `o` holds 8 floats.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
                }
                out
            }

            /// The four activation bytes at `p` in every 32-bit lane.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn bcast(p: *const u8) -> __m256i {
                // SAFETY: the caller points at 4 readable bytes.
                _mm256_set1_epi32(unsafe { core::ptr::read_unaligned(p as *const i32) })
            }

            /// `acc` + Σ of each lane's four u8 × i8 products (no saturation: callers keep
            /// `u` ≤ 127, or use VNNI, which never saturates).
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(unused_unsafe)]
            fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
                if $vnni {
                    // SAFETY: only compiled into the module with avx512vnni + avx512vl.
                    unsafe { _mm256_dpbusd_epi32(acc, u, s) }
                } else {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
                    _mm256_add_epi32(acc, p)
                }
            }

            /// The 8 vectors of unsigned nibbles of a packed Q4 block's quants at `p`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles(p: *const u8) -> [__m256i; 8] {
                let m4 = _mm256_set1_epi8(0x0F);
                let mut q = [_mm256_setzero_si256(); 8];
                for v in 0..4 {
                    // SAFETY: the caller points at 128 readable bytes.
                    let c = unsafe { _mm256_loadu_si256(p.add(32 * v) as *const __m256i) };
                    q[v] = _mm256_and_si256(c, m4);
                    q[v + 4] = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
                }
                q
            }

            /// Q4_0 weights (`nb` packed blocks of one group) against `R` Q8_0 activation rows.
            ///
            /// # Safety
            /// `w` holds `nb` packed Q4_0 blocks, every row of `a` `nb` Q8_0 blocks and their
            /// scalars; the CPU has the module's features.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_0<const R: usize>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                // SAFETY: the caller's guarantees.
                unsafe { q4_or_5::<R, false>(nb, w, a) }
            }

            /// Q5_0 weights against `R` Q8_0 activation rows.
            ///
            /// # Safety
            /// As [`q4_0`], with `nb` packed Q5_0 blocks.
            #[target_feature(enable = $features)]
            pub unsafe fn q5_0<const R: usize>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                // SAFETY: the caller's guarantees.
                unsafe { q4_or_5::<R, true>(nb, w, a) }
            }

            /// Q4_0 (`FIVE = false`) or Q5_0: unsigned 4- or 5-bit values, the offset (8 or 16
            /// times each activation block's sum, in `ActRow::c`) taken out of the integer sum.
            ///
            /// # Safety
            /// As [`q4_0`] / [`q5_0`].
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q4_or_5<const R: usize, const FIVE: bool>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                let (bb, qat) = if FIVE { (176, 48) } else { (144, 16) };
                debug_assert!(w.len() >= bb * nb);
                debug_assert!(a.iter().all(|a| a.q.len() >= 34 * nb && a.c.len() >= nb));
                let mut acc = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY: block b of the group and of every activation row is in bounds.
                    unsafe {
                        let blk = w.as_ptr().add(bb * b);
                        let dx = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                        let mut q = nibbles(blk.add(qat));
                        if FIVE {
                            let bits = _mm256_loadu_si256(blk.add(16) as *const __m256i);
                            for (v, q) in q.iter_mut().enumerate() {
                                // Bit v of each byte to bit 4.
                                let b = _mm256_and_si256(bits, _mm256_set1_epi8(1 << v));
                                let b = match v {
                                    0 => _mm256_slli_epi16(b, 4),
                                    1 => _mm256_slli_epi16(b, 3),
                                    2 => _mm256_slli_epi16(b, 2),
                                    3 => _mm256_slli_epi16(b, 1),
                                    4 => b,
                                    5 => _mm256_srli_epi16(b, 1),
                                    6 => _mm256_srli_epi16(b, 2),
                                    _ => _mm256_srli_epi16(b, 3),
                                };
                                *q = _mm256_or_si256(*q, b);
                            }
                        }
                        for r in 0..R {
                            let y = a[r].q.as_ptr().add(34 * b + 2);
                            let isum = if $vnni {
                                let (mut s0, mut s1) =
                                    (_mm256_setzero_si256(), _mm256_setzero_si256());
                                for l in 0..4 {
                                    s0 = dp(s0, q[l], bcast(y.add(4 * l)));
                                    s1 = dp(s1, q[l + 4], bcast(y.add(16 + 4 * l)));
                                }
                                _mm256_add_epi32(s0, s1)
                            } else {
                                // Pair sums of 5-bit values × bytes stay within ±7874: four of
                                // them add up in 16 bits.
                                let (mut t0, mut t1) =
                                    (_mm256_setzero_si256(), _mm256_setzero_si256());
                                for l in 0..4 {
                                    t0 = _mm256_add_epi16(
                                        t0,
                                        _mm256_maddubs_epi16(q[l], bcast(y.add(4 * l))),
                                    );
                                    t1 = _mm256_add_epi16(
                                        t1,
                                        _mm256_maddubs_epi16(q[l + 4], bcast(y.add(16 + 4 * l))),
                                    );
                                }
                                let one = _mm256_set1_epi16(1);
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(t0, one),
                                    _mm256_madd_epi16(t1, one),
                                )
                            };
                            // Σ (q - 8)·y = Σ q·y - 8·Σ y (Q5_0: 16).
                            let isum =
                                _mm256_sub_epi32(isum, _mm256_set1_epi32(*a[r].c.get_unchecked(b)));
                            let d = _mm256_mul_ps(dx, _mm256_set1_ps(*a[r].d.get_unchecked(b)));
                            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[r]);
                        }
                    }
                }
                lanes(&acc)
            }

            /// Q8_0 weights against `R` Q8_0 activation rows.
            ///
            /// # Safety
            /// As [`q4_0`], with `nb` packed Q8_0 blocks.
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0<const R: usize>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                debug_assert!(w.len() >= 272 * nb);
                debug_assert!(a.iter().all(|a| a.q.len() >= 34 * nb && a.c.len() >= nb));
                let mut acc = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY: block b of the group and of every activation row is in bounds.
                    unsafe {
                        let blk = w.as_ptr().add(272 * b);
                        let dx = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                        let qp = blk.add(16);
                        let mut u = [_mm256_setzero_si256(); 8];
                        for l in 0..8 {
                            let q = _mm256_loadu_si256(qp.add(32 * l) as *const __m256i);
                            // VNNI: q + 128 as unsigned bytes (the offset is taken out below);
                            // AVX2: |q|, the sign moved onto the activations.
                            u[l] = if $vnni {
                                _mm256_xor_si256(q, _mm256_set1_epi8(0x80u8 as i8))
                            } else {
                                _mm256_sign_epi8(q, q)
                            };
                        }
                        for r in 0..R {
                            let y = a[r].q.as_ptr().add(34 * b + 2);
                            let isum = if $vnni {
                                let (mut s0, mut s1) =
                                    (_mm256_setzero_si256(), _mm256_setzero_si256());
                                for l in 0..4 {
                                    s0 = dp(s0, u[l], bcast(y.add(4 * l)));
                                    s1 = dp(s1, u[l + 4], bcast(y.add(16 + 4 * l)));
                                }
                                let s = _mm256_add_epi32(s0, s1);
                                _mm256_sub_epi32(s, _mm256_set1_epi32(*a[r].c.get_unchecked(b)))
                            } else {
                                let mut s = _mm256_setzero_si256();
                                for l in 0..8 {
                                    let q = _mm256_loadu_si256(qp.add(32 * l) as *const __m256i);
                                    s = dp(s, u[l], _mm256_sign_epi8(bcast(y.add(4 * l)), q));
                                }
                                s
                            };
                            let d = _mm256_mul_ps(dx, _mm256_set1_ps(*a[r].d.get_unchecked(b)));
                            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[r]);
                        }
                    }
                }
                lanes(&acc)
            }

            /// Q4_K weights (`nb` packed 256-value blocks of one group) against `R` Q8_K
            /// activation rows.
            ///
            /// # Safety
            /// As [`q4_0`], with `nb` packed Q4_K blocks, Q8_K rows and their sub-block sums.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_k<const R: usize>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                debug_assert!(w.len() >= 1184 * nb);
                debug_assert!(
                    a.iter()
                        .all(|a| a.q.len() >= 292 * nb && a.c.len() >= 8 * nb)
                );
                let m4 = _mm256_set1_epi8(0x0F);
                let sign = _mm256_set1_ps(-0.0);
                // One row: two chains per sum, so that vpdpbusd's latency overlaps.
                let ch = if R == 1 { 2 } else { 1 };
                let mut acc = [_mm256_setzero_ps(); R];
                let mut acc_m = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY: block b of the group and of every activation row is in bounds.
                    unsafe {
                        let blk = w.as_ptr().add(1184 * b);
                        let dx = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                        let dmx = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
                        let scale = |j: usize| {
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                blk.add(32 + 8 * j) as *const __m128i
                            ))
                        };
                        let mut tot = [_mm256_setzero_si256(); R];
                        for pair in 0..4 {
                            let mut lo = [[_mm256_setzero_si256(); 2]; R];
                            let mut hi = [[_mm256_setzero_si256(); 2]; R];
                            for v in 0..8 {
                                let c = _mm256_loadu_si256(
                                    blk.add(160 + 256 * pair + 32 * v) as *const __m256i
                                );
                                let ql = _mm256_and_si256(c, m4);
                                let qh = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
                                for r in 0..R {
                                    let y = a[r].q.as_ptr().add(292 * b + 4 + 64 * pair + 4 * v);
                                    if $vnni {
                                        lo[r][v % ch] = dp(lo[r][v % ch], ql, bcast(y));
                                        hi[r][v % ch] = dp(hi[r][v % ch], qh, bcast(y.add(32)));
                                    } else {
                                        // Nibble × byte pair sums (±3810) add up in 16 bits.
                                        lo[r][0] = _mm256_add_epi16(
                                            lo[r][0],
                                            _mm256_maddubs_epi16(ql, bcast(y)),
                                        );
                                        hi[r][0] = _mm256_add_epi16(
                                            hi[r][0],
                                            _mm256_maddubs_epi16(qh, bcast(y.add(32))),
                                        );
                                    }
                                }
                            }
                            let (sl, sh) = (scale(2 * pair), scale(2 * pair + 1));
                            for r in 0..R {
                                let (l, h) = if $vnni {
                                    (
                                        _mm256_add_epi32(lo[r][0], lo[r][1]),
                                        _mm256_add_epi32(hi[r][0], hi[r][1]),
                                    )
                                } else {
                                    let one = _mm256_set1_epi16(1);
                                    (
                                        _mm256_madd_epi16(lo[r][0], one),
                                        _mm256_madd_epi16(hi[r][0], one),
                                    )
                                };
                                tot[r] = _mm256_add_epi32(
                                    tot[r],
                                    _mm256_add_epi32(
                                        _mm256_mullo_epi32(sl, l),
                                        _mm256_mullo_epi32(sh, h),
                                    ),
                                );
                            }
                        }
                        for r in 0..R {
                            let sums = a[r].c.as_ptr().add(8 * b);
                            let mut mins = _mm256_setzero_si256();
                            for j in 0..8 {
                                let m = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                    blk.add(96 + 8 * j) as *const __m128i
                                ));
                                mins = _mm256_add_epi32(
                                    mins,
                                    _mm256_mullo_epi32(m, _mm256_set1_epi32(*sums.add(j))),
                                );
                            }
                            let dy = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                            let d = _mm256_mul_ps(dx, dy);
                            let dmin = _mm256_xor_ps(_mm256_mul_ps(dmx, dy), sign);
                            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(tot[r]), acc[r]);
                            acc_m[r] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(mins), acc_m[r]);
                        }
                    }
                }
                lanes(&std::array::from_fn(|r| _mm256_add_ps(acc[r], acc_m[r])))
            }

            /// Q6_K weights (`nb` packed 256-value blocks of one group) against `R` Q8_K
            /// activation rows.
            ///
            /// # Safety
            /// As [`q4_0`], with `nb` packed Q6_K blocks, Q8_K rows and their 16-value sums.
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k<const R: usize>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                debug_assert!(w.len() >= 1680 * nb);
                debug_assert!(
                    a.iter()
                        .all(|a| a.q.len() >= 292 * nb && a.c.len() >= 16 * nb)
                );
                let m4 = _mm256_set1_epi8(0x0F);
                let m30 = _mm256_set1_epi8(0x30);
                let mut acc = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    // SAFETY: block b of the group and of every activation row is in bounds.
                    unsafe {
                        let blk = w.as_ptr().add(1680 * b);
                        let dx = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                        let mut tot = [_mm256_setzero_si256(); R];
                        for h in 0..2 {
                            for half in 0..2 {
                                // Sums of the 16-value groups 8h + 2s + half, s = 0..4.
                                let mut part = [[_mm256_setzero_si256(); 4]; R];
                                for c in 4 * half..4 * half + 4 {
                                    // ql of values 4c.., ql of 32 + 4c.., their qh (x8.rs).
                                    let v = blk.add(144 + 96 * (8 * h + c));
                                    let l0 = _mm256_loadu_si256(v as *const __m256i);
                                    let l1 = _mm256_loadu_si256(v.add(32) as *const __m256i);
                                    let hb = _mm256_loadu_si256(v.add(64) as *const __m256i);
                                    let q = [
                                        _mm256_or_si256(
                                            _mm256_and_si256(l0, m4),
                                            _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30),
                                        ),
                                        _mm256_or_si256(
                                            _mm256_and_si256(l1, m4),
                                            _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30),
                                        ),
                                        _mm256_or_si256(
                                            _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                            _mm256_and_si256(hb, m30),
                                        ),
                                        _mm256_or_si256(
                                            _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                            _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30),
                                        ),
                                    ];
                                    for r in 0..R {
                                        let y = a[r].q.as_ptr().add(292 * b + 4 + 128 * h + 4 * c);
                                        for (sx, qs) in q.iter().enumerate() {
                                            part[r][sx] =
                                                dp(part[r][sx], *qs, bcast(y.add(32 * sx)));
                                        }
                                    }
                                }
                                for sx in 0..4 {
                                    let g = 8 * h + 2 * sx + half;
                                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                        blk.add(16 + 8 * g) as *const __m128i,
                                    ));
                                    for r in 0..R {
                                        let off =
                                            _mm256_set1_epi32(*a[r].c.get_unchecked(16 * b + g));
                                        let v = _mm256_sub_epi32(part[r][sx], off);
                                        tot[r] =
                                            _mm256_add_epi32(tot[r], _mm256_mullo_epi32(sc, v));
                                    }
                                }
                            }
                        }
                        for r in 0..R {
                            let d = _mm256_mul_ps(dx, _mm256_set1_ps(*a[r].d.get_unchecked(b)));
                            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(tot[r]), acc[r]);
                        }
                    }
                }
                lanes(&acc)
            }

            /// Q4_1 weights against `R` Q8_1 activation rows, in `ggml_vec_dot_q4_1_q8_1`'s
            /// order: lane accumulator `l` of row `r` is lane `r` of `acc[l]`.
            ///
            /// # Safety
            /// As [`q4_0`], with `nb` packed Q4_1 blocks and each row's `s`.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_1<const R: usize>(
                nb: usize,
                w: &[u8],
                a: &[ActRow; R],
            ) -> [[f32; GROUP]; R] {
                debug_assert!(w.len() >= 160 * nb);
                debug_assert!(a.iter().all(|a| a.q.len() >= 36 * nb && a.s.len() >= nb));
                let mut out = [[0.0f32; GROUP]; R];
                for r in 0..R {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    let mut summs = _mm256_setzero_ps();
                    for b in 0..nb {
                        // SAFETY: block b of the group and of the activation row is in bounds.
                        unsafe {
                            let blk = w.as_ptr().add(160 * b);
                            let dx = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                            let mx =
                                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
                            let y = a[r].q.as_ptr().add(36 * b + 4);
                            summs = _mm256_add_ps(
                                summs,
                                _mm256_mul_ps(mx, _mm256_set1_ps(*a[r].s.get_unchecked(b))),
                            );
                            let d = _mm256_mul_ps(dx, _mm256_set1_ps(*a[r].d.get_unchecked(b)));
                            let q = nibbles(blk.add(32));
                            for l in 0..8 {
                                let p = dp(_mm256_setzero_si256(), q[l], bcast(y.add(4 * l)));
                                acc[l] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[l]);
                            }
                        }
                    }
                    // hsum_float_8's order, eight rows at once.
                    let t0 = _mm256_add_ps(acc[0], acc[4]);
                    let t1 = _mm256_add_ps(acc[1], acc[5]);
                    let t2 = _mm256_add_ps(acc[2], acc[6]);
                    let t3 = _mm256_add_ps(acc[3], acc[7]);
                    let sum = _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
                    // SAFETY: 8 floats.
                    unsafe { _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(sum, summs)) };
                }
                out
            }
        }
    };
}

x8_kernels!(avx2, "avx2,fma,f16c", false);
x8_kernels!(
    avx512vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    true
);

/// AVX-512 kernels over two x8 groups at once: lanes 0..8 of each 512-bit vector are the rows of
/// group `g`, lanes 8..16 those of group `g + 1` (the next `nb` blocks in memory). Every lane
/// computes what the 256-bit kernels compute for its row, with the same operations in the same
/// order, so the results are bit-identical; the wider vectors halve the activation broadcasts
/// and the instructions per product. AVX-512F/VL/VNNI only (32-bit shifts, no byte ops), the
/// features [`super::Isa::Avx512Vnni`] checks.
pub mod zmm {
    use core::arch::x86_64::*;

    use super::super::x8::{ActRow, GROUP};

    /// `[row][16 outputs]`: group `g`'s eight, then group `g + 1`'s.
    pub type Pair<const R: usize> = [[f32; 2 * GROUP]; R];

    /// 32 bytes at `p0` (lanes 0..8) and 32 at `p1` (lanes 8..16).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn load2(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: the caller points at 32 readable bytes at each.
        unsafe {
            let lo = _mm256_loadu_si256(p0 as *const __m256i);
            let hi = _mm256_loadu_si256(p1 as *const __m256i);
            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
        }
    }

    /// The eight f16 scales at `p0` and the eight at `p1` as 16 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn scales2(p0: *const u8, p1: *const u8) -> __m512 {
        // SAFETY: the caller points at 16 readable bytes at each.
        unsafe {
            let lo = _mm_loadu_si128(p0 as *const __m128i);
            let hi = _mm_loadu_si128(p1 as *const __m128i);
            _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
        }
    }

    /// The four activation bytes at `p` in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn bcast(p: *const u8) -> __m512i {
        // SAFETY: the caller points at 4 readable bytes.
        _mm512_set1_epi32(unsafe { core::ptr::read_unaligned(p as *const i32) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    fn lanes<const R: usize>(acc: &[__m512; R]) -> Pair<R> {
        let mut out = [[0.0f32; 2 * GROUP]; R];
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: `o` holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
        }
        out
    }

    /// One block of activation row `a` (block `b`) against the 8 vectors `q` of unsigned
    /// weight values of both groups: the exact integer dot products (`vpdpbusd`, the first and
    /// second 16 values apart), less the offset `c`, then `fma(d_w·d_a, isum, acc)` — the
    /// 256-bit kernels' per-block step.
    ///
    /// # Safety
    /// Block `b` of the row (34 bytes from `34·b`) and its scalars are in bounds.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn row_block(acc: __m512, q: &[__m512i; 8], dx: __m512, a: &ActRow, b: usize) -> __m512 {
        // SAFETY: the caller's bounds.
        let (y, c, d) = unsafe {
            (
                a.q.as_ptr().add(34 * b + 2),
                *a.c.get_unchecked(b),
                *a.d.get_unchecked(b),
            )
        };
        let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for l in 0..4 {
            // SAFETY: y points at the block's 32 quants.
            unsafe {
                s0 = _mm512_dpbusd_epi32(s0, q[l], bcast(y.add(4 * l)));
                s1 = _mm512_dpbusd_epi32(s1, q[l + 4], bcast(y.add(16 + 4 * l)));
            }
        }
        let isum = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(c));
        let d = _mm512_mul_ps(dx, _mm512_set1_ps(d));
        _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), acc)
    }

    /// Q4_0 weights, two groups of `nb` packed blocks each (`w`: both, one after the other),
    /// against `R` Q8_0 activation rows.
    ///
    /// # Safety
    /// `w` holds `2·nb` packed Q4_0 blocks, every row of `a` `nb` Q8_0 blocks and their
    /// scalars; the CPU has AVX-512F/VL and VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn q4_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> Pair<R> {
        // SAFETY: the caller's guarantees.
        unsafe { q4_or_5::<R, false>(nb, w, a) }
    }

    /// Q5_0 weights, two groups, against `R` Q8_0 activation rows.
    ///
    /// # Safety
    /// As [`q4_0`], with packed Q5_0 blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn q5_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> Pair<R> {
        // SAFETY: the caller's guarantees.
        unsafe { q4_or_5::<R, true>(nb, w, a) }
    }

    /// # Safety
    /// As [`q4_0`] / [`q5_0`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn q4_or_5<const R: usize, const FIVE: bool>(
        nb: usize,
        w: &[u8],
        a: &[ActRow; R],
    ) -> Pair<R> {
        let (bb, qat) = if FIVE { (176, 48) } else { (144, 16) };
        assert!(w.len() >= 2 * bb * nb);
        debug_assert!(a.iter().all(|a| a.q.len() >= 34 * nb && a.c.len() >= nb));
        let m4 = _mm512_set1_epi32(0x0F0F_0F0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            // SAFETY: block b of both groups and of every activation row is in bounds.
            unsafe {
                let b0 = w.as_ptr().add(bb * b);
                let b1 = b0.add(bb * nb);
                let dx = scales2(b0, b1);
                let mut q = [_mm512_setzero_si512(); 8];
                for v in 0..4 {
                    let c = load2(b0.add(qat + 32 * v), b1.add(qat + 32 * v));
                    q[v] = _mm512_and_si512(c, m4);
                    // Within each byte: a 32-bit shift brings the next byte's low bits into
                    // the high nibble, which the mask clears.
                    q[v + 4] = _mm512_and_si512(_mm512_srli_epi32(c, 4), m4);
                }
                if FIVE {
                    let bits = load2(b0.add(16), b1.add(16));
                    for (v, q) in q.iter_mut().enumerate() {
                        // Bit v of each byte to bit 4 (it stays inside its byte).
                        let b = _mm512_and_si512(bits, _mm512_set1_epi32(0x0101_0101 << v));
                        let b = match v {
                            0 => _mm512_slli_epi32(b, 4),
                            1 => _mm512_slli_epi32(b, 3),
                            2 => _mm512_slli_epi32(b, 2),
                            3 => _mm512_slli_epi32(b, 1),
                            4 => b,
                            5 => _mm512_srli_epi32(b, 1),
                            6 => _mm512_srli_epi32(b, 2),
                            _ => _mm512_srli_epi32(b, 3),
                        };
                        *q = _mm512_or_si512(*q, b);
                    }
                }
                for r in 0..R {
                    acc[r] = row_block(acc[r], &q, dx, &a[r], b);
                }
            }
        }
        lanes(&acc)
    }

    /// Q8_0 weights, two groups, against `R` Q8_0 activation rows.
    ///
    /// # Safety
    /// As [`q4_0`], with packed Q8_0 blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn q8_0<const R: usize>(nb: usize, w: &[u8], a: &[ActRow; R]) -> Pair<R> {
        assert!(w.len() >= 2 * 272 * nb);
        debug_assert!(a.iter().all(|a| a.q.len() >= 34 * nb && a.c.len() >= nb));
        let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            // SAFETY: block b of both groups and of every activation row is in bounds.
            unsafe {
                let b0 = w.as_ptr().add(272 * b);
                let b1 = b0.add(272 * nb);
                let dx = scales2(b0, b1);
                // q + 128 as unsigned bytes (the offset, 128·Σy, is taken out with c).
                let u: [__m512i; 8] = std::array::from_fn(|l| {
                    _mm512_xor_si512(load2(b0.add(16 + 32 * l), b1.add(16 + 32 * l)), flip)
                });
                for r in 0..R {
                    acc[r] = row_block(acc[r], &u, dx, &a[r], b);
                }
            }
        }
        lanes(&acc)
    }
}
