//! The emulated hardware: a block's shared memory by byte address, `cp.async` and `wgmma`
//! groups with their waits, the matrix descriptor, the 128-byte swizzle, the canonical operand
//! layouts and the register fragments of the PTX ISA, and `load_sw128_tile` of wgmma.cuh.

use std::collections::{HashMap, VecDeque};

/// Where the block's dynamic shared memory starts: not a multiple of 1024 (the kernels align).
pub const RAW: u32 = 0x0230;

/// Which side of each asynchronous operation happens late.
#[derive(Clone, Copy, Debug)]
pub enum Timing {
    /// Copies land at the wait that covers them; MMAs read at issue.
    CopiesLate,
    /// Copies land at issue; MMAs read shared memory at the wait that retires them.
    MmasLate,
}
pub const TIMINGS: [Timing; 2] = [Timing::CopiesLate, Timing::MmasLate];

/// A 64 x N accumulator of one warpgroup, row-major.
pub struct Acc {
    n: usize,
    v: Vec<f32>,
}

/// Row and column of accumulator (or register A) element `i` of warpgroup thread `t`.
pub fn frag_pos(t: usize, i: usize) -> (usize, usize) {
    let (warp, lane) = (t / 32, t % 32);
    (
        16 * warp + lane / 4 + 8 * ((i % 4) / 2),
        8 * (i / 4) + 2 * (lane % 4) + i % 2,
    )
}

/// A wgmma's A operand: a descriptor, or the 64 x 16 values the registers held at issue.
pub enum OperandA {
    Desc(u64),
    Regs(Vec<f32>),
}

/// One `wgmma.mma_async` m64nNk16: `accs[acc] += A · B`, B K-major or (trans_b) MN-major.
pub struct Mma {
    pub acc: usize,
    pub a: OperandA,
    pub b: u64,
    pub n: usize,
    pub trans_b: bool,
}

/// One block's shared memory (a value per 16-bit element, by byte address; NaN until written),
/// its accumulators, and its asynchronous copies and MMAs in flight.
pub struct Block {
    timing: Timing,
    smem: Vec<f32>,
    accs: Vec<Acc>,
    copies_open: Vec<(u32, [f32; 8])>,
    copies: VecDeque<Vec<(u32, [f32; 8])>>,
    /// Byte ranges no copy or store may touch (the mbarriers).
    reserved: Vec<(u32, u32)>,
    /// Cells that wgmmas in flight read (MMAs-late timing), with how many read each: a copy or
    /// store into one is a race the hardware would lose.
    pinned: HashMap<usize, u32>,
}

impl Block {
    pub fn new(timing: Timing, smem_bytes: usize) -> Self {
        Block {
            timing,
            smem: vec![f32::NAN; smem_bytes / 2],
            accs: Vec::new(),
            copies_open: Vec::new(),
            copies: VecDeque::new(),
            reserved: Vec::new(),
            pinned: HashMap::new(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn cell(&self, addr: u32) -> usize {
        assert!(
            addr.is_multiple_of(2),
            "shared address {addr:#x} not 16-bit aligned"
        );
        let i = (addr
            .checked_sub(RAW)
            .expect("shared address below the block's")
            / 2) as usize;
        assert!(
            i < self.smem.len(),
            "shared address {addr:#x} past the block's {} bytes",
            2 * self.smem.len()
        );
        i
    }
    pub fn read(&self, addr: u32) -> f32 {
        self.smem[self.cell(addr)]
    }
    pub fn write(&mut self, addr: u32, values: &[f32]) {
        let i = self.cell(addr);
        let end = addr + 2 * values.len() as u32;
        self.cell(end - 2);
        if let Some((a, b)) = self.reserved.iter().find(|(a, b)| addr < *b && *a < end) {
            panic!("a write to [{addr:#x}, {end:#x}) overlaps the reserved [{a:#x}, {b:#x})");
        }
        if (i..i + values.len()).any(|c| self.pinned.contains_key(&c)) {
            panic!("a write to [{addr:#x}, {end:#x}) while a wgmma in flight reads it");
        }
        self.smem[i..i + values.len()].copy_from_slice(values);
    }
    /// Marks `bytes` bytes at `addr` as no copy's or store's (an mbarrier's).
    pub fn reserve(&mut self, addr: u32, bytes: u32) {
        self.cell(addr);
        self.cell(addr + bytes - 2);
        self.reserved.push((addr, addr + bytes));
    }

    pub fn new_acc(&mut self, n: usize) -> usize {
        self.accs.push(Acc {
            n,
            v: vec![0.0; 64 * n],
        });
        self.accs.len() - 1
    }
    /// Accumulator element `i` of warpgroup thread `t`.
    pub fn frag(&mut self, acc: usize, t: usize, i: usize) -> &mut f32 {
        let (r, c) = frag_pos(t, i);
        let a = &mut self.accs[acc];
        assert!(
            c < a.n,
            "fragment element {i} is past the accumulator's {} columns",
            a.n
        );
        &mut a.v[r * a.n + c]
    }

    /// `cp.async.cg.shared.global [dst], [src], 16, bytes`: `src` is None for bytes = 0.
    pub fn cp_async16(&mut self, dst: u32, src: Option<&[f32]>) {
        assert!(
            dst.is_multiple_of(16),
            "cp.async destination {dst:#x} not 16-byte aligned"
        );
        let values = src.map_or([0.0; 8], |s| s[..8].try_into().unwrap());
        match self.timing {
            Timing::CopiesLate => self.copies_open.push((dst, values)),
            Timing::MmasLate => self.write(dst, &values),
        }
    }
    pub fn cp_async_commit(&mut self) {
        let group = std::mem::take(&mut self.copies_open);
        self.copies.push_back(group);
    }
    /// `cp.async.wait_group n`: every group but the newest n has landed.
    pub fn cp_async_wait(&mut self, n: usize) {
        while self.copies.len() > n {
            for (dst, values) in self.copies.pop_front().unwrap() {
                self.write(dst, &values);
            }
        }
    }

    /// The shared-memory addresses a wgmma reads: A's (64 x 16, row-major) when it comes by
    /// descriptor, then B's (16 x n, b[k][col]).
    fn operand_addrs(mma: &Mma) -> (Vec<u32>, Vec<u32>) {
        let n = mma.n;
        let a = match &mma.a {
            OperandA::Desc(d) => (0..64 * 16).map(|i| k_major(*d, i / 16, i % 16)).collect(),
            OperandA::Regs(_) => Vec::new(),
        };
        let b = (0..16 * n)
            .map(|i| {
                let (k, col) = (i / n, i % n);
                if mma.trans_b {
                    mn_major(mma.b, k, col)
                } else {
                    k_major(mma.b, col, k)
                }
            })
            .collect();
        (a, b)
    }

    /// Marks (`by` 1) or unmarks (-1) the cells a wgmma in flight reads.
    fn pin(&mut self, mma: &Mma, by: i32) {
        let (a, b) = Self::operand_addrs(mma);
        for addr in a.into_iter().chain(b) {
            let cell = self.cell(addr);
            let count = self.pinned.entry(cell).or_default();
            *count = count.checked_add_signed(by).unwrap();
            if *count == 0 {
                self.pinned.remove(&cell);
            }
        }
    }

    /// The product itself: operands gathered through their descriptors, then multiplied.
    pub fn run(&mut self, mma: Mma) {
        let n = mma.n;
        assert_eq!(
            self.accs[mma.acc].n, n,
            "an m64n{n} wgmma on another accumulator"
        );
        let (a_addrs, b_addrs) = Self::operand_addrs(&mma);
        let a: Vec<f32> = match &mma.a {
            OperandA::Desc(_) => a_addrs.iter().map(|&addr| self.read(addr)).collect(),
            OperandA::Regs(v) => v.clone(),
        };
        // b[k][col]
        let b: Vec<f32> = b_addrs.iter().map(|&addr| self.read(addr)).collect();
        let acc = &mut self.accs[mma.acc];
        for r in 0..64 {
            for c in 0..n {
                let dot: f64 = (0..16)
                    .map(|k| a[r * 16 + k] as f64 * b[k * n + c] as f64)
                    .sum();
                acc.v[r * n + c] += dot as f32;
            }
        }
    }
}

/// One warpgroup's wgmma groups: issued, committed, retired by its waits.
pub struct Wgmma {
    timing: Timing,
    open: Vec<Mma>,
    groups: VecDeque<Vec<Mma>>,
}

impl Wgmma {
    pub fn new(timing: Timing) -> Self {
        Wgmma {
            timing,
            open: Vec::new(),
            groups: VecDeque::new(),
        }
    }
    /// `wgmma.mma_async`: runs now (copies-late timing) or at the wait that retires it.
    pub fn issue(&mut self, b: &mut Block, mma: Mma) {
        match self.timing {
            Timing::CopiesLate => b.run(mma),
            Timing::MmasLate => {
                b.pin(&mma, 1);
                self.open.push(mma);
            }
        }
    }
    /// `mma_k_step<T, N>` (gemm_sm90a.cu), as also S = Q·Kᵀ of a tile: 64 of K as four
    /// m64nNk16 wgmmas on K-major A and B 32 bytes apart (descriptor + 2), one committed group.
    pub fn k_step(&mut self, b: &mut Block, acc: usize, da: u64, db: u64, n: usize) {
        self.k_step_rows(b, &[(acc, da)], db, n);
    }
    /// `mma_k_step_128rows<T>`: one K step of 64 of a 128-row tile as one group, rows 0-63
    /// (A at da.0) into acc.0 and rows 64-127 (da.1) into acc.1, against the same B.
    pub fn k_step_128rows(
        &mut self,
        b: &mut Block,
        acc: (usize, usize),
        da: (u64, u64),
        db: u64,
        n: usize,
    ) {
        self.k_step_rows(b, &[(acc.0, da.0), (acc.1, da.1)], db, n);
    }
    /// Each K16 slice in turn, for each (accumulator, A descriptor) of `rows`, against B at
    /// `db`; then the group is committed.
    fn k_step_rows(&mut self, b: &mut Block, rows: &[(usize, u64)], db: u64, n: usize) {
        for kk in 0..4 {
            for &(acc, da) in rows {
                let mma = Mma {
                    acc,
                    a: OperandA::Desc(da + 2 * kk),
                    b: db + 2 * kk,
                    n,
                    trans_b: false,
                };
                self.issue(b, mma);
            }
        }
        self.commit();
    }
    /// `wgmma.commit_group`.
    pub fn commit(&mut self) {
        let group = std::mem::take(&mut self.open);
        self.groups.push_back(group);
    }
    /// `wgmma.wait_group n`: every group but the newest n has retired.
    pub fn wait(&mut self, b: &mut Block, n: usize) {
        while self.groups.len() > n {
            for mma in self.groups.pop_front().unwrap() {
                b.pin(&mma, -1);
                b.run(mma);
            }
        }
    }
}

/// An mbarrier: the arrivals a phase expects, the arrivals and transaction bytes its current
/// phase still waits for, and the phases completed so far.
pub struct MBar {
    count: u32,
    pending: u32,
    tx: i64,
    phases: u32,
}

impl MBar {
    /// `mbarrier.init`.
    pub fn new(count: u32) -> Self {
        MBar {
            count,
            pending: count,
            tx: 0,
            phases: 0,
        }
    }
    fn complete_if_done(&mut self) {
        if self.pending == 0 && self.tx == 0 {
            self.phases += 1;
            self.pending = self.count;
        }
    }
    /// `mbarrier.arrive`.
    pub fn arrive(&mut self) {
        self.arrive_count(1);
    }
    /// `mbarrier.arrive` with a count.
    pub fn arrive_count(&mut self, count: u32) {
        assert!(self.pending >= count, "arrivals beyond the phase's count");
        self.pending -= count;
        self.complete_if_done();
    }
    /// `mbarrier.arrive.expect_tx`: `bytes` more for this phase, and an arrival.
    pub fn arrive_expect_tx(&mut self, bytes: u32) {
        self.tx += bytes as i64;
        self.arrive();
    }
    /// A copy's bytes landed (`complete_tx`). The count may go below zero: a peer CTA's
    /// multicast can land before this CTA's producer announces the phase's bytes; the phase
    /// still waits for that producer's arrival. (The PTX ISA bounds it to ±(2^20 - 1).)
    pub fn complete_tx(&mut self, bytes: u32) {
        self.tx -= bytes as i64;
        assert!(self.tx.abs() < 1 << 20, "transaction count out of range");
        self.complete_if_done();
    }
    /// `mbarrier.try_wait.parity`: whether the phase of parity `parity` has completed, i.e. the
    /// current (incomplete) phase has the other parity.
    pub fn passed(&self, parity: u32) -> bool {
        self.phases & 1 != parity
    }
}

/// What a tensor map describes, as `hopper_gemm.rs` encodes it: a row-major `[rows][k]` tensor
/// of 16-bit elements read in boxes of `box_rows` x 64 in the 128-byte swizzle, zeros past the
/// last row.
pub struct TensorMap<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub k: usize,
    pub box_rows: usize,
}

/// `cp.async.bulk.tensor.2d` (TMA) of the box at (x, y) into `dst`, as the CUDA programming guide
/// lays out the 128-byte swizzle: box row r at dst + 128r, its 16-byte chunk c at chunk
/// c ^ (r % 8) (dst 1024-aligned). Lands at once; returns the bytes for the mbarrier.
pub fn tma_load_2d(b: &mut Block, dst: u32, map: &TensorMap, x: usize, y: usize) -> u32 {
    assert!(
        dst.is_multiple_of(1024),
        "TMA destination {dst:#x}: the 128-byte swizzle needs 1024-byte alignment"
    );
    assert!(
        x.is_multiple_of(64) && x + 64 <= map.k,
        "box column {x} of {}",
        map.k
    );
    for r in 0..map.box_rows {
        for c in 0..8 {
            let row = y + r;
            let values: [f32; 8] = if row < map.rows {
                map.data[row * map.k + x + 8 * c..][..8].try_into().unwrap()
            } else {
                [0.0; 8]
            };
            let chunk = (c ^ (r % 8)) as u32;
            b.write(dst + 128 * r as u32 + 16 * chunk, &values);
        }
    }
    (map.box_rows * 128) as u32
}

/// The fields of a matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading
/// and stride byte offsets, all in bytes. Only the 128-byte swizzle with base offset 0 is in use.
pub fn decode(desc: u64) -> (u32, u32, u32) {
    assert_eq!(
        desc >> 62,
        1,
        "descriptor {desc:#x}: not the 128-byte swizzle"
    );
    assert_eq!((desc >> 49) & 7, 0, "descriptor {desc:#x}: base offset");
    let field = |shift: u32| (((desc >> shift) & 0x3FFF) << 4) as u32;
    (field(0), field(16), field(32))
}

/// The 128-byte swizzle on a shared address: bits 4-6 XOR bits 7-9.
pub fn swizzle128(addr: u32) -> u32 {
    addr ^ (((addr >> 7) & 7) << 4)
}

/// The address of element (row, k) of a K-major operand (k < 16): `((8,m),(T,2k)):((8T,SBO),(1,T))`.
pub fn k_major(desc: u64, row: usize, k: usize) -> u32 {
    let (start, _, sbo) = decode(desc);
    swizzle128(start + (row % 8) as u32 * 128 + (row / 8) as u32 * sbo + 2 * k as u32)
}

/// The address of element (k, col) of an MN-major operand (k < 16):
/// `((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))`.
pub fn mn_major(desc: u64, k: usize, col: usize) -> u32 {
    let (start, lbo, sbo) = decode(desc);
    swizzle128(
        start
            + 2 * (col % 64) as u32
            + (col / 64) as u32 * lbo
            + (k % 8) as u32 * 128
            + (k / 8) as u32 * sbo,
    )
}

/// `sw128_desc(addr)`, as wgmma.cuh builds it.
pub fn sw128_desc(addr: u32) -> u64 {
    ((addr & 0x3FFFF) >> 4) as u64 | (1u64 << 16) | ((1024u64 >> 4) << 32) | (1u64 << 62)
}

/// `load_sw128_tile<ROWS, THREADS>(dst, src, ld, live)`, `src` an element offset into `global`.
pub fn load_sw128_tile(
    b: &mut Block,
    rows: usize,
    threads: usize,
    dst: u32,
    global: &[f32],
    src: usize,
    ld: usize,
    live: isize,
) {
    let step = threads / 8;
    assert!(
        step.is_multiple_of(8) && rows.is_multiple_of(step),
        "whole swizzle groups, whole passes"
    );
    for tid in 0..threads {
        let c = tid & 7;
        let r0 = tid >> 3;
        let swizzled = ((c ^ (r0 & 7)) << 4) as u32;
        for i in 0..rows / step {
            let r = r0 + step * i;
            let ok = (r as isize) < live;
            let from = ok.then(|| &global[src + r * ld + c * 8..]);
            b.cp_async16(dst + r as u32 * 128 + swizzled, from);
        }
    }
}
