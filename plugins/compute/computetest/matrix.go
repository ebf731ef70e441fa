package computetest

import (
	"context"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// The conformance matrix holds every backend to one function, feature by
// feature. Each cell is a small model config that turns on one
// architecture option (model.Config.Features) over a plain base, plus one
// cell with every option the demo's model uses. For each cell the
// reference backend recorded, under testdata/matrix/<MatrixVersion>/:
//
//   - the logits of a prefill of two fixed prompts (one and two images)
//     and of two decode steps after it, the grounding head's boxes and the
//     attention over the first image's patches where the backend has them;
//   - the decoded answer of each grammar the host runs (a box, yes/no, a
//     choice among four; with Config.Grounder also the box and the yes/no
//     read from the grounding head);
//   - two training steps from the same weights on a fixed shard: the two
//     losses and, per parameter, a sketch of how far each element moved.
//
// The weights are not a checkpoint the reference backend wrote: the suite
// generates them on the host from the cell's seed (MatrixWeights), so a
// backend that cannot train runs the same cells. The training shard holds
// exactly one batch of rows of equal length, so every backend's first
// steps see the whole shard whatever order its sampler draws.

// MatrixVersion names the reference format and the fixtures (configs,
// weights, prompts, shard) the references were recorded from. Changing
// any of them changes the function the cells compute: record the
// references again under a new version.
const MatrixVersion = "v3"

const matrixFormat = "groundmesh/conformance-matrix/" + MatrixVersion

//go:embed testdata/matrix
var matrixFS embed.FS

// MatrixCell is one cell of the matrix.
type MatrixCell struct {
	// Name is the feature the cell turns on ("base" for none, "demo" for
	// the demo model's set).
	Name   string
	Config model.Config
}

// matrixWords are the fixture tokenizer's words.
var matrixWords = []string{"red", "green", "blue", "yellow", "square", "where", "is", "the", "there", "a", "which", "one", "colour", "left", "right", "top"}

// MatrixTokenizer is the tokenizer every cell's config and prompts use.
func MatrixTokenizer() *model.Tokenizer {
	tok, err := model.NewTokenizer(matrixWords)
	if err != nil {
		panic(fmt.Sprintf("computetest: matrix tokenizer: %v", err)) // a fixed word list
	}
	return tok
}

// matrixBase is the plain cell: 16-pixel images in 8-pixel patches (a 2x2
// grid), one vision block, two language blocks of width 32, the box
// tokens of the fixture tokenizer.
func matrixBase() model.Config {
	c := model.DefaultConfig(MatrixTokenizer().VocabSize())
	c.ImageSize, c.PatchSize = 16, 8
	c.VisionWidth, c.VisionDepth = 16, 1
	c.Width, c.Depth, c.Heads, c.MLPRatio = 32, 2, 2, 2
	c.MaxSeq, c.MaxImages = 64, 2
	c.BoxLabelSigma = 0
	return c
}

// withGrounder turns on Config.Grounder and what it needs.
func withGrounder(c model.Config) model.Config {
	c.ImagesAfterText = true
	c.Grounder, c.GrounderQueries, c.GrounderLossWeight = true, 2, 1
	c.VisionDepth = 0 // the grounder replaces the vision blocks
	return c
}

// MatrixCells returns the matrix: "base", one cell per feature of
// model.AllFeatures (with what the feature needs), and "demo".
func MatrixCells() []MatrixCell {
	cell := func(name string, edit func(*model.Config)) MatrixCell {
		c := matrixBase()
		edit(&c)
		return MatrixCell{Name: name, Config: c}
	}
	return []MatrixCell{
		cell("base", func(*model.Config) {}),
		cell("box_label_sigma", func(c *model.Config) { c.BoxLabelSigma = 1.5 }),
		cell("images_after_text", func(c *model.Config) { c.ImagesAfterText = true }),
		cell("text_fusion", func(c *model.Config) { c.TextFusion = true }),
		cell("patch_positions", func(c *model.Config) { c.PatchPositions = true }),
		cell("fusion_attention", func(c *model.Config) { c.TextFusion, c.FusionAttention = true, true }),
		cell("ground_loss_weight", func(c *model.Config) { c.GroundLossWeight = 0.5 }),
		cell("conv_stem", func(c *model.Config) { c.ConvStem = true }),
		cell("box_loss_weight", func(c *model.Config) { c.GroundLossWeight, c.BoxLossWeight = 0.5, 0.5 }),
		cell("ground_readout", func(c *model.Config) { c.GroundLossWeight, c.GroundReadout = 0.5, true }),
		cell("grounder", func(c *model.Config) { *c = withGrounder(*c) }),
		cell("grounder_cell_words", func(c *model.Config) { *c = withGrounder(*c); c.GrounderCellWords = true }),
		cell("grounder_norm", func(c *model.Config) { *c = withGrounder(*c); c.GrounderNorm = true }),
		cell("grounder_grid_depth", func(c *model.Config) { *c = withGrounder(*c); c.GrounderGridDepth = 1 }),
		cell("grounder_text_depth", func(c *model.Config) { *c = withGrounder(*c); c.GrounderTextDepth = 1 }),
		cell("grounder_text_gru", func(c *model.Config) { *c = withGrounder(*c); c.GrounderTextGRU = true }),
		cell("grounder_stem", func(c *model.Config) { *c = withGrounder(*c); c.GrounderStem = 2 }),
		cell("grounder_sigma", func(c *model.Config) { *c = withGrounder(*c); c.GrounderSigma = 0.3 }),
		cell("grounder_name_slots", func(c *model.Config) { *c = withGrounder(*c); c.GrounderNameSlots = 3 }),
		cell("demo", func(c *model.Config) { *c = DemoCellConfig(*c) }),
	}
}

// DemoCellConfig turns on, over c, the architecture options of the demo's
// model (services/train.DefaultSpec; a test there keeps the two equal).
func DemoCellConfig(c model.Config) model.Config {
	c = withGrounder(c)
	c.BoxLabelSigma = 1.5
	c.PatchPositions = true
	c.GrounderNorm = true
	c.GrounderSigma = 0.3
	c.GrounderTextGRU = true
	c.GrounderNameSlots = 3
	return c
}

// MatrixWeights generates a cell's weights on the host, deterministically
// from the parameter names and shapes of cfg.Params(): layer-norm scales
// 1 ± 0.1, vectors uniform in ±0.1, matrices and tables uniform with
// variance 1/fan-in (fan-in: every axis but the last). Each parameter
// draws from its own stream keyed by its name.
func MatrixWeights(cfg model.Config) map[string][]float32 {
	out := map[string][]float32{}
	for _, p := range cfg.Params() {
		h := fnv.New64a()
		h.Write([]byte(p.Name))
		rng := rand.New(rand.NewPCG(0x6d6174726978, h.Sum64()))
		n := 1
		for _, d := range p.Shape {
			n *= d
		}
		v := make([]float32, n)
		ln := strings.HasSuffix(p.Name, ".w") && (strings.Contains(p.Name, ".ln") || strings.HasPrefix(p.Name, "ln"))
		a := 0.1
		if len(p.Shape) >= 2 && !ln {
			a = math.Sqrt(3 * float64(p.Shape[len(p.Shape)-1]) / float64(n))
		}
		for i := range v {
			u := (rng.Float64()*2 - 1) * a
			if ln {
				u += 1
			}
			v[i] = float32(u)
		}
		out[p.Name] = v
	}
	return out
}

// WriteMatrixWeights writes weights as a checkpoint (the layout
// docs/adding-a-backend.md gives: float32 tensors under the canonical
// names) and returns its path.
func WriteMatrixWeights(dir string, cfg model.Config, w map[string][]float32) (string, error) {
	var ts []model.Tensor
	for _, p := range cfg.Params() {
		b := make([]byte, 4*len(w[p.Name]))
		for i, x := range w[p.Name] {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		ts = append(ts, model.Tensor{Name: p.Name, DType: "F32", Shape: p.Shape, Data: b})
	}
	path := filepath.Join(dir, "matrix-weights.safetensors")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	_, err = model.WriteSafetensors(f, ts, map[string]string{"format": "groundmesh/tinygrounder-ckpt/v1", "config_sha256": cfg.SHA256(), "step": "0"})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return path, err
}

// matrix fixture images: a grey background with a coloured square filling
// one cell of the 2x2 patch grid.
var matrixColours = []color.RGBA{{220, 40, 40, 255}, {40, 200, 60, 255}, {50, 70, 230, 255}, {230, 220, 50, 255}}

func matrixImage(size, colour, cell int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	half := size / 2
	x0, y0 := (cell%2)*half, (cell/2)*half
	for y := range size {
		for x := range size {
			c := color.RGBA{128, 128, 128, 255}
			if x >= x0 && x < x0+half && y >= y0 && y < y0+half {
				c = matrixColours[colour]
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

func imageBytes(img *image.RGBA) []uint8 {
	b := img.Bounds()
	out := make([]uint8, 0, b.Dx()*b.Dy()*3)
	for y := range b.Dy() {
		for x := range b.Dx() {
			c := img.RGBAAt(x, y)
			out = append(out, c.R, c.G, c.B)
		}
	}
	return out
}

// cellBox is the normalized box of grid cell (of a 2x2 grid).
func cellBox(cell int) model.NormBox {
	x, y := float64(cell%2)*0.5, float64(cell/2)*0.5
	return model.NormBox{x, y, x + 0.5, y + 0.5}
}

// matrixBatch is the training batch size; the shard holds exactly one batch.
const matrixBatch = 4

// writeMatrixShard writes the training shard: matrixBatch one-image rows
// of equal length ("<colour> square <image>" answered by the square's box)
// with every optional tensor (patch targets and boxes, the referent's box
// and existence, cell words; with Config.GrounderNameSlots the names), a
// row of each kind of label the losses read.
func writeMatrixShard(dir string, cfg model.Config, tok *model.Tokenizer) (string, error) {
	n, l, p := matrixBatch, cfg.MaxSeq, cfg.Patches()
	var tokens, targets, refBoxes, refExists, cellWords, nameIDs []int32
	var images, patchTargets, patchBoxes []uint8
	index := make([]int32, 0, n*cfg.MaxImages)
	for i := range n {
		colour, cell := i, (i+1)%4
		box := cellBox(cell)
		s, err := model.EncodeConversation(tok, cfg, []model.Turn{
			{From: "human", Value: matrixWords[colour] + " square <image>"},
			{From: "gpt", Value: model.FormatBox(box)},
		})
		if err != nil {
			return "", err
		}
		if len(s.Tokens) > l {
			return "", fmt.Errorf("matrix sample of %d tokens: max_seq %d", len(s.Tokens), l)
		}
		row, rowTgt := slices.Clone(s.Tokens), slices.Clone(s.Targets)
		for len(row) < l {
			row, rowTgt = append(row, cfg.PadToken), append(rowTgt, -1)
		}
		tokens, targets = append(tokens, row...), append(targets, rowTgt...)
		images = append(images, imageBytes(matrixImage(cfg.ImageSize, colour, cell))...)
		index = append(index, int32(i))
		for range cfg.MaxImages - 1 {
			index = append(index, -1)
		}
		// Patch labels at the image's patch positions.
		pt := make([]uint8, l)
		pb := make([]uint8, 4*l)
		k := 0
		for t, id := range row {
			pt[t] = model.NoPatchTarget
			if id == cfg.PatchToken && k < p {
				pt[t] = 0
				if k == cell {
					pt[t] = model.PatchTargetScale
					for j, v := range box {
						pb[4*t+j] = uint8(math.Round(v * 100))
					}
				}
				k++
			}
		}
		patchTargets, patchBoxes = append(patchTargets, pt...), append(patchBoxes, pb...)
		// Row 3 names something absent: no box, existence 0.
		if i == 3 {
			refBoxes = append(refBoxes, model.NoRefBox, model.NoRefBox, model.NoRefBox, model.NoRefBox)
			refExists = append(refExists, 0)
		} else {
			for _, v := range box {
				refBoxes = append(refBoxes, int32(math.Round(v*1000)))
			}
			refExists = append(refExists, 1)
		}
		// Row 2 labels no cells; the others name the colour and "square"
		// in the square's cell.
		cw := make([]int32, p*model.CellWords)
		for j := range cw {
			cw[j] = model.NoCellWord
			if i == 2 {
				cw[j] = model.NoCellLabels
			}
		}
		if i != 2 {
			copy(cw[cell*model.CellWords:], tok.Encode(matrixWords[colour]+" square"))
		}
		cellWords = append(cellWords, cw...)
		// Row 1 has no name; the others are named by their colour.
		if slots := cfg.GrounderNameSlots; slots > 0 {
			name := model.NameLabel(tok, matrixWords[colour], slots)
			if i == 1 || name == nil {
				name = slices.Repeat([]int32{model.NoNameWord}, slots)
			}
			nameIDs = append(nameIDs, name...)
		}
	}
	path := filepath.Join(dir, "matrix-shard.safetensors")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	ts := []model.Tensor{
		{Name: "tokens", DType: "I32", Shape: []int{n, l}, Data: model.Int32Bytes(tokens)},
		{Name: "targets", DType: "I32", Shape: []int{n, l}, Data: model.Int32Bytes(targets)},
		{Name: "images", DType: "U8", Shape: []int{n, cfg.ImageSize, cfg.ImageSize, 3}, Data: images},
		{Name: "image_index", DType: "I32", Shape: []int{n, cfg.MaxImages}, Data: model.Int32Bytes(index)},
		{Name: "patch_targets", DType: "U8", Shape: []int{n, l}, Data: patchTargets},
		{Name: "patch_boxes", DType: "U8", Shape: []int{n, l, 4}, Data: patchBoxes},
		{Name: "ref_boxes", DType: "I32", Shape: []int{n, 4}, Data: model.Int32Bytes(refBoxes)},
		{Name: "ref_exists", DType: "I32", Shape: []int{n}, Data: model.Int32Bytes(refExists)},
		{Name: "cell_words", DType: "I32", Shape: []int{n, p, model.CellWords}, Data: model.Int32Bytes(cellWords)},
	}
	if nameIDs != nil {
		ts = append(ts, model.Tensor{Name: "name_ids", DType: "I32", Shape: []int{n, cfg.GrounderNameSlots}, Data: model.Int32Bytes(nameIDs)})
	}
	_, err = model.WriteSafetensors(f, ts, map[string]string{"config_sha256": cfg.SHA256(), "synth_set": "computetest-matrix"})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return path, err
}

// CellReference is what a cell's reference file records.
type CellReference struct {
	Format      string          `json:"format"`
	Cell        string          `json:"cell"`
	Features    []string        `json:"features"`
	Backend     string          `json:"backend"`
	Version     string          `json:"version"`
	ModelConfig json.RawMessage `json:"model_config"`
	// Steps are the prefill (first) and the decode steps after it.
	Steps []ForwardReference `json:"steps"`
	// Answers are the decoded answers per grammar, two prompts each.
	Answers map[string][]string `json:"answers"`
	// Train is per objective ("all", and "grounder" for Config.Grounder
	// cells) what two training steps did.
	Train map[string]*TrainReference `json:"train,omitempty"`
}

// ForwardReference is one forward call's outputs.
type ForwardReference struct {
	Logits    [][]float32       `json:"logits"`
	HeadBoxes []compute.HeadBox `json:"head_boxes,omitempty"`
	Attention [][]float32       `json:"attention,omitempty"`
}

// TrainReference is two training steps' losses and, per parameter, a
// sketch of the update: SketchSize signed sums of the elements' moves in
// units of the learning rate, each over a fixed pseudo-random ±1 pattern.
type TrainReference struct {
	Losses []float64            `json:"losses"`
	Sketch map[string][]float64 `json:"sketch"`
}

// SketchSize is the number of projections in TrainReference.Sketch.
const SketchSize = 8

// The two training steps' settings.
const (
	matrixLR    = 1e-3
	matrixSteps = 2
)

// MatrixPrompts are the fixed prompts of the forward checks: one image,
// then two.
func MatrixPrompts(cfg model.Config, tok *model.Tokenizer) ([]compute.Sequence, error) {
	var out []compute.Sequence
	for i, text := range []string{"red square <image>", "which one is blue <image> <image>"} {
		tokens, n, err := model.EncodePrompt(tok, cfg, nil, text)
		if err != nil {
			return nil, err
		}
		seq := compute.Sequence{Tokens: tokens}
		for k := range n {
			img, err := model.ComputeImage(matrixImage(cfg.ImageSize, (i+k)%4, (i+2*k)%4), cfg.ImageSize)
			if err != nil {
				return nil, err
			}
			seq.Images = append(seq.Images, img)
		}
		out = append(out, seq)
	}
	return out, nil
}

// matrixDecode are the tokens the decode steps feed, one per prompt per step.
func matrixDecode(tok *model.Tokenizer) [][]int32 {
	return [][]int32{{tok.YesID(), tok.CoarseID(3)}, {tok.BoxOpenID(), tok.FineID(7)}}
}

// runCell runs a cell on b and records what it computed. desc is b's
// description: attention, head boxes and training are recorded where it
// has them.
func runCell(ctx context.Context, b compute.Backend, desc compute.Description, cell MatrixCell, dir, dtype string) (*CellReference, error) {
	cfg := cell.Config
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	tok := MatrixTokenizer()
	ref := &CellReference{Format: matrixFormat, Cell: cell.Name, Features: cfg.Features(), Backend: desc.Backend, Version: desc.Version,
		ModelConfig: cfgJSON, Answers: map[string][]string{}}
	weights := MatrixWeights(cfg)
	ckpt, err := WriteMatrixWeights(dir, cfg, weights)
	if err != nil {
		return nil, fmt.Errorf("write weights: %w", err)
	}
	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: ckpt, Dtype: dtype})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	defer b.Unload(context.WithoutCancel(ctx), sess.Session)

	// Forward: prefill, then decode steps.
	seqs, err := MatrixPrompts(cfg, tok)
	if err != nil {
		return nil, fmt.Errorf("prompts: %w", err)
	}
	r, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: seqs, WantAttention: desc.CanAttention})
	if err != nil {
		return nil, fmt.Errorf("prefill: %w", err)
	}
	ref.Steps = append(ref.Steps, ForwardReference{Logits: r.Logits, HeadBoxes: r.HeadBoxes, Attention: r.Attention})
	for _, next := range matrixDecode(tok) {
		d, err := b.Decode(ctx, compute.DecodeRequest{Session: sess.Session, CacheID: r.CacheID, Tokens: next, WantAttention: desc.CanAttention})
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		ref.Steps = append(ref.Steps, ForwardReference{Logits: d.Logits, Attention: d.Attention})
	}
	if err := b.ReleaseCache(ctx, sess.Session, r.CacheID); err != nil {
		return nil, fmt.Errorf("release cache: %w", err)
	}
	if err := checkHeadOnly(ctx, b, sess.Session, seqs, r.HeadBoxes, cfg.VocabSize); err != nil {
		return nil, err
	}

	// Answers of each grammar, decoded on the host.
	gen, err := model.NewGenerator(b, sess.Session, tok, cfg)
	if err != nil {
		return nil, err
	}
	prompts := func(texts ...string) []model.Prompt {
		var ps []model.Prompt
		for i, t := range texts {
			ps = append(ps, model.Prompt{Text: t, Images: []image.Image{matrixImage(cfg.ImageSize, i, (i+3)%4)}})
		}
		return ps
	}
	type grammarCase struct {
		name    string
		prompts []model.Prompt
		opts    model.GenerateOptions
	}
	grammars := []grammarCase{
		{"box", prompts("red square <image>", "green square <image>"), model.GenerateOptions{Constraint: model.ConstraintBox}},
		{"yesno", prompts("is there a red square <image>", "is there a blue square <image>"), model.GenerateOptions{Constraint: model.ConstraintYesNo}},
		{"choice", prompts("which one is red <image>", "which colour <image>"), model.GenerateOptions{Constraint: model.ConstraintChoice(4)}},
	}
	if cfg.Grounder {
		grammars = append(grammars,
			grammarCase{"box_from_head", prompts("red square <image>", "green square <image>"), model.GenerateOptions{Constraint: model.ConstraintBox, BoxFromHead: true}},
			grammarCase{"yesno_from_head", prompts("is there a red square <image>", "is there a blue square <image>"), model.GenerateOptions{Constraint: model.ConstraintYesNo, YesNoFromHead: true}})
	}
	if cfg.GrounderNameSlots > 0 {
		grammars = append(grammars,
			grammarCase{"name_from_head", prompts("which colour <image>", "which one <image>"), model.GenerateOptions{NameFromHead: true}})
	}
	inBackend := slices.Contains(desc.Features, compute.FeatureGenerate)
	for _, g := range grammars {
		// The host's loop over Prefill and Decode is the reference; a
		// backend's own Generate must give the same answers.
		hostOpts := g.opts
		hostOpts.HostLoop = true
		gens, err := gen.Generate(ctx, g.prompts, hostOpts)
		if err != nil {
			return nil, fmt.Errorf("generate %s: %w", g.name, err)
		}
		for _, x := range gens {
			ref.Answers[g.name] = append(ref.Answers[g.name], x.Text)
		}
		if !inBackend {
			continue
		}
		own, err := gen.Generate(ctx, g.prompts, g.opts)
		if err != nil {
			return nil, fmt.Errorf("generate %s in the backend: %w", g.name, err)
		}
		for i, x := range own {
			if x.Text != gens[i].Text {
				return nil, fmt.Errorf("generate %s: the backend's Generate answers %q, the host loop %q", g.name, x.Text, gens[i].Text)
			}
			if err := sameHead(x.Head, gens[i].Head, cfg.Grounder); err != nil {
				return nil, fmt.Errorf("generate %s answer %d: %w", g.name, i, err)
			}
		}
	}

	// Two training steps per objective.
	if !desc.CanTrain {
		return ref, nil
	}
	shard, err := writeMatrixShard(dir, cfg, tok)
	if err != nil {
		return nil, fmt.Errorf("write shard: %w", err)
	}
	objectives := []string{compute.ObjectiveAll}
	if cfg.Grounder && slices.Contains(desc.Features, compute.ObjectiveFeature(compute.ObjectiveGrounder)) {
		objectives = append(objectives, compute.ObjectiveGrounder)
	}
	ref.Train = map[string]*TrainReference{}
	for _, obj := range objectives {
		name := obj
		if name == compute.ObjectiveAll {
			name = "all"
		}
		tr, err := trainCell(ctx, b, cfg, cfgJSON, ckpt, shard, obj, weights, filepath.Join(dir, "train-"+name))
		if err != nil {
			return nil, fmt.Errorf("train (objective %s): %w", name, err)
		}
		ref.Train[name] = tr
	}
	return ref, nil
}

func trainCell(ctx context.Context, b compute.Backend, cfg model.Config, cfgJSON []byte, ckpt, shard, objective string, init map[string][]float32, dir string) (*TrainReference, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tr := &TrainReference{Sketch: map[string][]float64{}}
	res, err := b.Train(ctx, compute.TrainRequest{
		RunID: "matrix", Stage: "stage1", ModelConfig: cfgJSON, InitCheckpoint: ckpt, Shards: []string{shard},
		Steps: matrixSteps, BatchSize: matrixBatch, LearningRate: matrixLR, Seed: 1, LogEvery: 1,
		CheckpointEvery: matrixSteps, CheckpointDir: dir, Objective: objective,
	}, func(p compute.TrainProgress) error {
		if p.Step > len(tr.Losses) { // a checkpoint's report repeats its step
			tr.Losses = append(tr.Losses, p.Loss)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ts, _, err := model.ReadSafetensorsFile(res.Final.Path)
	if err != nil {
		return nil, err
	}
	got := map[string][]byte{}
	for _, t := range ts {
		if t.DType == "F32" {
			got[t.Name] = t.Data
		}
	}
	for _, p := range cfg.Params() {
		data, ok := got[p.Name]
		if !ok || len(data) != 4*len(init[p.Name]) {
			return nil, fmt.Errorf("trained checkpoint: parameter %q missing or of wrong size", p.Name)
		}
		sk := make([]float64, SketchSize)
		for i, w0 := range init[p.Name] {
			d := float64(math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))-w0) / matrixLR
			for k := range sk {
				if sketchSign(k, i) {
					sk[k] += d
				} else {
					sk[k] -= d
				}
			}
		}
		tr.Sketch[p.Name] = sk
	}
	return tr, nil
}

// sketchSign is the fixed pseudo-random sign of element i in projection k.
func sketchSign(k, i int) bool {
	x := uint64(k)<<40 ^ uint64(i) + 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return (x^x>>31)&1 == 1
}

// MatrixTolerance says how close a backend must come to the reference.
type MatrixTolerance struct {
	// Forward bounds |got - want| <= Forward * (1 + |want|) for logits,
	// head boxes, scores and attention. Default 1e-3.
	Forward float64
	// Loss bounds the training losses the same way. Default 1e-3.
	Loss float64
	// Moved is the fraction of a parameter's elements allowed to move
	// differently from the reference (an AdamW step moves an element by
	// about the learning rate whatever its gradient's size, so a gradient
	// that differs in sign costs a whole step). Default 0.01.
	Moved float64
	// Dtype is the LoadRequest dtype the backend holds the cell's
	// weights in ("" float32); the bounds above are what that dtype
	// owes the float32 reference.
	Dtype string
	// Answers is the fraction of the grammar answers that must equal
	// the reference's. Default 1 (all): a quantized dtype may flip an
	// answer whose two best tokens were close.
	Answers float64
	// Boxes is the fraction of the prefill's head boxes that must match
	// the reference's (box, score and existence within Forward). Default
	// 1: a quantized dtype may point at another cell when two were close.
	Boxes float64
	// BoxIoU, when set, lets a box answer equal the reference's when the
	// two boxes overlap by at least this IoU (a quantized dtype moves a
	// box's edges in the third decimal); 0: the text must be equal.
	BoxIoU float64
}

func (m *MatrixTolerance) defaults() {
	if m.Forward == 0 {
		m.Forward = 1e-3
	}
	if m.Loss == 0 {
		m.Loss = 1e-3
	}
	if m.Moved == 0 {
		m.Moved = 0.01
	}
	if m.Answers == 0 {
		m.Answers = 1
	}
	if m.Boxes == 0 {
		m.Boxes = 1
	}
}

// CompareCell compares what a backend computed for a cell with the
// reference; the error lists every difference, by what differs. The
// answers must be equal.
func CompareCell(got, want *CellReference, tol MatrixTolerance) error {
	tol.defaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	close := func(g, w, t float64) bool { return math.Abs(g-w) <= t*(1+math.Abs(w)) }
	if len(got.Steps) != len(want.Steps) {
		bad("%d forward steps, reference %d", len(got.Steps), len(want.Steps))
	}
	for s := range min(len(got.Steps), len(want.Steps)) {
		g, w := got.Steps[s], want.Steps[s]
		step := "prefill"
		if s > 0 {
			step = fmt.Sprintf("decode step %d", s)
		}
		if err := CompareLogits(g.Logits, w.Logits, tol.Forward, tol.Forward); err != nil {
			bad("%s logits: %v", step, err)
		}
		if w.Attention != nil && g.Attention != nil {
			if err := CompareLogits(g.Attention, w.Attention, tol.Forward, tol.Forward); err != nil {
				bad("%s attention: %v", step, err)
			}
		}
		if len(w.HeadBoxes) != len(g.HeadBoxes) {
			bad("%s: %d head boxes, reference %d", step, len(g.HeadBoxes), len(w.HeadBoxes))
			continue
		}
		var boxBad []string
		for i := range w.HeadBoxes {
			gb, wb := g.HeadBoxes[i], w.HeadBoxes[i]
			ok := gb.OK == wb.OK && close(float64(gb.Score), float64(wb.Score), tol.Forward) && close(float64(gb.Exists), float64(wb.Exists), tol.Forward) &&
				slices.Equal(gb.Name, wb.Name)
			for j := range 4 {
				ok = ok && close(float64(gb.Box[j]), float64(wb.Box[j]), tol.Forward)
			}
			if !ok {
				boxBad = append(boxBad, fmt.Sprintf("%s head box %d: %+v, reference %+v", step, i, gb, wb))
			}
		}
		if n := len(w.HeadBoxes); n > 0 && float64(n-len(boxBad)) < tol.Boxes*float64(n) {
			bad("%d of %d head boxes differ (at most %.0f%% may): %s", len(boxBad), n, 100*(1-tol.Boxes), strings.Join(boxBad, "; "))
		}
	}
	var answers, same int
	var differ []string
	for _, name := range sortedKeys(want.Answers) {
		g, w := got.Answers[name], want.Answers[name]
		if len(g) != len(w) {
			bad("%s: %d answers, reference %d", name, len(g), len(w))
			continue
		}
		for i := range w {
			answers++
			if g[i] == w[i] || tol.BoxIoU > 0 && boxIoU(g[i], w[i]) >= tol.BoxIoU {
				same++
			} else {
				differ = append(differ, fmt.Sprintf("%s answer %d %q, reference %q", name, i, g[i], w[i]))
			}
		}
	}
	if answers > 0 && float64(same) < tol.Answers*float64(answers) {
		bad("%d of %d answers equal the reference's (at least %.0f%% must): %s", same, answers, 100*tol.Answers, strings.Join(differ, "; "))
	}
	if got.Train != nil {
		sizes := paramSizes(want.ModelConfig)
		for _, obj := range sortedKeys(want.Train) {
			g, w := got.Train[obj], want.Train[obj]
			if g == nil {
				continue // the backend does not implement the objective
			}
			if len(g.Losses) != len(w.Losses) {
				bad("train %s: %d losses, reference %d", obj, len(g.Losses), len(w.Losses))
			}
			for i := range min(len(g.Losses), len(w.Losses)) {
				if !close(g.Losses[i], w.Losses[i], tol.Loss) {
					bad("train %s: step %d loss %.6g, reference %.6g", obj, i+1, g.Losses[i], w.Losses[i])
				}
			}
			var moved []string
			for _, p := range sortedKeys(w.Sketch) {
				gs, ws := g.Sketch[p], w.Sketch[p]
				if len(gs) != len(ws) {
					moved = append(moved, p+" (missing)")
					continue
				}
				// Each element moving by a whole step more or less adds
				// about 4 (in learning rates, squared) to the mean square
				// of the projections' differences.
				var ms float64
				for k := range ws {
					ms += (gs[k] - ws[k]) * (gs[k] - ws[k])
				}
				ms /= float64(len(ws))
				if allowed := 4*tol.Moved*float64(sizes[p]) + 1e-2; ms > allowed {
					moved = append(moved, fmt.Sprintf("%s (about %.0f elements)", p, ms/4))
				}
			}
			if len(moved) > 0 {
				bad("train %s: parameters moved differently from the reference: %s", obj, strings.Join(moved, ", "))
			}
		}
	}
	return errors.Join(errs...)
}

// paramSizes are the element counts of a config's parameters by name
// (none when the config does not parse).
func paramSizes(cfgJSON []byte) map[string]int {
	sizes := map[string]int{}
	if cfg, err := model.ParseConfig(cfgJSON); err == nil {
		for _, p := range cfg.Params() {
			sizes[p.Name] = int(p.Size())
		}
	}
	return sizes
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ReadCellReference reads a cell's checked-in reference.
func ReadCellReference(cell string) (*CellReference, error) {
	b, err := fs.ReadFile(matrixFS, "testdata/matrix/"+MatrixVersion+"/"+cell+".json")
	if err != nil {
		return nil, fmt.Errorf("matrix %s reference of cell %q: %w", MatrixVersion, cell, err)
	}
	var ref CellReference
	if err := json.Unmarshal(b, &ref); err != nil {
		return nil, fmt.Errorf("matrix reference of cell %q: %w", cell, err)
	}
	if ref.Format != matrixFormat {
		return nil, fmt.Errorf("matrix reference of cell %q is format %q, want %q", cell, ref.Format, matrixFormat)
	}
	return &ref, nil
}

// MatrixHarness tells RunMatrix how to get a backend.
type MatrixHarness struct {
	// New returns a fresh backend. Required.
	New func(t *testing.T) compute.Backend
	// Tolerance is how close the backend must come to the references.
	Tolerance MatrixTolerance
	// Record, when not empty, is a directory to write the cells'
	// references into (the reference backend's
	// testdata/matrix/<MatrixVersion>) instead of checking them.
	Record string
	// Timeout bounds each cell. Default 5 minutes.
	Timeout time.Duration
}

// CheckCell runs one cell on b and compares it with its reference.
func CheckCell(ctx context.Context, b compute.Backend, cell MatrixCell, dir string, tol MatrixTolerance) error {
	desc, err := b.Describe(ctx)
	if err != nil {
		return err
	}
	want, err := ReadCellReference(cell.Name)
	if err != nil {
		return err
	}
	if rc, err := model.ParseConfig(want.ModelConfig); err != nil || rc.SHA256() != cell.Config.SHA256() {
		return fmt.Errorf("cell %q: the reference was recorded for another config; record matrix %s again", cell.Name, MatrixVersion)
	}
	got, err := runCell(ctx, b, desc, cell, dir, tol.Dtype)
	if err != nil {
		return err
	}
	return CompareCell(got, want, tol)
}

// RunMatrix runs every cell of the matrix on the backends h makes, each
// as a subtest named after the cell, and fails each cell that differs
// from its reference. A cell that needs a feature the backend does not
// declare is skipped, naming it.
func RunMatrix(t *testing.T, h MatrixHarness) {
	if h.New == nil {
		t.Fatal("computetest: MatrixHarness.New is required")
	}
	if h.Timeout == 0 {
		h.Timeout = 5 * time.Minute
	}
	b := h.New(t)
	if c, ok := b.(interface{ Close() error }); ok {
		t.Cleanup(func() { c.Close() })
	}
	ctx0, cancel0 := context.WithTimeout(context.Background(), h.Timeout)
	desc, err := b.Describe(ctx0)
	cancel0()
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	for _, cell := range MatrixCells() {
		t.Run(cell.Name, func(t *testing.T) {
			if err := cell.Config.Unsupported(desc.Backend, desc.Features); err != nil {
				t.Skipf("cell %s: %v", cell.Name, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
			defer cancel()
			if h.Record != "" {
				ref, err := runCell(ctx, b, desc, cell, t.TempDir(), "")
				if err != nil {
					t.Fatalf("record cell %s: %v", cell.Name, err)
				}
				out, err := json.MarshalIndent(ref, "", " ")
				if err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(h.Record, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(h.Record, cell.Name+".json"), append(out, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err := CheckCell(ctx, b, cell, t.TempDir(), h.Tolerance); err != nil {
				t.Errorf("cell %s differs from the %s reference:\n%v", cell.Name, MatrixVersion, err)
			}
		})
	}
}

// checkHeadOnly checks a HeadOnly prefill against the full one's head
// boxes: a backend that honours it answers with the same boxes, no logits
// and no cache; one that does not answers as a full prefill.
func checkHeadOnly(ctx context.Context, b compute.Backend, session string, seqs []compute.Sequence, full []compute.HeadBox, vocab int) error {
	r, err := b.Prefill(ctx, compute.PrefillRequest{Session: session, Batch: seqs, HeadOnly: true})
	if err != nil {
		return fmt.Errorf("head-only prefill: %w", err)
	}
	if r.CacheID != "" {
		if err := b.ReleaseCache(ctx, session, r.CacheID); err != nil {
			return fmt.Errorf("head-only prefill: release cache: %w", err)
		}
	}
	switch {
	case len(r.Logits) == 0 && r.CacheID != "":
		return fmt.Errorf("head-only prefill: a cache %q without logits", r.CacheID)
	case len(r.Logits) != 0 && len(r.Logits) != len(seqs):
		return fmt.Errorf("head-only prefill: %d logit rows for %d sequences", len(r.Logits), len(seqs))
	case len(r.Logits) == 0 && len(full) == 0:
		return fmt.Errorf("head-only prefill: neither logits nor head boxes (the model has no head: answer as a full prefill)")
	case len(r.HeadBoxes) != len(full):
		return fmt.Errorf("head-only prefill: %d head boxes, the full prefill %d", len(r.HeadBoxes), len(full))
	}
	for i := range full {
		if full[i].OK != r.HeadBoxes[i].OK {
			return fmt.Errorf("head-only prefill: sequence %d has a head box: %v, in the full prefill: %v", i, r.HeadBoxes[i].OK, full[i].OK)
		}
		if !full[i].OK {
			continue
		}
		h, f := r.HeadBoxes[i], full[i]
		near := func(a, b float32) bool { return math.Abs(float64(a-b)) <= 1e-5 }
		if !near(h.Box[0], f.Box[0]) || !near(h.Box[1], f.Box[1]) || !near(h.Box[2], f.Box[2]) || !near(h.Box[3], f.Box[3]) ||
			!near(h.Score, f.Score) || !near(h.Exists, f.Exists) || !slices.Equal(h.Name, f.Name) {
			return fmt.Errorf("head-only prefill, sequence %d: box %v score %v exists %v name %v; the full prefill's %v %v %v %v", i, h.Box, h.Score, h.Exists, h.Name, f.Box, f.Score, f.Exists, f.Name)
		}
	}
	for i, l := range r.Logits {
		if len(l) != vocab {
			return fmt.Errorf("head-only prefill: sequence %d has %d logits, vocab %d", i, len(l), vocab)
		}
	}
	return nil
}

// sameHead checks the grounding head's answer a backend's Generate gave
// against the host loop's: present on both exactly when the model has a
// head, with the same box, score and existence to 1e-3.
func sameHead(own, host *compute.HeadBox, grounder bool) error {
	switch {
	case own == nil && host == nil && !grounder:
		return nil
	case own == nil || host == nil || !grounder:
		return fmt.Errorf("head answer present in the backend's Generate: %v, in the host loop: %v, the model has a head: %v", own != nil, host != nil, grounder)
	}
	close := func(a, b float32) bool { return math.Abs(float64(a-b)) <= 1e-3 }
	for k := range 4 {
		if !close(own.Box[k], host.Box[k]) {
			return fmt.Errorf("head box %v in the backend's Generate, %v in the host loop", own.Box, host.Box)
		}
	}
	if !close(own.Score, host.Score) || !close(own.Exists, host.Exists) {
		return fmt.Errorf("head score/exists %v/%v in the backend's Generate, %v/%v in the host loop", own.Score, own.Exists, host.Score, host.Exists)
	}
	if !slices.Equal(own.Name, host.Name) {
		return fmt.Errorf("head name %v in the backend's Generate, %v in the host loop", own.Name, host.Name)
	}
	return nil
}

// boxIoU is the IoU of two box answers, 0 when either is not a box.
func boxIoU(a, b string) float64 {
	x, err := model.ParseBox(a)
	if err != nil {
		return 0
	}
	y, err := model.ParseBox(b)
	if err != nil {
		return 0
	}
	iw := math.Min(x[2], y[2]) - math.Max(x[0], y[0])
	ih := math.Min(x[3], y[3]) - math.Max(x[1], y[1])
	if iw <= 0 || ih <= 0 {
		return 0
	}
	inter := iw * ih
	union := (x[2]-x[0])*(x[3]-x[1]) + (y[2]-y[0])*(y[3]-y[1]) - inter
	return inter / union
}
