package computetest_test

import (
	"context"
	"testing"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// The toy backend passes the suite in-process, and reproduces reference
// logits it recorded itself: this tests the suite and its fixtures.
func TestToyConformance(t *testing.T) {
	ref, err := computetest.WriteReference(context.Background(), computetest.NewToy(computetest.ToyOptions{}), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	computetest.RunConformance(t, computetest.Harness{
		New:             func(*testing.T) compute.Backend { return computetest.NewToy(computetest.ToyOptions{}) },
		ReferenceLogits: ref,
	})
}

func TestCompareLogits(t *testing.T) {
	want := [][]float32{{1, 2}, {3, -4}}
	if err := computetest.CompareLogits([][]float32{{1, 2}, {3, -4}}, want, 0, 0); err != nil {
		t.Errorf("equal logits: %v", err)
	}
	if err := computetest.CompareLogits([][]float32{{1, 2}, {3, -4.01}}, want, 1e-3, 0); err == nil {
		t.Error("a 0.01 difference passed a 1e-3 tolerance")
	}
	if err := computetest.CompareLogits([][]float32{{1, 2}, {3, -4.01}}, want, 0, 1e-2); err != nil {
		t.Errorf("a relative 0.25%% difference failed a 1%% tolerance: %v", err)
	}
	if err := computetest.CompareLogits([][]float32{{1, 2}}, want, 1, 1); err == nil {
		t.Error("a missing row passed")
	}
}
