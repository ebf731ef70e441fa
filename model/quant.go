package model

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Weight dtypes a serving backend may hold a model in (LoadRequest.Dtype,
// GGUF tensor types). Quantized types use ggml's block layouts, so that a
// GGUF file written here is read by any ggml program.
const (
	DtypeF32  = "float32"
	DtypeF16  = "float16"
	DtypeQ8_0 = "q8_0"
	DtypeQ4_0 = "q4_0"
)

// Dtypes are the weight dtypes, float32 first.
var Dtypes = []string{DtypeF32, DtypeF16, DtypeQ8_0, DtypeQ4_0}

// QuantBlock is the number of weights in one q8_0 or q4_0 block.
const QuantBlock = 32

// ggml's type ids (ggml.h) of the dtypes.
var ggmlTypeOf = map[string]uint32{DtypeF32: 0, DtypeF16: 1, DtypeQ4_0: 2, DtypeQ8_0: 8}

// GGMLType is ggml's type id of dtype.
func GGMLType(dtype string) (uint32, error) {
	t, ok := ggmlTypeOf[dtype]
	if !ok {
		return 0, fmt.Errorf("dtype %q: not one of float32, float16, q8_0, q4_0", dtype)
	}
	return t, nil
}

// DtypeOfGGML is the dtype of ggml type id t.
func DtypeOfGGML(t uint32) (string, error) {
	for d, id := range ggmlTypeOf {
		if id == t {
			return d, nil
		}
	}
	return "", fmt.Errorf("ggml type %d: not one of F32, F16, Q4_0, Q8_0", t)
}

// DtypeBytes is the size in bytes of n weights (a row's length, a
// multiple of QuantBlock for the quantized types) held in dtype.
func DtypeBytes(dtype string, n int) int {
	switch dtype {
	case DtypeF16:
		return 2 * n
	case DtypeQ8_0:
		return n / QuantBlock * 34
	case DtypeQ4_0:
		return n / QuantBlock * 18
	default:
		return 4 * n
	}
}

// Quantizable reports whether rows of length n can be held in dtype
// (quantized types need whole blocks).
func Quantizable(dtype string, n int) bool {
	switch dtype {
	case DtypeQ8_0, DtypeQ4_0:
		return n > 0 && n%QuantBlock == 0
	default:
		return true
	}
}

// Quantize encodes x (rows of length rowLen) in dtype: float32 and
// float16 little-endian, q8_0 and q4_0 in ggml's blocks (a float16 scale
// then 32 8-bit or 16 bytes of 4-bit values), quantized the way ggml's
// reference quantizer does.
func Quantize(dtype string, x []float32, rowLen int) ([]byte, error) {
	if !Quantizable(dtype, rowLen) || len(x)%max(rowLen, 1) != 0 {
		return nil, fmt.Errorf("quantize %d values in rows of %d as %s: rows must be whole blocks of %d", len(x), rowLen, dtype, QuantBlock)
	}
	out := make([]byte, 0, DtypeBytes(dtype, len(x)))
	switch dtype {
	case DtypeF32:
		for _, v := range x {
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(v))
		}
	case DtypeF16:
		for _, v := range x {
			out = binary.LittleEndian.AppendUint16(out, Float16(v))
		}
	case DtypeQ8_0:
		for b := 0; b < len(x); b += QuantBlock {
			blk := x[b : b+QuantBlock]
			var amax float32
			for _, v := range blk {
				amax = max(amax, float32(math.Abs(float64(v))))
			}
			d := amax / 127
			id := float32(0)
			if d != 0 {
				id = 1 / d
			}
			out = binary.LittleEndian.AppendUint16(out, Float16(d))
			for _, v := range blk {
				out = append(out, byte(int8(math.Round(float64(v*id)))))
			}
		}
	case DtypeQ4_0:
		for b := 0; b < len(x); b += QuantBlock {
			blk := x[b : b+QuantBlock]
			var amax, mx float32
			for _, v := range blk {
				if a := float32(math.Abs(float64(v))); a > amax {
					amax, mx = a, v
				}
			}
			d := mx / -8
			id := float32(0)
			if d != 0 {
				id = 1 / d
			}
			out = binary.LittleEndian.AppendUint16(out, Float16(d))
			q := func(v float32) byte { return byte(min(15, int8(v*id+8.5))) }
			for j := range QuantBlock / 2 {
				out = append(out, q(blk[j])|q(blk[j+QuantBlock/2])<<4)
			}
		}
	default:
		return nil, fmt.Errorf("quantize: unknown dtype %q", dtype)
	}
	return out, nil
}

// Dequantize decodes n values held in dtype (Quantize's layouts).
func Dequantize(dtype string, b []byte, n int) ([]float32, error) {
	if want := DtypeBytes(dtype, n); len(b) != want || n > 0 && !Quantizable(dtype, n) {
		return nil, fmt.Errorf("dequantize %d %s values: have %d bytes, want %d", n, dtype, len(b), want)
	}
	out := make([]float32, n)
	switch dtype {
	case DtypeF32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case DtypeF16:
		for i := range out {
			out[i] = Float32From16(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case DtypeQ8_0:
		for blk := range n / QuantBlock {
			p := b[blk*34:]
			d := Float32From16(binary.LittleEndian.Uint16(p))
			for j := range QuantBlock {
				out[blk*QuantBlock+j] = float32(int8(p[2+j])) * d
			}
		}
	case DtypeQ4_0:
		for blk := range n / QuantBlock {
			p := b[blk*18:]
			d := Float32From16(binary.LittleEndian.Uint16(p))
			for j := range QuantBlock / 2 {
				out[blk*QuantBlock+j] = float32(int(p[2+j]&0x0f)-8) * d
				out[blk*QuantBlock+j+QuantBlock/2] = float32(int(p[2+j]>>4)-8) * d
			}
		}
	default:
		return nil, fmt.Errorf("dequantize: unknown dtype %q", dtype)
	}
	return out, nil
}

// Float16 is v as an IEEE 754 half, rounded to nearest even (what ggml's
// conversion computes).
func Float16(v float32) uint16 {
	b := math.Float32bits(v)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case b&0x7fffffff > 0x7f800000: // NaN
		return sign | 0x7e00
	case exp >= 31: // overflow or infinity
		return sign | 0x7c00
	case exp <= 0: // subnormal or zero
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		half := uint32(1) << (shift - 1)
		r := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > half || rem == half && r&1 == 1 {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && r&1 == 1 {
		r++ // may carry into the exponent, up to infinity: still correct
	}
	return sign | uint16(r)
}

// Float32From16 is the float32 value of the IEEE 754 half h.
func Float32From16(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: normalize.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}
