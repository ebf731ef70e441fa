package synth_test

import (
	"testing"

	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/services/synth"
)

// services/ground asks infer.RECInstruction; the model must have been
// trained on that phrasing.
func TestRECInstructionIsTrained(t *testing.T) {
	if got := synth.RECPromptTemplates()[0]; got != infer.RECInstruction {
		t.Fatalf("synth's first REC template %q differs from infer.RECInstruction %q", got, infer.RECInstruction)
	}
}
