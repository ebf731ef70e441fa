package gomlx

import (
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"

	"github.com/groundmesh/groundmesh/model"
)

// AdamW hyperparameters (besides the learning rate and weight decay, which
// come with each TrainRequest).
const (
	adamBeta1          = 0.9
	adamBeta2          = 0.95
	adamEps            = 1e-8
	gradClipMaxDefault = 1.0
)

// gradClipMax is the gradient-norm clip (experiment knob).
var gradClipMax = gradClipMaxDefault

// trainStepLayout fixes the order of the train step's inputs and outputs.
//
// Inputs: trainable params (T), their first moments (T), second moments (T),
// frozen params (F), then lr, bc1, bc2 (float32 scalars: learning rate and
// the Adam bias corrections 1/(1-beta^t)), weightDecay, then the batch:
// tokens, patchIdx, isPatch, images (float32, normalized on the host with
// model.NormalizePixels), lossIdx, lossTgt, lossW, patchTgt, patchW,
// patchBox, patchBoxW. Outputs: new params (T), new m (T), new v (T),
// loss, grad norm, ground loss, box loss. The loss is the answer loss; the
// gradient is of the answer loss plus GroundLossWeight times the ground
// loss and BoxLossWeight times the box loss (each zero without its weight).
type trainStepLayout struct {
	cfg       model.Config
	faults    faults
	trainable []paramSpec
	frozen    []paramSpec
	// grounderOnly is compute.ObjectiveGrounder: the language model is
	// not built, and the loss and the objective are the grounder's.
	grounderOnly bool
}

const numBatchInputs = 24

func (s *trainStepLayout) graphFn(inputs []*graph.Node) []*graph.Node {
	nt, nf := len(s.trainable), len(s.frozen)
	params := make(map[string]*graph.Node, nt+nf)
	for i, p := range s.trainable {
		params[p.Name] = inputs[i]
	}
	for i, p := range s.frozen {
		params[p.Name] = inputs[3*nt+i]
	}
	at := 3*nt + nf
	lr, bc1, bc2, wd := inputs[at], inputs[at+1], inputs[at+2], inputs[at+3]
	b := inputs[at+4:]
	in := model.Inputs[*graph.Node]{Tokens: b[0], PatchIdx: b[1], IsPatch: b[2], Images: b[3], TextMask: b[11], ImgRow: b[12]}
	lb := model.Labels[*graph.Node]{
		LossIdx: b[4], LossTgt: b[5], LossW: b[6], PatchTgt: b[7], PatchW: b[8], PatchBox: b[9], PatchBoxW: b[10],
		ImgFirst: b[13], RefBox: b[14], RefW: b[15], Exists: b[16], ExistsW: b[17], CellIDs: b[18], CellIDW: b[19], CellW: b[20], NameImg: b[21], NameIDs: b[22], NameW: b[23],
	}
	net := model.NewNet[*graph.Node](s.faults.wrap(newOps(inputs[0].Graph(), params)), s.cfg)
	ls := net.TrainLosses(in, lb, s.grounderOnly)
	return s.adamW(inputs, ls.Objective, lr, bc1, bc2, wd, ls.Answer, ls.Ground, ls.Box, ls.Grounder)
}

// adamW ends the train step: the gradient of objective with respect to the
// trainable parameters (inputs[:T]), clipped by its global norm, one AdamW
// update, and the outputs in trainStepLayout's order with the four
// reported losses.
func (s *trainStepLayout) adamW(inputs []*graph.Node, objective, lr, bc1, bc2, wd, loss, ground, box, grounder *graph.Node) []*graph.Node {
	nt := len(s.trainable)
	g := objective.Graph()
	tp := inputs[:nt]
	grads := graph.Gradient(objective, tp...)
	sq := graph.Scalar(g, dtypes.Float32, 0)
	for _, gr := range grads {
		sq = graph.Add(sq, graph.ReduceAllSum(graph.Square(gr)))
	}
	gnorm := graph.Sqrt(sq)
	scale := graph.Min(graph.Scalar(g, dtypes.Float32, 1), graph.Div(graph.Scalar(g, dtypes.Float32, gradClipMax), graph.AddScalar(gnorm, 1e-6)))

	outs := make([]*graph.Node, 0, 3*nt+2)
	newM := make([]*graph.Node, nt)
	newV := make([]*graph.Node, nt)
	newP := make([]*graph.Node, nt)
	for i, p := range s.trainable {
		gr := graph.Mul(grads[i], scale)
		m := graph.Add(graph.MulScalar(inputs[nt+i], adamBeta1), graph.MulScalar(gr, 1-adamBeta1))
		v := graph.Add(graph.MulScalar(inputs[2*nt+i], adamBeta2), graph.MulScalar(graph.Square(gr), 1-adamBeta2))
		upd := graph.Div(graph.Mul(m, bc1), graph.AddScalar(graph.Sqrt(graph.Mul(v, bc2)), adamEps))
		if p.decays() {
			upd = graph.Add(upd, graph.Mul(wd, tp[i]))
		}
		newP[i] = graph.Sub(tp[i], graph.Mul(lr, upd))
		newM[i], newV[i] = m, v
	}
	outs = append(outs, newP...)
	outs = append(outs, newM...)
	outs = append(outs, newV...)
	return append(outs, loss, gnorm, ground, box, grounder)
}

// forwardLogitsFn builds the full-sequence forward used by the parity tests:
// inputs are all params in spec order, then tokens, patchIdx, isPatch and
// float32 normalized images; the output is logits [B, L, V].
func forwardLogitsFn(cfg model.Config, specs []paramSpec) func(inputs []*graph.Node) *graph.Node {
	return func(inputs []*graph.Node) *graph.Node {
		params := make(map[string]*graph.Node, len(specs))
		for i, p := range specs {
			params[p.Name] = inputs[i]
		}
		b := inputs[len(specs):]
		net := model.NewNet[*graph.Node](newOps(inputs[0].Graph(), params), cfg)
		return net.Forward(model.Inputs[*graph.Node]{Tokens: b[0], PatchIdx: b[1], IsPatch: b[2], Images: b[3]})
	}
}
