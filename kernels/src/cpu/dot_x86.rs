//! x86-64 dot products (AVX2 + FMA + F16C, and the same with AVX-512 VNNI's `vpdpbusd` for the
//! 8-bit multiply-adds). Ports of ggml-cpu `arch/x86/quants.c` `ggml_vec_dot_*` (AVX2 branches);
//! each matches [`super::dot_scalar`] up to float summation order (tests in `cpu/mod.rs`).
//!
//! One macro writes both variants so that every helper is compiled with the caller's target
//! features and inlines.

macro_rules! x86_dots {
    ($module:ident, $features:literal, $vnni:literal) => {
        pub mod $module {
            use core::arch::x86_64::*;

            #[inline]
            #[target_feature(enable = $features)]
            fn f16_to_f32(bits: u16) -> f32 {
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn f16_at(p: *const u8) -> f32 {
                // SAFETY: the caller points at two readable bytes.
                f16_to_f32(unsafe { core::ptr::read_unaligned(p as *const u16) })
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum_f32_8(x: __m256) -> f32 {
                let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
                r = _mm_add_ps(r, _mm_movehl_ps(r, r));
                r = _mm_add_ss(r, _mm_movehdup_ps(r));
                _mm_cvtss_f32(r)
            }

            /// Σ over pairs of u8 × i8 products, as 8 f32 lanes.
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(unused_unsafe)]
            fn mul_sum_us8_pairs(ax: __m256i, sy: __m256i) -> __m256 {
                if $vnni {
                    // SAFETY: only reached in the module compiled with avx512vnni + avx512vl.
                    let dot = unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy) };
                    _mm256_cvtepi32_ps(dot)
                } else {
                    let dot = _mm256_maddubs_epi16(ax, sy);
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn mul_sum_i8_pairs(x: __m256i, y: __m256i) -> __m256 {
                let ax = _mm256_sign_epi8(x, x);
                let sy = _mm256_sign_epi8(y, x);
                mul_sum_us8_pairs(ax, sy)
            }

            /// 32 nibbles of a Q4 block as bytes: low nibbles first, then high nibbles.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles_32(p: *const u8) -> __m256i {
                // SAFETY: the caller points at 16 readable bytes.
                let tmp = unsafe { _mm_loadu_si128(p as *const __m128i) };
                let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
                _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
            }

            /// # Safety
            /// `w` and `a` hold `k` values (whole blocks); the CPU has the module's features.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_0(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: the caller's guarantees, for the one row.
                unsafe { q4_0_rows::<1>(k, w, &[a])[0] }
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q4_1(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: the caller's guarantees, for the one row.
                unsafe { q4_1_rows::<1>(k, w, &[a])[0] }
            }

            /// Byte i is 0xFF where bit i of the 32 bits at `p` is set (ggml `bytes_from_bits_32`).
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn bytes_from_bits_32(p: *const u8) -> __m256i {
                // SAFETY: the caller points at 4 readable bytes.
                let x32 = unsafe { core::ptr::read_unaligned(p as *const i32) };
                let shuf = _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0x0000000000000000,
                );
                let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
                let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
                _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q5_0(k: usize, w: &[u8], a: &[u8]) -> f32 {
                debug_assert!(w.len() >= k / 32 * 22 && a.len() >= k / 32 * 34);
                let mut acc = _mm256_setzero_ps();
                for i in 0..k / 32 {
                    // SAFETY: block i of both rows is in bounds.
                    unsafe {
                        let x = w.as_ptr().add(22 * i);
                        let y = a.as_ptr().add(34 * i);
                        let d = _mm256_set1_ps(f16_at(x) * f16_at(y));
                        // Clear fifth bit: q - 16 as a signed byte is q | 0xF0.
                        let hi = _mm256_andnot_si256(
                            bytes_from_bits_32(x.add(2)),
                            _mm256_set1_epi8(0xF0u8 as i8),
                        );
                        let qx = _mm256_or_si256(nibbles_32(x.add(6)), hi);
                        let qy = _mm256_loadu_si256(y.add(2) as *const __m256i);
                        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, qy), acc);
                    }
                }
                hsum_f32_8(acc)
            }

            /// One Q5_0 weight row against `R` activation rows, bit-identical per row to [`q5_0`] (kept
            /// separate: as `q5_0_rows::<1>` the decode kernel ran slower).
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn q5_0_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                debug_assert!(w.len() >= k / 32 * 22 && a.iter().all(|a| a.len() >= k / 32 * 34));
                let mut acc = [_mm256_setzero_ps(); R];
                for i in 0..k / 32 {
                    // SAFETY: block i of every row is in bounds.
                    unsafe {
                        let x = w.as_ptr().add(22 * i);
                        let dx = f16_at(x);
                        // Clear fifth bit: q - 16 as a signed byte is q | 0xF0.
                        let hi = _mm256_andnot_si256(
                            bytes_from_bits_32(x.add(2)),
                            _mm256_set1_epi8(0xF0u8 as i8),
                        );
                        let qx = _mm256_or_si256(nibbles_32(x.add(6)), hi);
                        for r in 0..R {
                            let y = a[r].as_ptr().add(34 * i);
                            let d = _mm256_set1_ps(dx * f16_at(y));
                            let qy = _mm256_loadu_si256(y.add(2) as *const __m256i);
                            acc[r] = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, qy), acc[r]);
                        }
                    }
                }
                let mut out = [0.0f32; R];
                for r in 0..R {
                    out[r] = hsum_f32_8(acc[r]);
                }
                out
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q5_1(k: usize, w: &[u8], a: &[u8]) -> f32 {
                debug_assert!(w.len() >= k / 32 * 24 && a.len() >= k / 32 * 36);
                let mut acc = _mm256_setzero_ps();
                let mut summs = 0.0f32;
                for i in 0..k / 32 {
                    // SAFETY: block i of both rows is in bounds.
                    unsafe {
                        let x = w.as_ptr().add(24 * i);
                        let y = a.as_ptr().add(36 * i);
                        summs += f16_at(x.add(2)) * f16_at(y.add(2));
                        let d = _mm256_set1_ps(f16_at(x) * f16_at(y));
                        let hi =
                            _mm256_and_si256(bytes_from_bits_32(x.add(4)), _mm256_set1_epi8(0x10));
                        let qx = _mm256_or_si256(nibbles_32(x.add(8)), hi);
                        let qy = _mm256_loadu_si256(y.add(4) as *const __m256i);
                        acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs(qx, qy), acc);
                    }
                }
                hsum_f32_8(acc) + summs
            }

            /// One Q5_1 weight row against `R` activation rows, bit-identical per row to [`q5_1`].
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn q5_1_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                debug_assert!(w.len() >= k / 32 * 24 && a.iter().all(|a| a.len() >= k / 32 * 36));
                let mut acc = [_mm256_setzero_ps(); R];
                let mut summs = [0.0f32; R];
                for i in 0..k / 32 {
                    // SAFETY: block i of every row is in bounds.
                    unsafe {
                        let x = w.as_ptr().add(24 * i);
                        let (dx, mx) = (f16_at(x), f16_at(x.add(2)));
                        let hi =
                            _mm256_and_si256(bytes_from_bits_32(x.add(4)), _mm256_set1_epi8(0x10));
                        let qx = _mm256_or_si256(nibbles_32(x.add(8)), hi);
                        for r in 0..R {
                            let y = a[r].as_ptr().add(36 * i);
                            summs[r] += mx * f16_at(y.add(2));
                            let d = _mm256_set1_ps(dx * f16_at(y));
                            let qy = _mm256_loadu_si256(y.add(4) as *const __m256i);
                            acc[r] = _mm256_fmadd_ps(d, mul_sum_us8_pairs(qx, qy), acc[r]);
                        }
                    }
                }
                let mut out = [0.0f32; R];
                for r in 0..R {
                    out[r] = hsum_f32_8(acc[r]) + summs[r];
                }
                out
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: the caller's guarantees, for the one row.
                unsafe { q8_0_rows::<1>(k, w, &[a])[0] }
            }

            /// `W` weight rows against `R` activation rows: each block is loaded and unpacked
            /// once for the whole tile, and the `W × R` accumulator chains run side by side. Every
            /// entry is computed exactly as the one-row kernel (which is this with `W = R = 1`),
            /// so a row's result depends neither on its batch nor on its neighbours.
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `w` and `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_0_tile<const W: usize, const R: usize>(
                k: usize,
                w: &[&[u8]; W],
                a: &[&[u8]; R],
            ) -> [[f32; R]; W] {
                debug_assert!(
                    w.iter().all(|w| w.len() >= k / 32 * 18)
                        && a.iter().all(|a| a.len() >= k / 32 * 34)
                );
                let mut acc = [[_mm256_setzero_ps(); R]; W];
                for i in 0..k / 32 {
                    // SAFETY: block i of every row is in bounds.
                    unsafe {
                        let mut dx = [0.0f32; W];
                        let mut qx = [_mm256_setzero_si256(); W];
                        for q in 0..W {
                            let x = w[q].as_ptr().add(18 * i);
                            dx[q] = f16_at(x);
                            qx[q] = _mm256_sub_epi8(nibbles_32(x.add(2)), _mm256_set1_epi8(8));
                        }
                        for r in 0..R {
                            let y = a[r].as_ptr().add(34 * i);
                            let dy = f16_at(y);
                            let qy = _mm256_loadu_si256(y.add(2) as *const __m256i);
                            for q in 0..W {
                                let d = _mm256_set1_ps(dx[q] * dy);
                                acc[q][r] =
                                    _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx[q], qy), acc[q][r]);
                            }
                        }
                    }
                }
                let mut out = [[0.0f32; R]; W];
                for q in 0..W {
                    for r in 0..R {
                        out[q][r] = hsum_f32_8(acc[q][r]);
                    }
                }
                out
            }

            /// # Safety
            /// As [`q4_0_tile`].
            #[target_feature(enable = $features)]
            pub unsafe fn q4_1_tile<const W: usize, const R: usize>(
                k: usize,
                w: &[&[u8]; W],
                a: &[&[u8]; R],
            ) -> [[f32; R]; W] {
                debug_assert!(
                    w.iter().all(|w| w.len() >= k / 32 * 20)
                        && a.iter().all(|a| a.len() >= k / 32 * 36)
                );
                let mut acc = [[_mm256_setzero_ps(); R]; W];
                let mut summs = [[0.0f32; R]; W];
                for i in 0..k / 32 {
                    // SAFETY: block i of every row is in bounds.
                    unsafe {
                        let mut dx = [0.0f32; W];
                        let mut mx = [0.0f32; W];
                        let mut qx = [_mm256_setzero_si256(); W];
                        for q in 0..W {
                            let x = w[q].as_ptr().add(20 * i);
                            dx[q] = f16_at(x);
                            mx[q] = f16_at(x.add(2));
                            qx[q] = nibbles_32(x.add(4));
                        }
                        for r in 0..R {
                            let y = a[r].as_ptr().add(36 * i);
                            let (dy, sy) = (f16_at(y), f16_at(y.add(2)));
                            let qy = _mm256_loadu_si256(y.add(4) as *const __m256i);
                            for q in 0..W {
                                summs[q][r] += mx[q] * sy;
                                let d = _mm256_set1_ps(dx[q] * dy);
                                acc[q][r] =
                                    _mm256_fmadd_ps(d, mul_sum_us8_pairs(qx[q], qy), acc[q][r]);
                            }
                        }
                    }
                }
                let mut out = [[0.0f32; R]; W];
                for q in 0..W {
                    for r in 0..R {
                        out[q][r] = hsum_f32_8(acc[q][r]) + summs[q][r];
                    }
                }
                out
            }

            /// # Safety
            /// As [`q4_0_tile`].
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0_tile<const W: usize, const R: usize>(
                k: usize,
                w: &[&[u8]; W],
                a: &[&[u8]; R],
            ) -> [[f32; R]; W] {
                debug_assert!(
                    w.iter().all(|w| w.len() >= k / 32 * 34)
                        && a.iter().all(|a| a.len() >= k / 32 * 34)
                );
                let mut acc = [[_mm256_setzero_ps(); R]; W];
                for i in 0..k / 32 {
                    // SAFETY: block i of every row is in bounds.
                    unsafe {
                        let mut dx = [0.0f32; W];
                        let mut qx = [_mm256_setzero_si256(); W];
                        for q in 0..W {
                            let x = w[q].as_ptr().add(34 * i);
                            dx[q] = f16_at(x);
                            qx[q] = _mm256_loadu_si256(x.add(2) as *const __m256i);
                        }
                        for r in 0..R {
                            let y = a[r].as_ptr().add(34 * i);
                            let dy = f16_at(y);
                            let qy = _mm256_loadu_si256(y.add(2) as *const __m256i);
                            for q in 0..W {
                                let d = _mm256_set1_ps(dx[q] * dy);
                                acc[q][r] =
                                    _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx[q], qy), acc[q][r]);
                            }
                        }
                    }
                }
                let mut out = [[0.0f32; R]; W];
                for q in 0..W {
                    for r in 0..R {
                        out[q][r] = hsum_f32_8(acc[q][r]);
                    }
                }
                out
            }

            /// # Safety
            /// As [`q4_0_tile`].
            #[target_feature(enable = $features)]
            pub unsafe fn q4_0_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                // SAFETY: the caller's guarantees.
                unsafe { q4_0_tile::<1, R>(k, &[w], a)[0] }
            }

            /// # Safety
            /// As [`q4_0_tile`].
            #[target_feature(enable = $features)]
            pub unsafe fn q4_1_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                // SAFETY: the caller's guarantees.
                unsafe { q4_1_tile::<1, R>(k, &[w], a)[0] }
            }

            /// # Safety
            /// As [`q4_0_tile`].
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                // SAFETY: the caller's guarantees.
                unsafe { q8_0_tile::<1, R>(k, &[w], a)[0] }
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q4_k(k: usize, w: &[u8], a: &[u8]) -> f32 {
                debug_assert!(w.len() >= k / 256 * 144 && a.len() >= k / 256 * 292);
                let m4 = _mm256_set1_epi8(0x0F);
                let mut acc = _mm256_setzero_ps();
                let mut acc_m = _mm_setzero_ps();
                for i in 0..k / 256 {
                    let xb = &w[144 * i..144 * (i + 1)];
                    let yb = &a[292 * i..292 * (i + 1)];
                    let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
                    // SAFETY: xb has 144 bytes.
                    let (dx, dmx) = unsafe { (f16_at(xb.as_ptr()), f16_at(xb.as_ptr().add(2))) };
                    let d = dy * dx;
                    let dmin = -dy * dmx;
                    let (sc, mins) = crate::cpu::dot_scalar::q4k_scales_mins(&xb[4..16]);
                    // SAFETY: all loads below stay inside xb (144 bytes) and yb (292 bytes).
                    unsafe {
                        let mins16 =
                            _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i));
                        let q8sums = _mm256_loadu_si256(yb.as_ptr().add(260) as *const __m256i);
                        let q8s = _mm_hadd_epi16(
                            _mm256_castsi256_si128(q8sums),
                            _mm256_extracti128_si256(q8sums, 1),
                        );
                        let prod = _mm_madd_epi16(mins16, q8s);
                        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

                        let mut sumi = _mm256_setzero_si256();
                        let mut q4 = xb.as_ptr().add(16);
                        let mut q8 = yb.as_ptr().add(4);
                        for j in 0..4 {
                            let scale_l = _mm256_set1_epi16(i16::from(sc[2 * j]));
                            let scale_h = _mm256_set1_epi16(i16::from(sc[2 * j + 1]));
                            let q4bits = _mm256_loadu_si256(q4 as *const __m256i);
                            q4 = q4.add(32);
                            let q4l = _mm256_and_si256(q4bits, m4);
                            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                            let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                            let q8h = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                            q8 = q8.add(64);
                            let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                            let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
                        }
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
                    }
                }
                let mut m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
                m = _mm_add_ss(m, _mm_movehdup_ps(m));
                hsum_f32_8(acc) + _mm_cvtss_f32(m)
            }

            /// One Q4_K weight row against `R` activation rows, each computed with the one-row
            /// kernel's operations in its order (so results are bit-identical to it; the test
            /// `kernels_match_the_reference` checks). The one-row kernel stays separate: written
            /// this way it decodes 25% slower.
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn q4_k_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                // SAFETY: the caller's guarantees.
                unsafe { k4_rows::<R, false>(k, w, a) }
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q5_k(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: the caller's guarantees, for the one row.
                unsafe { q5_k_rows::<1>(k, w, &[a])[0] }
            }

            /// One Q5_K weight row against `R` activation rows: the Q4_K kernel with the fifth
            /// bit of each value (bit `s` of `qh[l]` for value `l` of sub-block `s`) or-ed in as
            /// 16 before the multiply-adds (values ≤ 31, so `maddubs` cannot saturate), as
            /// ggml's `ggml_vec_dot_q5_K_q8_K`.
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn q5_k_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                // SAFETY: the caller's guarantees.
                unsafe { k4_rows::<R, true>(k, w, a) }
            }

            /// Q4_K (`FIVE` false: 144-byte blocks, nibbles at 16) or Q5_K (176-byte blocks,
            /// `qh` at 16, nibbles at 48) against `R` rows of Q8_K activations.
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `a`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn k4_rows<const R: usize, const FIVE: bool>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                let (bb, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
                debug_assert!(
                    w.len() >= k / 256 * bb && a.iter().all(|a| a.len() >= k / 256 * 292)
                );
                let m4 = _mm256_set1_epi8(0x0F);
                let bit5 = _mm256_set1_epi8(0x10);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut acc_m = [_mm_setzero_ps(); R];
                for i in 0..k / 256 {
                    let xb = &w[bb * i..bb * (i + 1)];
                    // SAFETY: xb has `bb` ≥ 144 bytes.
                    let (dx, dmx) = unsafe { (f16_at(xb.as_ptr()), f16_at(xb.as_ptr().add(2))) };
                    let (sc, mins) = crate::cpu::dot_scalar::q4k_scales_mins(&xb[4..16]);
                    // SAFETY: all loads below stay inside xb (`bb` bytes: qh ends at 48 and the
                    // nibbles at `qs_at + 128 = bb`) and each yb (292 bytes).
                    unsafe {
                        let mins16 =
                            _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i));
                        let qh = if FIVE {
                            _mm256_loadu_si256(xb.as_ptr().add(16) as *const __m256i)
                        } else {
                            _mm256_setzero_si256()
                        };
                        let mut q = [_mm256_setzero_si256(); 8];
                        for j in 0..4 {
                            let bits = _mm256_loadu_si256(
                                xb.as_ptr().add(qs_at + 32 * j) as *const __m256i
                            );
                            q[2 * j] = _mm256_and_si256(bits, m4);
                            q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                            if FIVE {
                                for s in [2 * j, 2 * j + 1] {
                                    let mask = _mm256_set1_epi8(1 << s);
                                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, mask), mask);
                                    q[s] = _mm256_or_si256(q[s], _mm256_and_si256(set, bit5));
                                }
                            }
                        }
                        for r in 0..R {
                            let yb = &a[r][292 * i..292 * (i + 1)];
                            let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
                            let d = dy * dx;
                            let dmin = -dy * dmx;
                            let q8sums = _mm256_loadu_si256(yb.as_ptr().add(260) as *const __m256i);
                            let q8s = _mm_hadd_epi16(
                                _mm256_castsi256_si128(q8sums),
                                _mm256_extracti128_si256(q8sums, 1),
                            );
                            let prod = _mm_madd_epi16(mins16, q8s);
                            acc_m[r] =
                                _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[r]);
                            let mut sumi = _mm256_setzero_si256();
                            let q8 = yb.as_ptr().add(4);
                            for j in 0..4 {
                                let scale_l = _mm256_set1_epi16(i16::from(sc[2 * j]));
                                let scale_h = _mm256_set1_epi16(i16::from(sc[2 * j + 1]));
                                let q8l = _mm256_loadu_si256(q8.add(64 * j) as *const __m256i);
                                let q8h = _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i);
                                let p16l =
                                    _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q[2 * j], q8l));
                                let p16h = _mm256_madd_epi16(
                                    scale_h,
                                    _mm256_maddubs_epi16(q[2 * j + 1], q8h),
                                );
                                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
                            }
                            acc[r] = _mm256_fmadd_ps(
                                _mm256_set1_ps(d),
                                _mm256_cvtepi32_ps(sumi),
                                acc[r],
                            );
                        }
                    }
                }
                let mut out = [0.0f32; R];
                for r in 0..R {
                    let mut m = _mm_add_ps(acc_m[r], _mm_movehl_ps(acc_m[r], acc_m[r]));
                    m = _mm_add_ss(m, _mm_movehdup_ps(m));
                    out[r] = hsum_f32_8(acc[r]) + _mm_cvtss_f32(m);
                }
                out
            }

            /// # Safety
            /// As [`q4_0`].
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k(k: usize, w: &[u8], a: &[u8]) -> f32 {
                debug_assert!(w.len() >= k / 256 * 210 && a.len() >= k / 256 * 292);
                let m4 = _mm256_set1_epi8(0x0F);
                let m2 = _mm256_set1_epi8(3);
                let m32s = _mm256_set1_epi8(32);
                let mut acc = _mm256_setzero_ps();
                for i in 0..k / 256 {
                    let xb = &w[210 * i..210 * (i + 1)];
                    let yb = &a[292 * i..292 * (i + 1)];
                    let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
                    // SAFETY: xb has 210 bytes.
                    let d = dy * unsafe { f16_at(xb.as_ptr().add(208)) };
                    let scales = &xb[192..208];
                    let pair = |s: usize| {
                        _mm256_set_m128i(
                            _mm_set1_epi16(i16::from(scales[s + 1] as i8)),
                            _mm_set1_epi16(i16::from(scales[s] as i8)),
                        )
                    };
                    // SAFETY: all loads below stay inside xb (210 bytes) and yb (292 bytes).
                    unsafe {
                        let mut sumi = _mm256_setzero_si256();
                        let mut ql = xb.as_ptr();
                        let mut qh = xb.as_ptr().add(128);
                        let mut q8 = yb.as_ptr().add(4);
                        for j in 0..2 {
                            let hbits = _mm256_loadu_si256(qh as *const __m256i);
                            qh = qh.add(32);
                            let h0 = _mm256_slli_epi16(_mm256_and_si256(hbits, m2), 4);
                            let h1 = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hbits, 2), m2),
                                4,
                            );
                            let h2 = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hbits, 4), m2),
                                4,
                            );
                            let h3 = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hbits, 6), m2),
                                4,
                            );
                            let b1 = _mm256_loadu_si256(ql as *const __m256i);
                            let b2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                            ql = ql.add(64);
                            let q = [
                                _mm256_or_si256(_mm256_and_si256(b1, m4), h0),
                                _mm256_or_si256(_mm256_and_si256(b2, m4), h1),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), h2),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4), h3),
                            ];
                            for (t, q) in q.into_iter().enumerate() {
                                let y = _mm256_loadu_si256(q8 as *const __m256i);
                                q8 = q8.add(32);
                                let p = _mm256_sub_epi16(
                                    _mm256_maddubs_epi16(q, y),
                                    _mm256_maddubs_epi16(m32s, y),
                                );
                                let s = pair(8 * j + 2 * t);
                                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p));
                            }
                        }
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
                    }
                }
                hsum_f32_8(acc)
            }

            /// One Q6_K weight row against `R` activation rows, bit-identical per row to [`q6_k`].
            ///
            /// # Safety
            /// As [`q4_0`], for every row of `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k_rows<const R: usize>(
                k: usize,
                w: &[u8],
                a: &[&[u8]; R],
            ) -> [f32; R] {
                debug_assert!(
                    w.len() >= k / 256 * 210 && a.iter().all(|a| a.len() >= k / 256 * 292)
                );
                let m4 = _mm256_set1_epi8(0x0F);
                let m2 = _mm256_set1_epi8(3);
                let m32s = _mm256_set1_epi8(32);
                let mut acc = [_mm256_setzero_ps(); R];
                for i in 0..k / 256 {
                    let xb = &w[210 * i..210 * (i + 1)];
                    // SAFETY: xb has 210 bytes.
                    let dx = unsafe { f16_at(xb.as_ptr().add(208)) };
                    let scales = &xb[192..208];
                    let pair = |s: usize| {
                        _mm256_set_m128i(
                            _mm_set1_epi16(i16::from(scales[s + 1] as i8)),
                            _mm_set1_epi16(i16::from(scales[s] as i8)),
                        )
                    };
                    // SAFETY: all loads below stay inside xb (210 bytes) and each yb (292 bytes).
                    unsafe {
                        // The 256 six-bit values as 8 vectors of 32, in activation order.
                        let mut q = [_mm256_setzero_si256(); 8];
                        for j in 0..2 {
                            let hbits =
                                _mm256_loadu_si256(xb.as_ptr().add(128 + 32 * j) as *const __m256i);
                            let h = |shift: i32| {
                                let v = match shift {
                                    0 => hbits,
                                    2 => _mm256_srli_epi16(hbits, 2),
                                    4 => _mm256_srli_epi16(hbits, 4),
                                    _ => _mm256_srli_epi16(hbits, 6),
                                };
                                _mm256_slli_epi16(_mm256_and_si256(v, m2), 4)
                            };
                            let b1 = _mm256_loadu_si256(xb.as_ptr().add(64 * j) as *const __m256i);
                            let b2 =
                                _mm256_loadu_si256(xb.as_ptr().add(64 * j + 32) as *const __m256i);
                            q[4 * j] = _mm256_or_si256(_mm256_and_si256(b1, m4), h(0));
                            q[4 * j + 1] = _mm256_or_si256(_mm256_and_si256(b2, m4), h(2));
                            q[4 * j + 2] = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                                h(4),
                            );
                            q[4 * j + 3] = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                                h(6),
                            );
                        }
                        for r in 0..R {
                            let yb = &a[r][292 * i..292 * (i + 1)];
                            let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
                            let d = dy * dx;
                            let mut sumi = _mm256_setzero_si256();
                            for (v, qv) in q.iter().enumerate() {
                                let y = _mm256_loadu_si256(
                                    yb.as_ptr().add(4 + 32 * v) as *const __m256i
                                );
                                let p = _mm256_sub_epi16(
                                    _mm256_maddubs_epi16(*qv, y),
                                    _mm256_maddubs_epi16(m32s, y),
                                );
                                let s = pair(8 * (v / 4) + 2 * (v % 4));
                                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p));
                            }
                            acc[r] = _mm256_fmadd_ps(
                                _mm256_set1_ps(d),
                                _mm256_cvtepi32_ps(sumi),
                                acc[r],
                            );
                        }
                    }
                }
                let mut out = [0.0f32; R];
                for r in 0..R {
                    out[r] = hsum_f32_8(acc[r]);
                }
                out
            }

            /// # Safety
            /// `w` and `a` hold `k` f16 values each; the CPU has the module's features.
            #[target_feature(enable = $features)]
            pub unsafe fn f16(k: usize, w: &[u8], a: &[u8]) -> f32 {
                assert!(w.len() >= 2 * k && a.len() >= 2 * k);
                let mut acc = [_mm256_setzero_ps(); 4];
                let (wp, ap) = (w.as_ptr() as *const __m128i, a.as_ptr() as *const __m128i);
                let full = k / 32;
                // SAFETY: 32 values (64 bytes) per step, `full` steps are in bounds.
                unsafe {
                    for i in 0..full {
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let x = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(4 * i + r)));
                            let y = _mm256_cvtph_ps(_mm_loadu_si128(ap.add(4 * i + r)));
                            *acc = _mm256_fmadd_ps(x, y, *acc);
                        }
                    }
                }
                let sum =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut s = hsum_f32_8(sum);
                for i in 32 * full..k {
                    // SAFETY: i < k.
                    unsafe { s += f16_at(w.as_ptr().add(2 * i)) * f16_at(a.as_ptr().add(2 * i)) };
                }
                s
            }

            /// One f16 weight row against `R` f16 activation rows: [`f16_tile`] with `W = 1`.
            ///
            /// # Safety
            /// As [`f16`], for every row of `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn f16_rows<const R: usize>(k: usize, w: &[u8], a: &[&[u8]; R]) -> [f32; R] {
                // SAFETY: the caller's guarantees.
                unsafe { f16_tile::<1, R>(k, &[w], a)[0] }
            }

            /// `W` f16 weight rows against `R` f16 activation rows. Per output, the same
            /// operations in the same order as [`f16`]: its four lane accumulators, each summed
            /// over the 32-value steps in order, then added pairwise, then the tail. The
            /// accumulators are taken one at a time (`c` outer; two at a time in 512-bit
            /// registers), so that only a group of weight rows × `R` of them are live and every
            /// converted chunk feeds several products.
            ///
            /// # Safety
            /// As [`f16`], for every row of `w` and `a`.
            #[target_feature(enable = $features)]
            #[allow(unused_unsafe)]
            pub unsafe fn f16_tile<const W: usize, const R: usize>(
                k: usize,
                w: &[&[u8]; W],
                a: &[&[u8]; R],
            ) -> [[f32; R]; W] {
                assert!(w.iter().all(|w| w.len() >= 2 * k) && a.iter().all(|a| a.len() >= 2 * k));
                let full = k / 32;
                let mut lanes = [[[_mm256_setzero_ps(); 4]; R]; W];
                if $vnni {
                    // A 512-bit register holds accumulators c and c + 1 (two adjacent 16-byte
                    // chunks of a step): each FMA is `f16`'s two 8-lane FMAs at once.
                    for q0 in (0..W).step_by(4) {
                        let g = 4.min(W - q0);
                        for c in [0, 2] {
                            // SAFETY: only reached in the module compiled with avx512f; 32
                            // values (64 bytes) per step, `full` steps are in bounds of every row.
                            unsafe {
                                let mut acc = [[_mm512_setzero_ps(); R]; 4];
                                for i in 0..full {
                                    let y: [__m512; R] = std::array::from_fn(|r| {
                                        let ap = a[r].as_ptr().add(64 * i + 16 * c);
                                        _mm512_cvtph_ps(_mm256_loadu_si256(ap as *const __m256i))
                                    });
                                    for (q, acc) in acc.iter_mut().enumerate().take(g) {
                                        let wp = w[q0 + q].as_ptr().add(64 * i + 16 * c);
                                        let x = _mm512_cvtph_ps(_mm256_loadu_si256(
                                            wp as *const __m256i,
                                        ));
                                        for r in 0..R {
                                            acc[r] = _mm512_fmadd_ps(x, y[r], acc[r]);
                                        }
                                    }
                                }
                                for q in 0..g {
                                    for r in 0..R {
                                        let v = acc[q][r];
                                        lanes[q0 + q][r][c] = _mm512_castps512_ps256(v);
                                        lanes[q0 + q][r][c + 1] = _mm256_castpd_ps(
                                            _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1),
                                        );
                                    }
                                }
                            }
                        }
                    }
                } else {
                    // AVX2's 16 registers: 2 weight rows × R activation rows, one accumulator
                    // (c) at a time.
                    for q0 in (0..W).step_by(2) {
                        let g = 2.min(W - q0);
                        for c in 0..4 {
                            let mut acc = [[_mm256_setzero_ps(); R]; 2];
                            // SAFETY: 32 values (64 bytes) per step, `full` steps are in bounds
                            // of every row.
                            unsafe {
                                for i in 0..full {
                                    let y: [__m256; R] = std::array::from_fn(|r| {
                                        let ap = a[r].as_ptr() as *const __m128i;
                                        _mm256_cvtph_ps(_mm_loadu_si128(ap.add(4 * i + c)))
                                    });
                                    for (q, acc) in acc.iter_mut().enumerate().take(g) {
                                        let wp = w[q0 + q].as_ptr() as *const __m128i;
                                        let x = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(4 * i + c)));
                                        for r in 0..R {
                                            acc[r] = _mm256_fmadd_ps(x, y[r], acc[r]);
                                        }
                                    }
                                }
                            }
                            for q in 0..g {
                                for r in 0..R {
                                    lanes[q0 + q][r][c] = acc[q][r];
                                }
                            }
                        }
                    }
                }
                let mut out = [[0.0f32; R]; W];
                for q in 0..W {
                    for r in 0..R {
                        let acc = &lanes[q][r];
                        let sum = _mm256_add_ps(
                            _mm256_add_ps(acc[0], acc[1]),
                            _mm256_add_ps(acc[2], acc[3]),
                        );
                        let mut s = hsum_f32_8(sum);
                        for i in 32 * full..k {
                            // SAFETY: i < k.
                            unsafe {
                                s += f16_at(w[q].as_ptr().add(2 * i))
                                    * f16_at(a[r].as_ptr().add(2 * i))
                            };
                        }
                        out[q][r] = s;
                    }
                }
                out
            }

            /// f32 lanes per vector of this module's panel kernels: [`f16`]'s 8-lane
            /// accumulators, two to a 512-bit register where there is AVX-512.
            pub const PANEL_LANES: usize = if $vnni { 16 } else { 8 };

            /// `g` rows of `k` f16 values (`src`) as one f32 panel, in the order
            /// [`f16_panel_tile`] reads them: with `L` = [`PANEL_LANES`] and `full` = k / 32,
            /// value `32 i + L p + j` of row `r` at `((p · full + i) · g + r) · L + j`, so that
            /// each accumulator pass reads one contiguous run; the tails (`k` mod 32 values) after,
            /// row by row. The conversion is exact.
            ///
            /// # Safety
            /// Every row of `src` holds `k` f16 values and `dst` room for `g · k`; the CPU has
            /// the module's features.
            #[target_feature(enable = $features)]
            #[allow(unused_unsafe)]
            pub unsafe fn f16_to_panel(k: usize, src: &[&[u8]], dst: &mut [f32]) {
                let g = src.len();
                assert!(src.iter().all(|s| s.len() >= 2 * k) && dst.len() >= g * k);
                let full = k / 32;
                let d = dst.as_mut_ptr();
                for (r, row) in src.iter().enumerate() {
                    let s = row.as_ptr();
                    for p in 0..32 / PANEL_LANES {
                        for i in 0..full {
                            let from = 32 * i + PANEL_LANES * p;
                            let to = ((p * full + i) * g + r) * PANEL_LANES;
                            // SAFETY: `from + L ≤ 32 full ≤ k` values in the row, `to + L ≤
                            // 32 full · g` in `dst`; the 512-bit branch only in the module
                            // compiled with avx512f.
                            unsafe {
                                if $vnni {
                                    let v = _mm256_loadu_si256(s.add(2 * from) as *const __m256i);
                                    _mm512_storeu_ps(d.add(to), _mm512_cvtph_ps(v));
                                } else {
                                    let v = _mm_loadu_si128(s.add(2 * from) as *const __m128i);
                                    _mm256_storeu_ps(d.add(to), _mm256_cvtph_ps(v));
                                }
                            }
                        }
                    }
                    let tail = k - 32 * full;
                    for t in 0..tail {
                        // SAFETY: 32 full + t < k.
                        dst[32 * full * g + r * tail + t] =
                            unsafe { f16_at(s.add(2 * (32 * full + t))) };
                    }
                }
            }

            /// [`f16_tile`] on rows converted beforehand, `W` weight rows in panel `w` and `R`
            /// activation rows in panel `a` ([`f16_to_panel`]): the same products summed in
            /// the same order, so the same bits as [`f16`] per output, without a conversion in
            /// the loop (a weight tile is converted once for many activation rows, the
            /// activations once per product) and reading two sequential streams.
            ///
            /// # Safety
            /// `w` holds a panel of `W` rows and `a` one of `R` rows, of `k` values; the CPU has
            /// the module's features.
            #[target_feature(enable = $features)]
            #[allow(unused_unsafe)]
            pub unsafe fn f16_panel_tile<const W: usize, const R: usize>(
                k: usize,
                w: &[f32],
                a: &[f32],
            ) -> [[f32; R]; W] {
                assert!(w.len() >= W * k && a.len() >= R * k);
                const L: usize = PANEL_LANES;
                let full = k / 32;
                let (wp, ap) = (w.as_ptr(), a.as_ptr());
                // Per output, [`f16`]'s `(acc0 + acc1) + (acc2 + acc3)`: the pairs as they
                // complete.
                let mut pairs = [[[_mm256_setzero_ps(); 2]; R]; W];
                if $vnni {
                    // Pass p: accumulators 2p and 2p + 1 in one 512-bit register.
                    for p in 0..2 {
                        // SAFETY: avx512f in this module; `full` steps of W (R) vectors from
                        // `p · full`, in bounds of both panels.
                        unsafe {
                            let mut acc = [[_mm512_setzero_ps(); R]; W];
                            for i in p * full..(p + 1) * full {
                                let x: [__m512; W] = std::array::from_fn(|q| {
                                    _mm512_loadu_ps(wp.add((i * W + q) * L))
                                });
                                for r in 0..R {
                                    let y = _mm512_loadu_ps(ap.add((i * R + r) * L));
                                    for q in 0..W {
                                        acc[q][r] = _mm512_fmadd_ps(x[q], y, acc[q][r]);
                                    }
                                }
                            }
                            for q in 0..W {
                                for r in 0..R {
                                    let v = acc[q][r];
                                    pairs[q][r][p] = _mm256_add_ps(
                                        _mm512_castps512_ps256(v),
                                        _mm256_castpd_ps(_mm512_extractf64x4_pd(
                                            _mm512_castps_pd(v),
                                            1,
                                        )),
                                    );
                                }
                            }
                        }
                    }
                } else {
                    // AVX2's 16 registers: 2 weight rows × R activation rows, one accumulator
                    // (c) at a time.
                    for q0 in (0..W).step_by(2) {
                        let g = 2.min(W - q0);
                        let mut first = [[_mm256_setzero_ps(); R]; 2];
                        for c in 0..4 {
                            let mut acc = [[_mm256_setzero_ps(); R]; 2];
                            // SAFETY: `full` steps of W (R) vectors from `c · full`, in bounds
                            // of both panels.
                            unsafe {
                                for i in c * full..(c + 1) * full {
                                    let x: [__m256; 2] = std::array::from_fn(|q| {
                                        _mm256_loadu_ps(wp.add((i * W + q0 + q.min(g - 1)) * L))
                                    });
                                    for r in 0..R {
                                        let y = _mm256_loadu_ps(ap.add((i * R + r) * L));
                                        for q in 0..g {
                                            acc[q][r] = _mm256_fmadd_ps(x[q], y, acc[q][r]);
                                        }
                                    }
                                }
                            }
                            for q in 0..g {
                                for r in 0..R {
                                    if c % 2 == 0 {
                                        first[q][r] = acc[q][r];
                                    } else {
                                        pairs[q0 + q][r][c / 2] =
                                            _mm256_add_ps(first[q][r], acc[q][r]);
                                    }
                                }
                            }
                        }
                    }
                }
                let tail = k - 32 * full;
                let (wt, at) = (&w[32 * full * W..], &a[32 * full * R..]);
                let mut out = [[0.0f32; R]; W];
                for q in 0..W {
                    for r in 0..R {
                        let mut s = hsum_f32_8(_mm256_add_ps(pairs[q][r][0], pairs[q][r][1]));
                        for t in 0..tail {
                            s += wt[q * tail + t] * at[r * tail + t];
                        }
                        out[q][r] = s;
                    }
                }
                out
            }

            /// # Safety
            /// `w` and `a` hold `k` f32 values each; the CPU has the module's features.
            #[target_feature(enable = $features)]
            pub unsafe fn f32(k: usize, w: &[u8], a: &[u8]) -> f32 {
                assert!(w.len() >= 4 * k && a.len() >= 4 * k);
                let mut acc = [_mm256_setzero_ps(); 4];
                let (wp, ap) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
                let full = k / 32;
                // SAFETY: 32 values per step, `full` steps are in bounds.
                unsafe {
                    for i in 0..full {
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let x = _mm256_loadu_ps(wp.add(32 * i + 8 * r));
                            let y = _mm256_loadu_ps(ap.add(32 * i + 8 * r));
                            *acc = _mm256_fmadd_ps(x, y, *acc);
                        }
                    }
                }
                let sum =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut s = hsum_f32_8(sum);
                for i in 32 * full..k {
                    // SAFETY: i < k.
                    unsafe { s += *wp.add(i) * *ap.add(i) };
                }
                s
            }
        }
    };
}

x86_dots!(avx2, "avx2,fma,f16c", false);
x86_dots!(
    avx512vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    true
);
