package gomlx

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/groundmesh/groundmesh/model"
)

// Parameter names, shapes and layouts are model's (Config.Params):
// linear weights [in, out] (y = x·w + b); layer norms "w" (scale) and "b"
// (shift) with epsilon 1e-5; attn.qkv.w [w, 3w] with columns q | k | v,
// heads contiguous within each; attn.out the output projection; MLPs and
// the projector with exact (erf) GELU; vision.patch_embed.w
// [patch*patch*3, vision_width] over a patch flattened in (row, column,
// channel) order of the HWC image, or with Config.ConvStem
// [vision_width, vision_width] over the last convolution's channels, its
// kernels vision.stem.<i>.w [3, 3, in, out] (row, column, in, out) with
// stride 2 and zero padding 1; lm_head.w [width, vocab] without bias.
//
// A PatchToken position's input is projector(patch feature) + embed.pos[t]
// (the token embedding is replaced, the position embedding is still added),
// or with Config.PatchPositions + embed.patch_pos[k] for the image's k-th
// patch.
// Vision blocks attend over all patches of one image; language-model blocks
// are causal. Every block is pre-LN: x += attn(ln1(x)); x += mlp(ln2(x)).

const layerNormEps = model.LayerNormEps

// paramInit says how a parameter is initialized from the seed.
type paramInit int

const (
	initNormal paramInit = iota // N(0, std)
	initZeros
	initOnes
	initSinCos2D // fixed 2D sine-cosine table of a patch grid (vision.pos)
)

// paramSpec is one canonical parameter with its initialization.
type paramSpec struct {
	Name  string
	Shape []int
	Init  paramInit
	Std   float64
}

// Size returns the number of elements.
func (p paramSpec) Size() int {
	n := 1
	for _, d := range p.Shape {
		n *= d
	}
	return n
}

// decays reports whether AdamW weight decay applies: matrices and
// convolution kernels only, never biases, layer norms or position tables.
func (p paramSpec) decays() bool {
	return len(p.Shape) >= 2 && !strings.HasSuffix(p.Name, ".pos") && p.Name != "embed.patch_pos"
}

// normedConvGain scales He initialization for the grounder's
// convolutions under Config.GrounderNorm.
var normedConvGain = 0.15

// paramSpecs lists every parameter of the model in model.Config.Params
// order, with GPT-2 style initialization: N(0, 0.02) for matrices and
// tables, scaled by 1/sqrt(2*depth) for the projections that write into the
// residual stream, zero biases, unit layer-norm scales.
func paramSpecs(c model.Config) []paramSpec {
	const std = 0.02
	var ps []paramSpec
	for _, p := range c.Params() {
		s := paramSpec{Name: p.Name, Shape: p.Shape, Init: initNormal, Std: std}
		isLN := strings.Contains(p.Name, ".ln")
		switch {
		case isLN && strings.HasSuffix(p.Name, ".w"):
			s.Init = initOnes
		case strings.HasSuffix(p.Name, ".b") || p.Name == "fusion.query" || p.Name == "grounder.text.query":
			// Zero queries pool plain means.
			s.Init = initZeros
		case strings.HasPrefix(p.Name, "grounder.text.gru.") && !strings.HasPrefix(p.Name, "grounder.text.gru.proj"):
			// PyTorch's GRU scale, 1/sqrt(fan-in): at N(0, 0.02) the
			// recurrence starts with a state a hundredth of its input's.
			s.Std = 1 / math.Sqrt(float64(p.Shape[0]))
		case strings.HasPrefix(p.Name, "grounder.match."):
			// Unit-variance queries and keys from layer-normed inputs.
			s.Std = 1 / math.Sqrt(float64(p.Shape[0]))
		case strings.HasPrefix(p.Name, "grounder.conv."):
			s.Std = math.Sqrt(2 / float64(p.Shape[0]*p.Shape[1]*p.Shape[2]))
			if c.GrounderNorm {
				// An instance norm follows every convolution: the output
				// does not depend on the kernel's scale, and Adam moves
				// each weight by about the learning rate whatever its
				// size, so the kernel's scale sets how fast it learns
				// (the step relative to the weight). He initialization
				// made the tower learn markedly slower than the scene
				// probe's reference; 0.15 of it learned fastest of 1, 0.4
				// and 0.15 (docs/experiments.md).
				s.Std *= normedConvGain
			}
		case strings.HasPrefix(p.Name, "grounder.name.conv."):
			// He initialization, as vision.stem's: no norm follows.
			s.Std = math.Sqrt(2 / float64(p.Shape[0]*p.Shape[1]*p.Shape[2]))
		case p.Name == "grounder.name.fc1.w" || p.Name == "grounder.name.out.w" || p.Name == "grounder.name.prev.w":
			// 1/sqrt(fan-in): three layers of N(0, 0.02) in a row left the
			// name head's logits and gradients a ten-thousandth of their
			// input's: TestNameHeadNamesTheObject's task was 0.21 right
			// after 200 steps and 1.00 after 600; with these, 1.00 after
			// 150.
			s.Std = 1 / math.Sqrt(float64(p.Shape[0]))
		case p.Name == "grounder.name.vocab.w":
			s.Std = 1 / math.Sqrt(float64(p.Shape[1]))
		case p.Name == "vision.pos":
			s.Init = initSinCos2D
		case strings.HasPrefix(p.Name, "vision.stem."):
			// He initialization: each GELU layer keeps its input's scale,
			// where N(0, 0.02) would shrink it tenfold per convolution.
			s.Std = math.Sqrt(2 / float64(p.Shape[0]*p.Shape[1]*p.Shape[2]))
		case strings.HasSuffix(p.Name, ".attn.out.w") || strings.HasSuffix(p.Name, ".mlp.fc2.w"):
			depth := c.Depth
			if strings.HasPrefix(p.Name, "vision.") {
				depth = c.VisionDepth
			}
			s.Std = std / math.Sqrt(2*float64(max(depth, 1)))
		}
		ps = append(ps, s)
	}
	return ps
}

// initParams initializes every parameter from seed. Each parameter draws
// from its own stream keyed by its name, so adding a parameter never changes
// the others.
func initParams(specs []paramSpec, seed int64) map[string][]float32 {
	out := make(map[string][]float32, len(specs))
	for _, p := range specs {
		v := make([]float32, p.Size())
		switch p.Init {
		case initOnes:
			for i := range v {
				v[i] = 1
			}
		case initSinCos2D:
			sinCos2D(v, p.Shape[0], p.Shape[1])
		case initNormal:
			h := fnv.New64a()
			h.Write([]byte(p.Name))
			rng := rand.New(rand.NewPCG(uint64(seed), h.Sum64()))
			for i := range v {
				v[i] = float32(rng.NormFloat64() * p.Std)
			}
		}
		out[p.Name] = v
	}
	return out
}

// selectTrainable reports which parameters train: those matching any
// trainable prefix (all when empty) and no frozen prefix.
func selectTrainable(specs []paramSpec, trainable, frozen []string) []bool {
	sel := make([]bool, len(specs))
	for i, p := range specs {
		ok := len(trainable) == 0
		for _, t := range trainable {
			if strings.HasPrefix(p.Name, t) {
				ok = true
				break
			}
		}
		for _, f := range frozen {
			if strings.HasPrefix(p.Name, f) {
				ok = false
				break
			}
		}
		sel[i] = ok
	}
	return sel
}

// sinCos2D fills v, a [patches, width] table of a square patch grid, with a
// 2D sine-cosine position code: a quarter of the channels each for sin and
// cos of the row and of the column, at frequencies from half a period over
// the grid to a quarter period per cell. Patches start out telling their place
// apart (and nearby places alike) instead of from noise, which is where a
// box prediction has to come from. The table still trains.
func sinCos2D(v []float32, patches, width int) {
	g := int(math.Round(math.Sqrt(float64(patches))))
	q := width / 4
	if g*g != patches || q == 0 {
		return // not a square grid: leave zeros
	}
	const amp = 0.5
	for r := range g {
		for c := range g {
			row := v[(r*g+c)*width:]
			for k := range q {
				// k = 0: half a period over the grid (so that the two
				// ends differ most); k = q-1: a quarter period per cell.
				f := math.Pi / float64(g)
				if q > 1 && g > 2 {
					f *= math.Pow(float64(g)/2, float64(k)/float64(q-1))
				}
				row[k] = float32(amp * math.Sin(f*float64(r)))
				row[q+k] = float32(amp * math.Cos(f*float64(r)))
				row[2*q+k] = float32(amp * math.Sin(f*float64(c)))
				row[3*q+k] = float32(amp * math.Cos(f*float64(c)))
			}
		}
	}
}
