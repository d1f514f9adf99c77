;; Paged decode attention for the gateway's KV cache (gateway/paged-kv.ts), in WebAssembly with 128-bit SIMD.
;; Assembled into paged-attention.wasm by `node scripts/build-wasm.mjs` (wabt); a test checks the two agree.
;;
;; The cache is a pool of blocks of BLOCK = 16 positions (vLLM's paged attention). A block holds every layer:
;; layer l's keys [16][d] at +l*2*16*d*4 bytes, its values [16][d] right after the keys (+vOff). A sequence is a
;; table of block addresses; position j lives in block table[j >> 4], row j & 15. `attend` reads only the
;; sequence's own positions 0..len-1, so a row's cost is its length, whatever the other rows hold.
;;
;; Numbers: scores are f32 dot products (4 lanes, lanes summed (0+1)+(2+3)) times 1/sqrt(hs); softmax subtracts the
;; row's max, takes e^x in f64 (error < 1e-14) rounded to f32, sums in f64 and weighs each value by e/sum rounded
;; to f32; the weighted sum is f32, position by position. A row's result depends only on its own query and cache.
(module
  (memory (export "memory") 1 65536)

  ;; e^x in f64 (x <= 0 here): Cody-Waite reduction to |r| <= ln2/2, degree-11 Taylor (error < 1e-14), 2^n by bits.
  (func $exp (param $x f64) (result f64)
    (local $n f64) (local $r f64) (local $p f64)
    (if (f64.lt (local.get $x) (f64.const -64)) (then (return (f64.const 0))))
    (local.set $n (f64.nearest (f64.mul (local.get $x) (f64.const 1.4426950408889634))))
    (local.set $r (f64.sub (f64.sub (local.get $x) (f64.mul (local.get $n) (f64.const 0.6931471803691238)))
                           (f64.mul (local.get $n) (f64.const 1.9082149292705877e-10))))
    (local.set $p (f64.const 2.505210838544172e-8))
    (local.set $p (f64.add (f64.const 2.755731922398589e-7) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 2.7557319223985893e-6) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 2.48015873015873e-5) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 1.984126984126984e-4) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 1.388888888888889e-3) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 8.333333333333333e-3) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 4.1666666666666664e-2) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 0.16666666666666666) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 0.5) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 1) (f64.mul (local.get $p) (local.get $r))))
    (local.set $p (f64.add (f64.const 1) (f64.mul (local.get $p) (local.get $r))))
    (f64.mul (local.get $p)
      (f64.reinterpret_i64 (i64.shl (i64.add (i64.trunc_f64_s (local.get $n)) (i64.const 1023)) (i64.const 52)))))

;; One query row (all heads) against one sequence's cached positions 0..len-1 of one layer.
  ;; q, y: nh*hs f32 at byte addresses; table: i32 byte address of each block (BLOCK positions);
  ;; a block's layer l: keys [BLOCK][d] at +layerOff, values [BLOCK][d] after them (+vOff); scores: nh*len f32
  ;; scratch. Position-major: each cached key and value row (d floats, every head) is read once, in order, which
  ;; is what keeps a step's reads at memory speed (head by head, strided, measured 3x slower in a real step).
  (func (export "attend")
    (param $q i32) (param $y i32) (param $table i32) (param $len i32) (param $layerOff i32)
    (param $nh i32) (param $hs i32) (param $d i32) (param $vOff i32) (param $scores i32) (param $scale f32)
    (local $h i32) (local $hOff i32) (local $j i32) (local $i i32) (local $row i32) (local $at i32) (local $acc v128)
    (local $s f32) (local $max f32) (local $sum f64) (local $e f64) (local $p v128) (local $inv f64)
    (local $rowBytes i32) (local $hsBytes i32) (local $lenBytes i32) (local $yh i32)
    (local.set $rowBytes (i32.shl (local.get $d) (i32.const 2)))
    (local.set $hsBytes (i32.shl (local.get $hs) (i32.const 2)))
    (local.set $lenBytes (i32.shl (local.get $len) (i32.const 2)))
    ;; 1. scores[h][j] = (q_h . k_j,h) * scale, key rows in order
    (local.set $j (i32.const 0))
    (block $kdone (loop $kloop
      (br_if $kdone (i32.ge_u (local.get $j) (local.get $len)))
      (local.set $row (i32.add (i32.add
        (i32.load (i32.add (local.get $table) (i32.shl (i32.shr_u (local.get $j) (i32.const 4)) (i32.const 2))))
        (local.get $layerOff))
        (i32.mul (i32.and (local.get $j) (i32.const 15)) (local.get $rowBytes))))
      (local.set $h (i32.const 0))
      (block $hdone (loop $hloop
        (br_if $hdone (i32.ge_u (local.get $h) (local.get $nh)))
        (local.set $hOff (i32.mul (local.get $h) (local.get $hsBytes)))
        (local.set $acc (v128.const f32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $ddone (loop $dloop
          (br_if $ddone (i32.ge_u (local.get $i) (local.get $hsBytes)))
          (local.set $at (i32.add (local.get $hOff) (local.get $i)))
          (local.set $acc (f32x4.add (local.get $acc)
            (f32x4.mul (v128.load (i32.add (local.get $q) (local.get $at)))
                       (v128.load (i32.add (local.get $row) (local.get $at))))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br $dloop)))
        (f32.store
          (i32.add (local.get $scores) (i32.add (i32.mul (local.get $h) (local.get $lenBytes)) (i32.shl (local.get $j) (i32.const 2))))
          (f32.mul (local.get $scale)
            (f32.add (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
                     (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc))))))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $hloop)))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $kloop)))
    ;; 2. per head: softmax weights p = e^(s - max) / sum, in place
    (local.set $h (i32.const 0))
    (block $sdone (loop $sloop
      (br_if $sdone (i32.ge_u (local.get $h) (local.get $nh)))
      (local.set $row (i32.add (local.get $scores) (i32.mul (local.get $h) (local.get $lenBytes))))
      (local.set $max (f32.const -inf))
      (local.set $i (i32.const 0))
      (block $mdone (loop $mloop
        (br_if $mdone (i32.ge_u (local.get $i) (local.get $lenBytes)))
        (local.set $max (f32.max (local.get $max) (f32.load (i32.add (local.get $row) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $mloop)))
      (local.set $sum (f64.const 0))
      (local.set $i (i32.const 0))
      (block $edone (loop $eloop
        (br_if $edone (i32.ge_u (local.get $i) (local.get $lenBytes)))
        (local.set $at (i32.add (local.get $row) (local.get $i)))
        (local.set $e (f64.promote_f32 (f32.demote_f64
          (call $exp (f64.promote_f32 (f32.sub (f32.load (local.get $at)) (local.get $max)))))))
        (f32.store (local.get $at) (f32.demote_f64 (local.get $e)))
        (local.set $sum (f64.add (local.get $sum) (local.get $e)))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $eloop)))
      (local.set $inv (f64.div (f64.const 1) (local.get $sum)))
      (local.set $i (i32.const 0))
      (block $ndone (loop $nloop
        (br_if $ndone (i32.ge_u (local.get $i) (local.get $lenBytes)))
        (local.set $at (i32.add (local.get $row) (local.get $i)))
        (f32.store (local.get $at) (f32.demote_f64 (f64.mul (local.get $inv) (f64.promote_f32 (f32.load (local.get $at))))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $nloop)))
      (local.set $h (i32.add (local.get $h) (i32.const 1)))
      (br $sloop)))
    ;; 3. y_h = sum_j p[h][j] v_j,h, value rows in order
    (local.set $i (i32.const 0))
    (block $zdone (loop $zloop
      (br_if $zdone (i32.ge_u (local.get $i) (local.get $rowBytes)))
      (v128.store (i32.add (local.get $y) (local.get $i)) (v128.const f32x4 0 0 0 0))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $zloop)))
    (local.set $j (i32.const 0))
    (block $vdone (loop $vloop
      (br_if $vdone (i32.ge_u (local.get $j) (local.get $len)))
      (local.set $row (i32.add (i32.add (i32.add
        (i32.load (i32.add (local.get $table) (i32.shl (i32.shr_u (local.get $j) (i32.const 4)) (i32.const 2))))
        (local.get $layerOff)) (local.get $vOff))
        (i32.mul (i32.and (local.get $j) (i32.const 15)) (local.get $rowBytes))))
      (local.set $h (i32.const 0))
      (block $whdone (loop $whloop
        (br_if $whdone (i32.ge_u (local.get $h) (local.get $nh)))
        (local.set $hOff (i32.mul (local.get $h) (local.get $hsBytes)))
        (local.set $p (f32x4.splat (f32.load
          (i32.add (local.get $scores) (i32.add (i32.mul (local.get $h) (local.get $lenBytes)) (i32.shl (local.get $j) (i32.const 2)))))))
        (local.set $i (i32.const 0))
        (block $wdone (loop $wloop
          (br_if $wdone (i32.ge_u (local.get $i) (local.get $hsBytes)))
          (local.set $at (i32.add (local.get $hOff) (local.get $i)))
          (local.set $yh (i32.add (local.get $y) (local.get $at)))
          (v128.store (local.get $yh)
            (f32x4.add (v128.load (local.get $yh))
                       (f32x4.mul (local.get $p) (v128.load (i32.add (local.get $row) (local.get $at))))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br $wloop)))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $whloop)))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $vloop))))
)
