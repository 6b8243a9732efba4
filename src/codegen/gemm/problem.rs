//! The GEMM view of each convolution op: sizes, and the WGSL expressions that compute the
//! address of each A and B element and of each output from the GEMM indices.
//!
//! All index arithmetic is `i32`, so that padding taps can go negative before the bounds
//! test. Every snippet reads the names the emitter defines: `k` (the reduction index),
//! `parity` (the output parity class of conv_transpose2d) and per-column values suffixed
//! with the column number.

use super::{ConvGeometry, ConvOp, GemmError};

/// One convolution as `C[m, n] = sum_k A(m, k) * B(k, n)`, run once per class.
pub(super) struct Problem {
    pub op: ConvOp,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// Independent GEMMs of the same size: the output parity classes of conv_transpose2d,
    /// 1 for the other ops.
    pub classes: u32,
    constants: Vec<(&'static str, usize)>,
    /// Walks the weight gradients' pixels with counters rather than dividing `k` by the
    /// image size, so that the size can come from the uniform block.
    pub pixel_counters: bool,
    /// conv2d only: each invocation's columns are this many neighbouring pixels of one
    /// output row ([`Self::use_row_runs`]), so a chunk of one kernel row loads each input
    /// pixel once for all of them.
    pub row_run: Option<u32>,
    /// Weight gradients only: each invocation's columns are this many neighbouring taps,
    /// whole rows of the kernel window ([`Self::use_tap_runs`]), so a chunk of four
    /// pixels of one row loads each pixel of the other image once for all of them.
    pub tap_run: Option<u32>,
    /// B is an `Rgba32Float` texture of four consecutive elements a texel, and the run and
    /// tap loads read each run of consecutive elements as whole texels
    /// ([`consecutive_loads`]).
    pub b_texels: bool,
}

/// Returns the statements `let {name}_{t} = ...` that load `count` consecutive B elements
/// from `base`, an `i32` expression that may be negative. Each is zero unless
/// `{name}_{t}_ok` is true. With `texels`, B has four elements a texel, so the loads
/// fetch the texels that cover the run and pick each element by the run's alignment.
pub(super) fn consecutive_loads(name: &str, base: &str, count: u32, texels: bool) -> String {
    let mut code = String::new();
    if !texels {
        for t in 0..count {
            code.push_str(&format!(
                "        let {name}_{t} = select(0.0, \
                 rhs_at(select(0i, {base} + {t}, {name}_{t}_ok)), {name}_{t}_ok);\n"
            ));
        }
        return code;
    }
    code.push_str(&format!(
        "        let {name}_align = ({base}) & 3;\n\
         \x20       let {name}_texel = ({base}) >> 2u;\n"
    ));
    let texel_count = (count + 2) / 4 + 1;
    for m in 0..texel_count {
        code.push_str(&format!(
            "        let {name}_v{m} = rhs_texel(max({name}_texel + {m}, 0));\n"
        ));
    }
    let lanes = ["x", "y", "z", "w"];
    for t in 0..count {
        let pick = |a: u32| format!("{name}_v{}.{}", (a + t) / 4, lanes[((a + t) % 4) as usize]);
        code.push_str(&format!(
            "        let {name}_{t} = select(0.0, select(select(select({}, {}, {name}_align == 1), \
             {}, {name}_align == 2), {}, {name}_align == 3), {name}_{t}_ok);\n",
            pick(0),
            pick(1),
            pick(2),
            pick(3)
        ));
    }
    code
}

/// An element access: its offset in the buffer and whether it is inside the tensor.
pub(super) struct Access {
    pub offset: String,
    pub valid: String,
}

impl Problem {
    pub fn new(op: ConvOp, g: &ConvGeometry) -> Self {
        let [h, w] = g.in_size;
        let [oh, ow] = g.out_size;
        let [kh, kw] = g.kernel;
        let [sy, sx] = g.stride;
        let [py, px] = g.padding;
        let (ci, co, batch) = (g.in_channels, g.out_channels, g.batch);
        let spatial = [("KH", kh), ("KW", kw), ("SY", sy), ("SX", sx), ("PY", py), ("PX", px)];
        let (m, n, k, classes, mut constants) = match op {
            ConvOp::Conv2d => {
                let c = vec![("CI", ci), ("H", h), ("W", w), ("CO", co), ("OH", oh), ("OW", ow)];
                (co, batch * oh * ow, ci * kh * kw, 1, c)
            }
            ConvOp::ConvTranspose2d => {
                let (qh, qw) = (oh.div_ceil(sy), ow.div_ceil(sx));
                let (ty, tx) = (kh.div_ceil(sy), kw.div_ceil(sx));
                let c = vec![
                    ("CI", ci),
                    ("H", h),
                    ("W", w),
                    ("CO", co),
                    ("OH", oh),
                    ("OW", ow),
                    ("QH", qh),
                    ("QW", qw),
                    ("TY", ty),
                    ("TX", tx),
                ];
                (co, batch * qh * qw, ci * ty * tx, sy * sx, c)
            }
            ConvOp::Conv2dWeightGrad => {
                // A is dy over the output pixels, B gathers x.
                let c = vec![("C2", ci), ("DH", oh), ("DW", ow), ("IH", h), ("IW", w)];
                (co, ci * kh * kw, batch * oh * ow, 1, c)
            }
            ConvOp::ConvTranspose2dWeightGrad => {
                // A is x over the input pixels, B gathers dy: the same correlation as the
                // conv2d weight gradient with the two images swapped.
                let c = vec![("C2", co), ("DH", h), ("DW", w), ("IH", oh), ("IW", ow)];
                (ci, co * kh * kw, batch * h * w, 1, c)
            }
        };
        constants.extend(spatial);
        let as_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Problem {
            op,
            m: as_u32(m),
            n: as_u32(n),
            k: as_u32(k),
            classes: as_u32(classes),
            constants,
            pixel_counters: false,
            row_run: None,
            tap_run: None,
            b_texels: false,
        }
    }

    /// Returns whether [`Self::use_row_runs`] applies with `chunk` reduction steps staged
    /// at a time. For conv2d a chunk must be one row of the kernel window. For
    /// conv_transpose2d it must be whole rows of a parity class's taps.
    pub fn row_runs_fit(&self, chunk: u32) -> bool {
        let chunk = chunk as usize;
        match self.op {
            ConvOp::Conv2d => self.constant("KW") == chunk,
            ConvOp::ConvTranspose2d => {
                let (ty, tx) = (self.constant("TY"), self.constant("TX"));
                chunk % tx == 0 && (ty * tx) % chunk == 0
            }
            _ => false,
        }
    }

    /// Gives each invocation `run` neighbouring pixels of one output row as its columns
    /// (of one parity class for conv_transpose2d). The columns walk the rows padded to a
    /// multiple of `run` (`OWP` or `QWP`), so that no run crosses a row, and the padding
    /// columns are no outputs. Needs [`Self::row_runs_fit`].
    pub fn use_row_runs(&mut self, run: u32) {
        let (rows, width, name) = match self.op {
            ConvOp::ConvTranspose2d => (self.constant("QH"), self.constant("QW"), "QWP"),
            _ => (self.constant("OH"), self.constant("OW"), "OWP"),
        };
        let batch = self.n as usize / (rows * width);
        let padded = width.next_multiple_of(run as usize);
        self.n = u32::try_from(batch * rows * padded).unwrap_or(u32::MAX);
        self.constants.push((name, padded));
        self.row_run = Some(run);
    }

    /// Returns whether [`Self::use_tap_runs`] applies with `chunk` steps staged at a time
    /// and `run` columns per invocation. It needs a weight gradient whose A rows are
    /// vectors ([`Self::a_rows_are_vectors`]), so that a chunk of 4 steps is 4 pixels of
    /// one row. The runs must be whole rows of the kernel window.
    pub fn tap_runs_fit(&self, chunk: u32, run: u32) -> bool {
        let weight_grad =
            matches!(self.op, ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad);
        let kw = self.constant("KW") as u32;
        let rows_fit = self.a_rows_are_vectors() || self.pixel_counters;
        weight_grad && chunk == 4 && rows_fit && run % kw == 0
    }

    /// Gives each invocation `run` neighbouring taps as its columns, starting at a
    /// multiple of `run`. Needs [`Self::tap_runs_fit`]. The reduction walks the pixel
    /// rows padded to `DWP`, a multiple of 4, so that no chunk crosses a row. The
    /// padding pixels read A as 0.
    pub fn use_tap_runs(&mut self, run: u32) {
        let (dh, dw) = (self.constant("DH"), self.constant("DW"));
        let padded = dw.next_multiple_of(4);
        let batch = self.k as usize / (dh * dw);
        self.k = u32::try_from(batch * dh * padded).unwrap_or(u32::MAX);
        self.constants.push(("DWP", padded));
        self.tap_run = Some(run);
    }

    /// Returns the A element of row `row` at step `kk` of a chunk with tap runs and
    /// scalar A loads: pixel `chunk_col + kk` of the chunk's row, 0 past the row's end.
    pub fn tap_a_access(&self, row: &str, kk: u32) -> Access {
        Access {
            offset: format!("aoff + {kk} + {row} * (DH * DW)"),
            valid: format!("chunk_col + {kk} < DW"),
        }
    }

    /// Statements that decode a run of taps from its first column `c0` (already
    /// defined): `col{j}` and `live{j}`. For each kernel row `r` of the run they also
    /// define its offset in the other image (`tbase{r}`), its tap row (`tky{r}`) and
    /// whether it is live (`tlive{r}`).
    pub fn tap_setup(&self, run: u32) -> String {
        let mut code = String::new();
        for j in 0..run {
            code.push_str(&format!("    let col{j} = c0 + {j};\n    let live{j} = col{j} < N;\n"));
        }
        for r in 0..run / self.constant("KW") as u32 {
            code.push_str(&format!(
                "    let tc{r} = c0 + {r} * KW;\n\
                 \x20   let tlive{r} = tc{r} < N;\n\
                 \x20   let tky{r} = (tc{r} / KW) % KH;\n\
                 \x20   let tbase{r} = (tc{r} / (KH * KW)) * (IH * IW) + tky{r} * IW;\n"
            ));
        }
        code
    }

    /// Statements after [`Self::step_setup`] of a chunk's first pixel (`y`, `x` and
    /// `boff`): the loads `u{r}_{t}` of the other image at column `x + t` of tap row `r`,
    /// every value the chunk's four pixels and the run's taps multiply.
    pub fn tap_loads(&self, run: u32) -> String {
        let kw = self.constant("KW") as u32;
        let inputs = 3 * self.constant("SX") as u32 + kw;
        let mut code = String::new();
        for r in 0..run / kw {
            code.push_str(&format!(
                "        let trow{r} = tlive{r} && u32(y + tky{r}) < u32(IH);\n"
            ));
            for t in 0..inputs {
                code.push_str(&format!(
                    "        let u{r}_{t}_ok = trow{r} && u32(x + {t}) < u32(IW);\n"
                ));
            }
            let base = format!("boff + tbase{r}");
            code.push_str(&consecutive_loads(&format!("u{r}"), &base, inputs, self.b_texels));
        }
        code
    }

    /// Returns the name of the value that column `j` multiplies at step `kk` of a chunk,
    /// among the loads of [`Self::tap_loads`].
    pub fn tap_input(&self, j: u32, kk: u32) -> String {
        let kw = self.constant("KW") as u32;
        format!("u{}_{}", j / kw, kk * self.constant("SX") as u32 + j % kw)
    }

    /// Statements that advance the pixel counters by a chunk of four pixels of one row.
    pub fn chunk_advance(&self) -> &'static str {
        if !self.pixel_counters {
            return "";
        }
        "        kx += 4;\n\
         \x20       let row_done = kx == DWP;\n\
         \x20       kx = select(kx, 0, row_done);\n\
         \x20       ky = select(ky, ky + 1, row_done);\n\
         \x20       let image_done = ky == DH;\n\
         \x20       ky = select(ky, 0, image_done);\n\
         \x20       kb = select(kb, kb + 1, image_done);\n"
    }

    /// Statements that decode a run of pixels from its first column `c0` (already
    /// defined): `live{j}` for each of the `run` columns, and what the loads and the
    /// stores of [`Self::run_loads`] and [`Self::run_output_offset`] read.
    pub fn run_setup(&self, run: u32) -> String {
        let mut code = match self.op {
            ConvOp::ConvTranspose2d => String::from(
                "    let b = c0 / (QH * QWP);\n\
                 \x20   let q = c0 % (QH * QWP);\n\
                 \x20   let oy = (q / QWP) * SY + ry;\n\
                 \x20   let qx0 = q % QWP;\n\
                 \x20   let run_live = c0 < N && oy < OH;\n\
                 \x20   let y0 = q / QWP + dy0;\n\
                 \x20   let x0 = qx0 + dx0 - (TX - 1);\n\
                 \x20   let base = b * (CI * H * W) + y0 * W + x0;\n",
            ),
            _ => String::from(
                "    let b = c0 / (OH * OWP);\n\
                 \x20   let pix = c0 % (OH * OWP);\n\
                 \x20   let oy = pix / OWP;\n\
                 \x20   let ox0 = pix % OWP;\n\
                 \x20   let run_live = c0 < N;\n\
                 \x20   let y0 = oy * SY - PY;\n\
                 \x20   let x0 = ox0 * SX - PX;\n\
                 \x20   let base = b * (CI * H * W) + y0 * W + x0;\n",
            ),
        };
        for j in 0..run {
            let live = match self.op {
                ConvOp::ConvTranspose2d => format!("(qx0 + {j}) * SX + rx < OW"),
                _ => format!("ox0 + {j} < OW"),
            };
            code.push_str(&format!("    let live{j} = run_live && {live};\n"));
        }
        code
    }

    /// Returns the number of input pixels of one kernel row that a run of `run` columns
    /// reads: `(run - 1) * SX + KW` for conv2d, `run + TX - 1` for conv_transpose2d.
    pub fn run_inputs(&self, run: u32) -> u32 {
        match self.op {
            ConvOp::ConvTranspose2d => run + self.constant("TX") as u32 - 1,
            _ => (run - 1) * self.constant("SX") as u32 + self.constant("KW") as u32,
        }
    }

    /// Returns the number of kernel rows that a chunk of `chunk` steps covers.
    fn chunk_rows(&self, chunk: u32) -> u32 {
        match self.op {
            ConvOp::ConvTranspose2d => chunk / self.constant("TX") as u32,
            _ => 1,
        }
    }

    /// Statements at the top of a chunk of `chunk` steps starting at reduction step
    /// `k0`: the loads `u{r}_{t}` of the input pixels `x0 + t` of each kernel row `r` of
    /// the chunk, every value the run's columns multiply.
    pub fn run_loads(&self, run: u32, chunk: u32) -> String {
        let mut code = match self.op {
            // Tap row ty of the class reads input row y0 - ty.
            ConvOp::ConvTranspose2d => String::from(
                "        let ci = k0 / (TY * TX);\n\
                 \x20       let ty0 = (k0 / TX) % TY;\n",
            ),
            _ => String::from(
                "        let row_k = k0 / KW;\n\
                 \x20       let ci = row_k / KH;\n\
                 \x20       let ky = row_k % KH;\n",
            ),
        };
        for r in 0..self.chunk_rows(chunk) {
            let y = match self.op {
                ConvOp::ConvTranspose2d => format!("y0 - (ty0 + {r})"),
                _ => "y0 + ky".to_string(),
            };
            code.push_str(&format!(
                "        let row{r}_ok = run_live && u32({y}) < u32(H);\n\
                 \x20       let roff{r} = base + ci * (H * W) + ({y} - y0) * W;\n"
            ));
            let inputs = self.run_inputs(run);
            for t in 0..inputs {
                code.push_str(&format!(
                    "        let u{r}_{t}_ok = row{r}_ok && u32(x0 + {t}) < u32(W);\n"
                ));
            }
            let base = format!("roff{r}");
            code.push_str(&consecutive_loads(&format!("u{r}"), &base, inputs, self.b_texels));
        }
        code
    }

    /// Returns the name of the input pixel that column `j` multiplies at step `kk` of a
    /// chunk, among the loads of [`Self::run_loads`].
    pub fn run_input(&self, j: u32, kk: u32) -> String {
        match self.op {
            // Step kk is tap (ty0 + kk / TX, kk % TX), which reads input column
            // qx0 + j + dx0 - tx, that is x0 + j + TX - 1 - tx.
            ConvOp::ConvTranspose2d => {
                let tx = self.constant("TX") as u32;
                format!("u{}_{}", kk / tx, j + tx - 1 - kk % tx)
            }
            _ => format!("u0_{}", j * self.constant("SX") as u32 + kk),
        }
    }

    /// Returns the offset of column `j` of a run in `dst`, less the row's part
    /// ([`Self::output_row_stride`] times the row).
    pub fn run_output_offset(&self, j: u32) -> String {
        match self.op {
            ConvOp::ConvTranspose2d => {
                format!("b * (CO * OH * OW) + oy * OW + (qx0 + {j}) * SX + rx")
            }
            _ => format!("b * (CO * OH * OW) + oy * OW + ox0 + {j}"),
        }
    }

    /// Returns whether a conv_transpose2d with row runs reads each tap row of a parity
    /// class from one `vec4<f32>` of the weight, a row of its 4x4 window. That needs
    /// strides of 1 or 2, so every tap of the class is inside the window and the row's
    /// components are known: all four at stride 1, `x, z` or `y, w` at stride 2.
    pub fn class_rows_are_vectors(&self) -> bool {
        let window = self.constant("KH") == 4 && self.constant("KW") == 4;
        let stride = (self.constant("SY"), self.constant("SX"));
        self.op == ConvOp::ConvTranspose2d
            && self.row_run.is_some()
            && window
            && matches!(stride, (1, 1) | (2, 2))
    }

    /// Returns the taps of one kernel row in a conv_transpose2d parity class, `TX` (1 for
    /// the other ops).
    pub fn class_taps_per_row(&self) -> u32 {
        (self.constant("TX") as u32).max(1)
    }

    /// Returns the A value of tap `step` of a class's tap row, from the row's vec4
    /// `av{r}` ([`Self::class_rows_are_vectors`]). At stride 2 the class's first tap
    /// column `kx0` is 0 or 1.
    pub fn class_tap(&self, r: usize, step: u32) -> String {
        const PARTS: [&str; 4] = ["x", "y", "z", "w"];
        if self.constant("SX") == 1 {
            format!("av{r}.{}", PARTS[step as usize])
        } else {
            let even = PARTS[2 * step as usize];
            let odd = PARTS[2 * step as usize + 1];
            format!("select(av{r}.{even}, av{r}.{odd}, kx0 == 1)")
        }
    }

    /// Returns the size `name` of [`Self::constants`].
    fn constant(&self, name: &str) -> usize {
        self.constants.iter().find(|(n, _)| *n == name).map_or(0, |&(_, v)| v)
    }

    /// Returns whether the four reduction steps from any multiple of 4 read four
    /// consecutive A elements of a row, from an offset that is a multiple of 4, and `K`
    /// is a multiple of 4. conv2d reads its weight row-major with `K = CI * KH * KW`, so
    /// that holds when `KH * KW` is a multiple of 4. The weight gradients read an image
    /// along its pixels, which holds when its rows (`DW`) are a multiple of 4 long.
    /// conv_transpose2d steps through the weight's taps in parity classes, never in a row.
    pub fn a_rows_are_vectors(&self) -> bool {
        match self.op {
            ConvOp::Conv2d => (self.constant("KH") * self.constant("KW")) % 4 == 0,
            ConvOp::ConvTranspose2d => false,
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => {
                self.constant("DW") % 4 == 0
            }
        }
    }

    /// Returns the op's sizes as `(name, value)` pairs, declared as `i32` constants in the shader.
    pub fn constants(&self) -> &[(&'static str, usize)] {
        &self.constants
    }

    /// Returns whether the size `name` can be read from the uniform block without slowing
    /// the `k` loop: it is no divisor there. The kernel's taps, strides and padding stay
    /// constants, and so does the weight gradients' image size unless pixel counters
    /// replace the division by it.
    pub fn is_runtime(&self, name: &str) -> bool {
        match self.op {
            ConvOp::Conv2d | ConvOp::ConvTranspose2d => {
                !matches!(name, "KH" | "KW" | "SY" | "SX" | "PY" | "PX" | "TY" | "TX")
            }
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => {
                let image = matches!(name, "K" | "DH" | "DW");
                (self.pixel_counters || !image)
                    && !matches!(name, "KH" | "KW" | "SY" | "SX" | "PY" | "PX")
            }
        }
    }

    /// Statements before the `k` loop: the pixel counters of the weight gradients.
    pub fn loop_setup(&self) -> &'static str {
        match self.op {
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad if self.pixel_counters => {
                "    // The image, row and column of reduction step k.\n\
                 \x20   var kb = 0i;\n\
                 \x20   var ky = 0i;\n\
                 \x20   var kx = 0i;\n"
            }
            _ => "",
        }
    }

    /// Statements at the end of each step of the `k` loop: advance the pixel counters.
    pub fn step_advance(&self) -> &'static str {
        match self.op {
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad if self.pixel_counters => {
                "        kx += 1;\n\
                 \x20       let row_done = kx == DW;\n\
                 \x20       kx = select(kx, 0, row_done);\n\
                 \x20       ky = select(ky, ky + 1, row_done);\n\
                 \x20       let image_done = ky == DH;\n\
                 \x20       ky = select(ky, 0, image_done);\n\
                 \x20       kb = select(kb, kb + 1, image_done);\n"
            }
            _ => "",
        }
    }

    /// Statements run once per workgroup after `parity` is known.
    pub fn class_setup(&self) -> &'static str {
        match self.op {
            ConvOp::ConvTranspose2d => {
                "    // Output rows oy = qy * SY + ry are reached by the taps ky = ky0 + ty * SY,\n\
                 \x20   // from input rows iy = qy + dy0 - ty.\n\
                 \x20   let ry = parity / SX;\n\
                 \x20   let rx = parity % SX;\n\
                 \x20   let ky0 = (ry + PY) % SY;\n\
                 \x20   let kx0 = (rx + PX) % SX;\n\
                 \x20   let dy0 = (ry + PY - ky0) / SY;\n\
                 \x20   let dx0 = (rx + PX - kx0) / SX;\n"
            }
            _ => "",
        }
    }

    /// Statements that decode column `col{j}` (already defined) into the values its loads and
    /// its store need, including `live{j}`, whether the column is an output at all.
    pub fn column_setup(&self, j: u32) -> String {
        match self.op {
            ConvOp::Conv2d => format!(
                "    let live{j} = col{j} < N;\n\
                 \x20   let b{j} = col{j} / (OH * OW);\n\
                 \x20   let pix{j} = col{j} % (OH * OW);\n\
                 \x20   let y{j} = (pix{j} / OW) * SY - PY;\n\
                 \x20   let x{j} = (pix{j} % OW) * SX - PX;\n\
                 \x20   let base{j} = b{j} * (CI * H * W) + y{j} * W + x{j};\n"
            ),
            ConvOp::ConvTranspose2d => format!(
                "    let b{j} = col{j} / (QH * QW);\n\
                 \x20   let q{j} = col{j} % (QH * QW);\n\
                 \x20   let oy{j} = (q{j} / QW) * SY + ry;\n\
                 \x20   let ox{j} = (q{j} % QW) * SX + rx;\n\
                 \x20   let live{j} = col{j} < N && oy{j} < OH && ox{j} < OW;\n\
                 \x20   let y{j} = q{j} / QW + dy0;\n\
                 \x20   let x{j} = q{j} % QW + dx0;\n\
                 \x20   let base{j} = b{j} * (CI * H * W) + y{j} * W + x{j};\n"
            ),
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => format!(
                "    let live{j} = col{j} < N;\n\
                 \x20   let ky{j} = (col{j} / KW) % KH;\n\
                 \x20   let kx{j} = col{j} % KW;\n\
                 \x20   let base{j} = (col{j} / (KH * KW)) * (IH * IW) + ky{j} * IW + kx{j};\n"
            ),
        }
    }

    /// Statements at the top of each step of the `k` loop, shared by all loads of the step.
    pub fn step_setup(&self) -> &'static str {
        match self.op {
            ConvOp::Conv2d => {
                "        let ci = k / (KH * KW);\n\
                 \x20       let ky = (k / KW) % KH;\n\
                 \x20       let kx = k % KW;\n\
                 \x20       let koff = ci * (H * W) + ky * W + kx;\n"
            }
            ConvOp::ConvTranspose2d => {
                "        let ci = k / (TY * TX);\n\
                 \x20       let ty = (k / TX) % TY;\n\
                 \x20       let tx = k % TX;\n\
                 \x20       let ky = ky0 + ty * SY;\n\
                 \x20       let kx = kx0 + tx * SX;\n\
                 \x20       let tap = ky < KH && kx < KW;\n\
                 \x20       let koff = ci * (H * W) - ty * W - tx;\n\
                 \x20       let aoff = ci * (CO * KH * KW) + ky * KW + kx;\n"
            }
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad if self.pixel_counters => {
                "        let b = kb;\n\
                 \x20       let pix = ky * DW + kx;\n\
                 \x20       let y = ky * SY - PY;\n\
                 \x20       let x = kx * SX - PX;\n\
                 \x20       let aoff = b * (M * DH * DW) + pix;\n\
                 \x20       let boff = b * (C2 * IH * IW) + y * IW + x;\n"
            }
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => {
                "        let b = k / (DH * DW);\n\
                 \x20       let pix = k % (DH * DW);\n\
                 \x20       let y = (pix / DW) * SY - PY;\n\
                 \x20       let x = (pix % DW) * SX - PX;\n\
                 \x20       let aoff = b * (M * DH * DW) + pix;\n\
                 \x20       let boff = b * (C2 * IH * IW) + y * IW + x;\n"
            }
        }
    }

    /// Returns the A element of row `row` (an `i32` expression) at step `k`.
    pub fn a_access(&self, row: &str) -> Access {
        match self.op {
            ConvOp::Conv2d => Access { offset: format!("{row} * K + k"), valid: String::new() },
            ConvOp::ConvTranspose2d => {
                Access { offset: format!("aoff + {row} * (KH * KW)"), valid: "tap".to_string() }
            }
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => {
                Access { offset: format!("aoff + {row} * (DH * DW)"), valid: String::new() }
            }
        }
    }

    /// Statements defining `by{j}`, `bx{j}` (the input pixel) before [`Self::b_access`].
    pub fn b_pixel(&self, j: u32) -> String {
        match self.op {
            ConvOp::Conv2d => {
                format!("        let by{j} = y{j} + ky;\n        let bx{j} = x{j} + kx;\n")
            }
            ConvOp::ConvTranspose2d => {
                format!("        let by{j} = y{j} - ty;\n        let bx{j} = x{j} - tx;\n")
            }
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => {
                format!("        let by{j} = y + ky{j};\n        let bx{j} = x + kx{j};\n")
            }
        }
    }

    /// Returns the B element of column `j` at step `k`, after [`Self::b_pixel`].
    pub fn b_access(&self, j: u32) -> Access {
        let (rows, cols, offset) = match self.op {
            ConvOp::Conv2d | ConvOp::ConvTranspose2d => ("H", "W", format!("base{j} + koff")),
            _ => ("IH", "IW", format!("boff + base{j}")),
        };
        let valid = format!("live{j} && u32(by{j}) < u32({rows}) && u32(bx{j}) < u32({cols})");
        Access { offset, valid }
    }

    /// Returns the offset of column `j` in `dst`, less the row's part
    /// ([`Self::output_row_stride`] times the row).
    pub fn output_offset(&self, j: u32) -> String {
        match self.op {
            ConvOp::Conv2d => format!("b{j} * (CO * OH * OW) + pix{j}"),
            ConvOp::ConvTranspose2d => format!("b{j} * (CO * OH * OW) + oy{j} * OW + ox{j}"),
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => format!("col{j}"),
        }
    }

    /// Returns the distance in `dst` between two output rows of one column.
    pub fn output_row_stride(&self) -> &'static str {
        match self.op {
            ConvOp::Conv2d | ConvOp::ConvTranspose2d => "OH * OW",
            ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad => "N",
        }
    }
}

/// Checks that `g` is a geometry `op` can run: sizes at least 1, the output size from the
/// op's shape rule, and every buffer index within `i32`.
pub(super) fn check_geometry(op: ConvOp, g: &ConvGeometry) -> Result<(), GemmError> {
    let invalid = |reason: String| Err(GemmError::InvalidGeometry { op: op.name(), reason });
    let dims = [
        g.batch,
        g.in_channels,
        g.out_channels,
        g.in_size[0],
        g.in_size[1],
        g.out_size[0],
        g.out_size[1],
        g.kernel[0],
        g.kernel[1],
        g.stride[0],
        g.stride[1],
    ];
    if dims.contains(&0) {
        return invalid(format!("every size, kernel and stride must be at least 1, got {g:?}"));
    }
    for d in 0..2 {
        let (i, o, k, s, p) = (g.in_size[d], g.out_size[d], g.kernel[d], g.stride[d], g.padding[d]);
        let ok = match op {
            ConvOp::Conv2d | ConvOp::Conv2dWeightGrad => {
                i + 2 * p >= k && o == (i + 2 * p - k) / s + 1
            }
            // The output size may exceed the plain rule by an output padding below the
            // stride, as when conv_transpose2d computes the input gradient of a conv2d.
            ConvOp::ConvTranspose2d | ConvOp::ConvTranspose2dWeightGrad => {
                let full = (i - 1) * s + k;
                o + 2 * p >= full && o + 2 * p < full + s
            }
        };
        if !ok {
            return invalid(format!(
                "output size {o} along axis {d} does not follow from input {i}, kernel {k}, \
                 stride {s} and padding {p}"
            ));
        }
    }
    let elements = |c: usize, s: [usize; 2]| g.batch * c * s[0] * s[1];
    let largest = elements(g.in_channels, g.in_size)
        .max(elements(g.out_channels, g.out_size))
        .max(g.in_channels * g.out_channels * g.kernel[0] * g.kernel[1]);
    if largest > i32::MAX as usize {
        return invalid(format!("a tensor of {largest} elements exceeds the i32 index range"));
    }
    Ok(())
}
