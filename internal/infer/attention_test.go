package infer

import (
	"slices"
	"testing"
)

func TestMeanAttention(t *testing.T) {
	if got := MeanAttention(nil); got != nil {
		t.Errorf("no attention: %v, want nil", got)
	}
	if got := MeanAttention([][]float32{{}}); got != nil {
		t.Errorf("empty rows: %v, want nil", got)
	}
	got := MeanAttention([][]float32{{1, 0, 0.5}, {0, 1, 0.5}})
	if want := []float32{0.5, 0.5, 0.5}; !slices.Equal(got, want) {
		t.Errorf("mean %v, want %v", got, want)
	}
	// A short row adds to the positions it has.
	got = MeanAttention([][]float32{{1, 1}, {1}})
	if want := []float32{1, 0.5}; !slices.Equal(got, want) {
		t.Errorf("mean with a short row %v, want %v", got, want)
	}
}
