package onnx

import (
	"strings"
	"testing"
)

func TestFit(t *testing.T) {
	syms := []Sym{{Name: "B", Grid: [3]int{1, 2, 3}, Check: 5}, {Name: "L", Grid: [3]int{2, 3, 4}, Check: 5}}
	pts := gridPoints(syms)
	if len(pts) != 10 {
		t.Fatalf("%d points, want 9 and the check", len(pts))
	}
	for _, c := range []struct {
		name string
		f    func(b, l int) int64
		want string
	}{
		{"constant", func(b, l int) int64 { return 7 }, "7"},
		{"one axis", func(b, l int) int64 { return int64(l) }, "L"},
		{"product and offset", func(b, l int) int64 { return int64(4*b*l + l + 3) }, "3+L+4*B*L"},
		{"square", func(b, l int) int64 { return int64(l * l) }, "L*L"},
	} {
		vals := make([]int64, len(pts))
		for i, p := range pts {
			vals[i] = c.f(p[0], p[1])
		}
		p, err := fit(syms, vals)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := p.String(syms); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	// A size that is no such polynomial is refused at the check point.
	vals := make([]int64, len(pts))
	for i, p := range pts {
		vals[i] = int64(1) << p[1]
	}
	if _, err := fit(syms, vals); err == nil || !strings.Contains(err.Error(), "check point") {
		t.Errorf("2^L: err = %v, want a refusal at the check point", err)
	}
	// A fractional coefficient is refused.
	for i, p := range pts {
		vals[i] = int64(p[1] * (p[1] + 1) / 2)
	}
	if _, err := fit(syms, vals); err == nil || !strings.Contains(err.Error(), "integer coefficients") {
		t.Errorf("L(L+1)/2: err = %v, want a refusal", err)
	}
}
