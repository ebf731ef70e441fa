package gomlx

import (
	"fmt"
	"math"
	"strings"
	"sync"

	gomlxcompute "github.com/gomlx/compute"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// grounderRunner runs Config.Grounder's encoder and head for inference
// from the model's one definition (model.Net), which training differentiates,
// so the two cannot drift apart: per batch of prompts it returns the
// projected patch features the eager language model reads and, for
// each prompt's first image, the box of the cell the pointer picks.
type grounderRunner struct {
	cfg  model.Config
	comp grounderCompute
}

// grounderExec is the GoMLX engine's grounderCompute: one compiled graph.
type grounderExec struct {
	cfg    model.Config
	specs  []paramSpec
	params []*tensors.Tensor
	mu     sync.Mutex // an Exec runs one call at a time here
	exec   *graph.Exec
}

func newGrounderExec(ml gomlxcompute.Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32) (*grounderExec, error) {
	r := &grounderExec{cfg: cfg}
	// Only what the encoder and head read: the language model's blocks
	// run eagerly (model/eager), not in a second copy here.
	for _, p := range specs {
		if !grounderReads(p.Name) {
			continue
		}
		r.specs = append(r.specs, p)
		r.params = append(r.params, tensors.FromFlatDataAndDimensions(append([]float32(nil), weights[p.Name]...), p.Shape...))
	}
	exec, err := graph.NewExec(ml, r.graphFn)
	if err != nil {
		return nil, fmt.Errorf("build grounder: %w", err)
	}
	r.exec = exec.SetMaxCache(-1).WithName("tinygrounder_grounder")
	return r, nil
}

// grounderReads reports whether the grounder's inference graph (graphFn)
// reads parameter name: what the encoder and head read
// (model.GrounderReads), plus the layer norm and projector that turn its
// cells into the language model's image tokens.
func grounderReads(name string) bool {
	return model.GrounderReads(name) || strings.HasPrefix(name, "vision.ln_f.") || strings.HasPrefix(name, "projector.")
}

// graphFn: the params it reads in spec order, then tokens [B, L], textMask [B, T],
// imgRow [K], images [K, S, S, 3]; outputs projected features [K*P,
// Width], pointer logits [K, P] and boxes [K, P, 4].
func (r *grounderExec) graphFn(inputs []*graph.Node) []*graph.Node {
	params := make(map[string]*graph.Node, len(r.specs))
	for i, p := range r.specs {
		params[p.Name] = inputs[i]
	}
	in := inputs[len(r.specs):]
	net := model.NewNet[*graph.Node](newOps(inputs[0].Graph(), params), r.cfg)
	feats, logits, boxes, names := net.Grounder(model.Inputs[*graph.Node]{Tokens: in[0], TextMask: in[1], ImgRow: in[2], Images: in[3]})
	if names != nil {
		return []*graph.Node{feats, logits, boxes, names}
	}
	return []*graph.Node{feats, logits, boxes}
}

// grounded is one prompt's share of a grounderRunner call.
type grounded struct {
	feats []float32 // [images*P, Width]
	box   []float32 // the first image's head box (x1, y1, x2, y2), nil without an image
	score float32   // the pointer's probability of its cell
	// exists is the existence probability: sigmoid(logsumexp(logits) -
	// log P), what the existence term of grounderLoss trains.
	exists float32
	// name is the name head's answer for the first image
	// (model.NameTokens), nil without a name head.
	name []int32
}

// grounderInputs are one grounder call's host arrays: tokens and mask [B,
// L] (B and L rounded up to the graph's buckets), imgRow [K], images [K,
// S, S, 3]; first[i] is sequence i's first image.
type grounderInputs struct {
	b, l, k int
	tokens  []int32
	mask    []float32
	imgRow  []int32
	images  []float32
	first   []int
}

func newGrounderInputs(c model.Config, seqs []compute.Sequence) *grounderInputs {
	b := nextPow2(len(seqs))
	l := 1
	k := 0
	for _, s := range seqs {
		l = max(l, len(s.Tokens))
		k += len(s.Images)
	}
	l = min(roundUp(l, seqBucket), c.MaxSeq)
	k = nextPow2(max(k, 1))
	imgLen := c.ImageSize * c.ImageSize * 3
	in := &grounderInputs{b: b, l: l, k: k, tokens: make([]int32, b*l), mask: make([]float32, b*l),
		imgRow: make([]int32, k), images: make([]float32, k*imgLen), first: make([]int, len(seqs))}
	for i := range in.tokens {
		in.tokens[i] = c.PadToken
	}
	img := 0
	for i, s := range seqs {
		n := copy(in.tokens[i*l:(i+1)*l], s.Tokens)
		markTextBeforeImage(c, in.tokens[i*l:i*l+n], in.mask[i*l:(i+1)*l])
		in.first[i] = img
		for _, im := range s.Images {
			copy(in.images[img*imgLen:], im.Pixels)
			in.imgRow[img] = int32(i)
			img++
		}
	}
	return in
}

func (r *grounderExec) compute(in *grounderInputs) (res grounderOut, err error) {
	c := r.cfg
	args := make([]any, 0, len(r.params)+4)
	for _, p := range r.params {
		args = append(args, p)
	}
	args = append(args,
		tensors.FromFlatDataAndDimensions(in.tokens, in.b, in.l),
		tensors.FromFlatDataAndDimensions(in.mask, in.b, in.l),
		tensors.FromFlatDataAndDimensions(in.imgRow, in.k),
		tensors.FromFlatDataAndDimensions(in.images, in.k, c.ImageSize, c.ImageSize, 3))
	r.mu.Lock()
	outs, err := r.exec.Call(args...)
	r.mu.Unlock()
	if err != nil {
		return grounderOut{}, fmt.Errorf("run grounder: %w", err)
	}
	defer func() {
		for _, o := range outs {
			_ = o.FinalizeAll()
		}
	}()
	if res.feats, err = tensors.CopyFlatData[float32](outs[0]); err != nil {
		return grounderOut{}, fmt.Errorf("grounder features: %w", err)
	}
	if res.logits, err = tensors.CopyFlatData[float32](outs[1]); err != nil {
		return grounderOut{}, fmt.Errorf("grounder logits: %w", err)
	}
	if res.boxes, err = tensors.CopyFlatData[float32](outs[2]); err != nil {
		return grounderOut{}, fmt.Errorf("grounder boxes: %w", err)
	}
	if len(outs) > 3 {
		if res.names, err = tensors.CopyFlatData[float32](outs[3]); err != nil {
			return grounderOut{}, fmt.Errorf("grounder names: %w", err)
		}
	}
	return res, nil
}

// run encodes a batch of validated sequences.
func (r *grounderRunner) run(seqs []compute.Sequence) ([]grounded, error) {
	c := r.cfg
	in := newGrounderInputs(c, seqs)
	res, err := r.comp.compute(in)
	if err != nil {
		return nil, err
	}
	feats, logits, boxes := res.feats, res.logits, res.boxes
	slots, v := c.GrounderNameSlots, c.VocabSize
	if slots > 0 && len(res.names) < in.k*slots*v {
		return nil, fmt.Errorf("grounder: %d name logits for %d images of %d slots over %d words", len(res.names), in.k, slots, v)
	}
	p, w := c.Patches(), c.Width
	out := make([]grounded, len(seqs))
	for i, s := range seqs {
		f := in.first[i]
		out[i].feats = feats[f*p*w : (f+len(s.Images))*p*w]
		if len(s.Images) == 0 {
			continue
		}
		lg := logits[f*p : (f+1)*p]
		best := argmax(lg)
		out[i].score = softmaxAt(lg, best)
		out[i].exists = existence(lg)
		bx := boxes[(f*p+best)*4 : (f*p+best+1)*4]
		out[i].box = clampBox(bx)
		if slots > 0 {
			out[i].name = model.NameTokens(res.names[f*slots*v:(f+1)*slots*v], slots, v)
		}
	}
	return out, nil
}

// argmax returns the index of the largest value (the first of ties).
func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// logSumExp is log(sum(exp(v))), computed stably.
func logSumExp(v []float32) float64 {
	m := float64(v[argmax(v)])
	var sum float64
	for _, x := range v {
		sum += math.Exp(float64(x) - m)
	}
	return m + math.Log(sum)
}

// softmaxAt is the softmax probability of v[i].
func softmaxAt(v []float32, i int) float32 {
	return float32(math.Exp(float64(v[i]) - logSumExp(v)))
}

// existence is the sigmoid of logsumexp(v) - log(len(v)).
func existence(v []float32) float32 {
	z := logSumExp(v) - math.Log(float64(len(v)))
	return float32(1 / (1 + math.Exp(-z)))
}

// clampBox returns b within the unit square, with a positive extent.
func clampBox(b []float32) []float32 {
	out := make([]float32, 4)
	for i, v := range b {
		out[i] = min(max(v, 0), 1)
	}
	const minSide = 0.002
	for a := range 2 {
		if out[a+2]-out[a] < minSide {
			mid := (out[a] + out[a+2]) / 2
			out[a], out[a+2] = max(mid-minSide/2, 0), min(mid+minSide/2, 1)
		}
	}
	return out
}
