package model

import (
	"fmt"
	"slices"
	"strings"
)

// EinsumMatMul is Ops.Einsum from the other operations, for a backend
// without one of its own: each operand's axes are permuted to [batch,
// free, contracted], the two multiplied as batched matrices (MatMulT),
// and the product permuted to the output's order. Every index must
// appear in both operands or in the output (nothing is summed over one
// operand alone); a spec that breaks this panics.
func EinsumMatMul[T any](o Ops[T], spec string, a, b T) T {
	in, outSpec, _ := strings.Cut(spec, "->")
	as, bs, _ := strings.Cut(in, ",")
	ad, bd := o.Shape(a), o.Shape(b)
	if len([]rune(as)) != len(ad) || len([]rune(bs)) != len(bd) {
		panic(fmt.Sprintf("model: einsum %q of %v and %v", spec, ad, bd))
	}
	dim := map[rune]int{}
	for i, l := range []rune(as) {
		dim[l] = ad[i]
	}
	for i, l := range []rune(bs) {
		if d, ok := dim[l]; ok && d != bd[i] {
			panic(fmt.Sprintf("model: einsum %q: %c is %d and %d", spec, l, d, bd[i]))
		}
		dim[l] = bd[i]
	}
	has := strings.ContainsRune
	var batch, afree, bfree, contract []rune
	for _, l := range as {
		switch {
		case has(bs, l) && has(outSpec, l):
			batch = append(batch, l)
		case has(bs, l):
			contract = append(contract, l)
		case has(outSpec, l):
			afree = append(afree, l)
		default:
			panic(fmt.Sprintf("model: einsum %q: %c is summed over one operand", spec, l))
		}
	}
	for _, l := range bs {
		if !has(as, l) {
			if !has(outSpec, l) {
				panic(fmt.Sprintf("model: einsum %q: %c is summed over one operand", spec, l))
			}
			bfree = append(bfree, l)
		}
	}
	perm := func(s string, order []rune) []int {
		p := make([]int, len(order))
		for i, l := range order {
			p[i] = strings.IndexRune(s, l)
		}
		return p
	}
	prod := func(ls []rune) int {
		n := 1
		for _, l := range ls {
			n *= dim[l]
		}
		return n
	}
	nb, nm, nk, nn := prod(batch), prod(afree), prod(contract), prod(bfree)
	at := o.Reshape(o.Transpose(a, perm(as, slices.Concat(batch, afree, contract))...), nb, nm, nk)
	bt := o.Reshape(o.Transpose(b, perm(bs, slices.Concat(batch, bfree, contract))...), nb, nn, nk)
	mid := slices.Concat(batch, afree, bfree)
	midDims := make([]int, len(mid))
	for i, l := range mid {
		midDims[i] = dim[l]
	}
	return o.Transpose(o.Reshape(o.MatMulT(at, bt), midDims...), perm(string(mid), []rune(outSpec))...)
}
