package onnx

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Sym is a dynamic axis of a graph: its name (as the ONNX file's
// dim_param) and the sizes tracing uses. Grid are three sizes every
// combination of which is traced; Check is one more size, where the
// fitted polynomials must give what the definition did.
type Sym struct {
	Name  string
	Grid  [3]int
	Check int
}

// term is coef times the product of each dynamic axis raised to exp.
type term struct {
	coef int64
	exp  []int
}

// poly is a size as a polynomial of a graph's dynamic axes (degree at
// most 2 in each): a constant when it has no term with a nonzero
// exponent.
type poly []term

func (p poly) constant() (int64, bool) {
	var c int64
	for _, t := range p {
		for _, e := range t.exp {
			if e != 0 {
				return 0, false
			}
		}
		c += t.coef
	}
	return c, true
}

func (p poly) eval(vals []int) int64 {
	var s int64
	for _, t := range p {
		v := t.coef
		for i, e := range t.exp {
			for range e {
				v *= int64(vals[i])
			}
		}
		s += v
	}
	return s
}

// single reports whether p is c*sym for one axis and c > 0.
func (p poly) single() (sym int, c int64, ok bool) {
	if len(p) != 1 || p[0].coef <= 0 {
		return 0, 0, false
	}
	sym = -1
	for i, e := range p[0].exp {
		switch {
		case e == 0:
		case e == 1 && sym < 0:
			sym = i
		default:
			return 0, 0, false
		}
	}
	return sym, p[0].coef, sym >= 0
}

func (p poly) String(syms []Sym) string {
	if c, ok := p.constant(); ok {
		return strconv.FormatInt(c, 10)
	}
	var parts []string
	for _, t := range p {
		var f []string
		if t.coef != 1 {
			f = append(f, strconv.FormatInt(t.coef, 10))
		}
		for i, e := range t.exp {
			for range e {
				f = append(f, syms[i].Name)
			}
		}
		if len(f) == 0 {
			f = append(f, strconv.FormatInt(t.coef, 10))
		}
		parts = append(parts, strings.Join(f, "*"))
	}
	return strings.Join(parts, "+")
}

// gridPoints lists the sizes of each trace: every combination of the
// axes' Grid sizes (the first axis varying slowest), then the Check
// sizes.
func gridPoints(syms []Sym) [][]int {
	pts := [][]int{{}}
	for _, s := range syms {
		var next [][]int
		for _, p := range pts {
			for _, v := range s.Grid {
				next = append(next, append(append([]int{}, p...), v))
			}
		}
		pts = next
	}
	check := make([]int, len(syms))
	for i, s := range syms {
		check[i] = s.Check
	}
	return append(pts, check)
}

// vandermondeInv is the inverse of the matrix x_i^j (i, j < 3).
func vandermondeInv(x [3]int) ([3][3]*big.Rat, error) {
	var a [3][6]*big.Rat
	for i := range 3 {
		for j := range 3 {
			v := int64(1)
			for range j {
				v *= int64(x[i])
			}
			a[i][j] = big.NewRat(v, 1)
			a[i][3+j] = new(big.Rat)
			if i == j {
				a[i][3+j].SetInt64(1)
			}
		}
	}
	for c := range 3 {
		p := -1
		for r := c; r < 3; r++ {
			if a[r][c].Sign() != 0 {
				p = r
				break
			}
		}
		if p < 0 {
			return [3][3]*big.Rat{}, fmt.Errorf("grid sizes %v are not distinct", x)
		}
		a[c], a[p] = a[p], a[c]
		inv := new(big.Rat).Inv(a[c][c])
		for j := range 6 {
			a[c][j] = new(big.Rat).Mul(a[c][j], inv)
		}
		for r := range 3 {
			if r == c || a[r][c].Sign() == 0 {
				continue
			}
			f := new(big.Rat).Set(a[r][c])
			for j := range 6 {
				a[r][j] = new(big.Rat).Sub(a[r][j], new(big.Rat).Mul(f, a[c][j]))
			}
		}
	}
	var out [3][3]*big.Rat
	for i := range 3 {
		for j := range 3 {
			out[i][j] = a[i][3+j]
		}
	}
	return out, nil
}

// fit returns the polynomial of syms that gives vals (one per
// gridPoints entry), or an error when none of degree at most 2 in each
// axis with integer coefficients does.
func fit(syms []Sym, vals []int64) (poly, error) {
	k := len(syms)
	same := true
	for _, v := range vals {
		same = same && v == vals[0]
	}
	if same {
		return poly{{coef: vals[0], exp: make([]int, k)}}, nil
	}
	n := len(vals) - 1 // the last is the check
	c := make([]*big.Rat, n)
	for i := range n {
		c[i] = big.NewRat(vals[i], 1)
	}
	// Apply the inverse Vandermonde matrix of each axis along that axis
	// of the 3x3x...x3 grid of values.
	stride := n
	for a := range k {
		inv, err := vandermondeInv(syms[a].Grid)
		if err != nil {
			return nil, fmt.Errorf("axis %s: %w", syms[a].Name, err)
		}
		stride /= 3
		for base := range n {
			if (base/stride)%3 != 0 {
				continue
			}
			var y [3]*big.Rat
			for i := range 3 {
				y[i] = c[base+i*stride]
			}
			for j := range 3 {
				s := new(big.Rat)
				for i := range 3 {
					s.Add(s, new(big.Rat).Mul(inv[j][i], y[i]))
				}
				c[base+j*stride] = s
			}
		}
	}
	var p poly
	for idx := range n {
		if c[idx].Sign() == 0 {
			continue
		}
		if !c[idx].IsInt() {
			return nil, fmt.Errorf("sizes %v are no polynomial with integer coefficients of the dynamic axes", vals)
		}
		exp := make([]int, k)
		r := idx
		for a := k - 1; a >= 0; a-- {
			exp[a] = r % 3
			r /= 3
		}
		p = append(p, term{coef: c[idx].Num().Int64(), exp: exp})
	}
	check := make([]int, k)
	for i, s := range syms {
		check[i] = s.Check
	}
	if got := p.eval(check); got != vals[n] {
		return nil, fmt.Errorf("sizes %v fit %s on the grid but give %d, not %d, at the check point", vals, p.String(syms), got, vals[n])
	}
	return p, nil
}
