package onnx

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/groundmesh/groundmesh/model"
)

// A tinygrounder's ONNX export is a bundle: an uncompressed tar of a
// manifest (ManifestName, first), the tokenizer, and one standalone ONNX
// model per computation an engine runs (Graphs), each with the weights
// it reads as initializers. Decoding takes the KV cache as inputs
// ("past.N") and returns it extended ("present.N").

// FormatVersion is the bundle layout this build writes and reads.
const FormatVersion = 1

// ManifestName is the bundle's first file.
const ManifestName = "groundmesh-onnx.json"

// Graph names.
const (
	GraphGrounder      = "grounder"       // Config.Grounder: tokens, text_mask, img_row, images -> feats, logits, boxes
	GraphImageFeatures = "image_features" // not Config.Grounder: images -> feats
	GraphPrefillText   = "prefill_text"   // tokens, patch_idx, is_patch -> logits, attn.N, present.N
	GraphPrefillImage  = "prefill_image"  // feats and the above
	GraphStepText      = "step_text"      // past.N and prefill_text's
	GraphStepImage     = "step_image"     // past.N and prefill_image's
)

// Manifest describes a bundle.
type Manifest struct {
	Format       string            `json:"format"`
	Version      int               `json:"version"`
	Architecture string            `json:"architecture"`
	Config       json.RawMessage   `json:"config"`
	ConfigSHA256 string            `json:"config_sha256"`
	Dtype        string            `json:"dtype"`
	IRVersion    int               `json:"ir_version"`
	Opset        int               `json:"opset"`
	Graphs       []Exported        `json:"graphs"`
	Meta         map[string]string `json:"meta,omitempty"`
}

// featWidth is the width of the rows a Cache's Feats holds.
func featWidth(cfg model.Config) int {
	if cfg.Grounder {
		return cfg.Width
	}
	o := model.ShapeOps()
	return o.Shape(model.NewNet(o, cfg).ImageFeatures(model.NewDims(1, cfg.ImageSize, cfg.ImageSize, 3)))[1]
}

// Graphs are the computations of cfg's inference, as exportable graphs.
func Graphs(cfg model.Config) []Graph {
	s := cfg.ImageSize
	batch := Sym{Name: "B", Grid: [3]int{1, 2, 3}, Check: 5}
	seq := Sym{Name: "L", Grid: [3]int{2, 3, 4}, Check: 5}
	imgs := Sym{Name: "N", Grid: [3]int{1, 2, 3}, Check: 4}
	past := Sym{Name: "P", Grid: [3]int{1, 2, 3}, Check: 4}
	var gs []Graph
	if cfg.Grounder {
		gs = append(gs, Graph{Name: GraphGrounder, Syms: []Sym{batch, seq, imgs}, Build: func(tr *Tracer) ([]string, []*T) {
			b, l, n := tr.Sym("B"), tr.Sym("L"), tr.Sym("N")
			net := model.NewNet[*T](tr, cfg)
			f, lg, bx, nm := net.Grounder(model.Inputs[*T]{
				Tokens:   tr.Input("tokens", true, b, l),
				TextMask: tr.Input("text_mask", false, b, l),
				ImgRow:   tr.Input("img_row", true, n),
				Images:   tr.Input("images", false, n, s, s, 3),
			})
			if nm != nil {
				return []string{"feats", "logits", "boxes", "names"}, []*T{f, lg, bx, nm}
			}
			return []string{"feats", "logits", "boxes"}, []*T{f, lg, bx}
		}})
	} else {
		gs = append(gs, Graph{Name: GraphImageFeatures, Syms: []Sym{imgs}, Build: func(tr *Tracer) ([]string, []*T) {
			net := model.NewNet[*T](tr, cfg)
			return []string{"feats"}, []*T{net.ImageFeatures(tr.Input("images", false, tr.Sym("N"), s, s, 3))}
		}})
	}
	fw := featWidth(cfg)
	for _, v := range []struct {
		name        string
		feats, past bool
	}{{GraphPrefillText, false, false}, {GraphPrefillImage, true, false}, {GraphStepText, false, true}, {GraphStepImage, true, true}} {
		syms := []Sym{seq}
		if v.feats {
			syms = append(syms, imgs)
		}
		if v.past {
			syms = append(syms, past)
		}
		gs = append(gs, Graph{Name: v.name, Syms: syms, Build: func(tr *Tracer) ([]string, []*T) {
			net := model.NewNet[*T](tr, cfg)
			c := &model.Cache[*T]{WantAttn: true}
			var feats *T
			if v.feats {
				feats = tr.Input("feats", false, tr.Sym("N")*cfg.Patches(), fw)
				c.Feats, c.HaveFeats = feats, true
			}
			if v.past {
				p := tr.Sym("P")
				net.Step(c, tr.Placeholder(true, 1, p), tr.Placeholder(true, 1, p), tr.Placeholder(false, 1, p))
				i := 0
				c.MapLive(func(t *T) *T {
					if t == nil || t == feats {
						return t
					}
					in := tr.Input(fmt.Sprintf("past.%d", i), t.isInt, t.dims...)
					i++
					return in
				})
			}
			l := tr.Sym("L")
			logits := net.Step(c, tr.Input("tokens", true, 1, l), tr.Input("patch_idx", true, 1, l), tr.Input("is_patch", false, 1, l))
			names, outs := []string{"logits"}, []*T{logits}
			for i, a := range c.Attn {
				names, outs = append(names, fmt.Sprintf("attn.%d", i)), append(outs, a)
			}
			i := 0
			for _, t := range c.Live() {
				if t == nil || t == feats {
					continue
				}
				names, outs = append(names, fmt.Sprintf("present.%d", i)), append(outs, t)
				i++
			}
			return names, outs
		}})
	}
	return gs
}

// ExportModel writes cfg with weights as an ONNX bundle in dtype (f32 or
// f16), with the tokenizer and meta in the manifest.
func ExportModel(cfg model.Config, weights map[string][]float32, dtype string, tok *model.Tokenizer, meta map[string]string) ([]byte, *Manifest, error) {
	if tok != nil && tok.VocabSize() != cfg.VocabSize {
		return nil, nil, fmt.Errorf("export onnx: the tokenizer has %d tokens, the config's vocabulary %d", tok.VocabSize(), cfg.VocabSize)
	}
	cj, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, err
	}
	man := &Manifest{Format: "onnx", Version: FormatVersion, Architecture: model.GGUFArchitecture, Config: cj,
		ConfigSHA256: cfg.SHA256(), Dtype: dtype, IRVersion: IRVersion, Opset: Opset, Meta: meta}
	pmeta := [][2]string{{"groundmesh.architecture", model.GGUFArchitecture}, {"groundmesh.config_sha256", cfg.SHA256()},
		{"groundmesh.format_version", fmt.Sprint(FormatVersion)}, {"groundmesh.dtype", dtype}}
	var files [][2][]byte
	for _, g := range Graphs(cfg) {
		ex, err := Export(g, weights, dtype, append(slices.Clone(pmeta), [2]string{"groundmesh.graph", g.Name}))
		if err != nil {
			return nil, nil, err
		}
		man.Graphs = append(man.Graphs, *ex)
		files = append(files, [2][]byte{[]byte(g.Name + ".onnx"), ex.Model})
	}
	mj, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := add(ManifestName, mj); err != nil {
		return nil, nil, err
	}
	if tok != nil {
		var tj bytes.Buffer
		if err := tok.Save(&tj); err != nil {
			return nil, nil, err
		}
		if err := add("tokenizer.json", tj.Bytes()); err != nil {
			return nil, nil, err
		}
	}
	for _, f := range files {
		if err := add(string(f[0]), f[1]); err != nil {
			return nil, nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), man, nil
}

// IsBundle reports whether b starts like an ONNX bundle.
func IsBundle(b []byte) bool {
	return len(b) >= len(ManifestName) && string(b[:len(ManifestName)]) == ManifestName
}

// ErrMismatch is wrapped by the refusals of a bundle that is not the
// model it must be.
var ErrMismatch = errors.New("onnx bundle does not match")

// Model is what an ONNX bundle holds.
type Model struct {
	Manifest  Manifest
	Config    model.Config
	Dtype     string
	Tokenizer *model.Tokenizer
	// Weights are the initializers that are the model's parameters, in
	// float32.
	Weights map[string][]float32
	// Graphs are the ONNX models by graph name.
	Graphs map[string][]byte
}

// ReadBundle reads and checks a bundle: its format version, the
// architecture config (and, when want is not nil, that it is want), the
// graphs the config needs, and every initializer that is a parameter
// (its shape and dtype).
func ReadBundle(b []byte, want *model.Config) (*Model, error) {
	tr := tar.NewReader(bytes.NewReader(b))
	files := map[string][]byte{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: not a readable tar: %w", ErrMismatch, err)
		}
		if h.Size > int64(len(b)) {
			return nil, fmt.Errorf("%w: %s claims %d bytes in a %d-byte file", ErrMismatch, h.Name, h.Size, len(b))
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrMismatch, h.Name, err)
		}
		files[h.Name] = data
		order = append(order, h.Name)
	}
	if len(order) == 0 || order[0] != ManifestName {
		return nil, fmt.Errorf("%w: the first file is not %s", ErrMismatch, ManifestName)
	}
	m := &Model{Weights: map[string][]float32{}, Graphs: map[string][]byte{}}
	if err := json.Unmarshal(files[ManifestName], &m.Manifest); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMismatch, ManifestName, err)
	}
	man := &m.Manifest
	if man.Format != "onnx" || man.Architecture != model.GGUFArchitecture {
		return nil, fmt.Errorf("%w: format %q architecture %q, want onnx %q", ErrMismatch, man.Format, man.Architecture, model.GGUFArchitecture)
	}
	if man.Version != FormatVersion {
		return nil, fmt.Errorf("%w: format version %d, this build reads %d", ErrMismatch, man.Version, FormatVersion)
	}
	cfg, err := model.ParseConfig(man.Config)
	if err != nil {
		return nil, fmt.Errorf("%w: config: %w", ErrMismatch, err)
	}
	if cfg.SHA256() != man.ConfigSHA256 {
		return nil, fmt.Errorf("%w: the architecture config hashes to %s, the manifest says %s", ErrMismatch, cfg.SHA256(), man.ConfigSHA256)
	}
	if want != nil && want.SHA256() != cfg.SHA256() {
		return nil, fmt.Errorf("%w: its architecture config (sha256 %s) is not the requested one (%s)", ErrMismatch, cfg.SHA256(), want.SHA256())
	}
	if man.Dtype != model.DtypeF32 && man.Dtype != model.DtypeF16 {
		return nil, fmt.Errorf("%w: dtype %q", ErrMismatch, man.Dtype)
	}
	m.Config, m.Dtype = cfg, man.Dtype
	if tj, ok := files["tokenizer.json"]; ok {
		if m.Tokenizer, err = model.LoadTokenizer(bytes.NewReader(tj)); err != nil {
			return nil, fmt.Errorf("%w: tokenizer.json: %w", ErrMismatch, err)
		}
	}
	shapes := map[string][]int{}
	for _, p := range cfg.Params() {
		shapes[p.Name] = p.Shape
	}
	for _, g := range Graphs(cfg) {
		data, ok := files[g.Name+".onnx"]
		if !ok {
			return nil, fmt.Errorf("%w: no graph %s.onnx", ErrMismatch, g.Name)
		}
		var listed *Exported
		for i := range man.Graphs {
			if man.Graphs[i].Name == g.Name {
				listed = &man.Graphs[i]
			}
		}
		sum := sha256.Sum256(data)
		switch {
		case listed == nil:
			return nil, fmt.Errorf("%w: the manifest lists no graph %s", ErrMismatch, g.Name)
		case hex.EncodeToString(sum[:]) != listed.SHA256:
			return nil, fmt.Errorf("%w: %s.onnx hashes to %x, the manifest says %s (the file is damaged)", ErrMismatch, g.Name, sum, listed.SHA256)
		}
		if err := readGraph(data, man, g.Name, shapes, m.Weights); err != nil {
			return nil, fmt.Errorf("%w: %s.onnx: %w", ErrMismatch, g.Name, err)
		}
		m.Graphs[g.Name] = data
	}
	return m, nil
}

// IONames returns an ONNX model's graph input and output names, in the
// graph's order, read from its protobuf (an initializer listed as an
// input, as IR versions before 4 did, is not an input to feed).
func IONames(b []byte) (inputs, outputs []string, err error) {
	var graph []byte
	if err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num == 7 && typ == protowire.BytesType {
			graph = v
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	if graph == nil {
		return nil, nil, errors.New("onnx model: no graph")
	}
	name := func(v []byte) (string, error) {
		var n string
		err := fields(v, func(f protowire.Number, _ protowire.Type, s []byte, _ uint64) error {
			if f == 1 {
				n = string(s)
			}
			return nil
		})
		return n, err
	}
	inits := map[string]bool{}
	err = fields(graph, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 5: // initializer: TensorProto, name is field 8
			return fields(v, func(f protowire.Number, _ protowire.Type, s []byte, _ uint64) error {
				if f == 8 {
					inits[string(s)] = true
				}
				return nil
			})
		case 11, 12:
			n, err := name(v)
			if err != nil {
				return err
			}
			if num == 12 {
				outputs = append(outputs, n)
			} else {
				inputs = append(inputs, n)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("onnx model: %w", err)
	}
	inputs = slices.DeleteFunc(inputs, func(n string) bool { return inits[n] })
	return inputs, outputs, nil
}

// readGraph checks one ONNX model of a bundle and collects its
// parameters' weights.
func readGraph(b []byte, man *Manifest, name string, shapes map[string][]int, weights map[string][]float32) error {
	meta := map[string]string{}
	var graph []byte
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == 7 && typ == protowire.BytesType:
			graph = v
		case num == 14 && typ == protowire.BytesType:
			var k, val string
			if err := fields(v, func(n protowire.Number, _ protowire.Type, s []byte, _ uint64) error {
				switch n {
				case 1:
					k = string(s)
				case 2:
					val = string(s)
				}
				return nil
			}); err != nil {
				return err
			}
			meta[k] = val
		}
		return nil
	})
	if err != nil {
		return err
	}
	if meta["groundmesh.config_sha256"] != man.ConfigSHA256 || meta["groundmesh.graph"] != name || meta["groundmesh.dtype"] != man.Dtype {
		return fmt.Errorf("its metadata (config %q, graph %q, dtype %q) is not the manifest's (config %q, graph %q, dtype %q)",
			meta["groundmesh.config_sha256"], meta["groundmesh.graph"], meta["groundmesh.dtype"], man.ConfigSHA256, name, man.Dtype)
	}
	if graph == nil {
		return errors.New("no graph")
	}
	return fields(graph, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num != 5 || typ != protowire.BytesType {
			return nil
		}
		var t tensor
		if err := fields(v, func(n protowire.Number, ty protowire.Type, s []byte, x uint64) error {
			switch n {
			case 1:
				if ty == protowire.BytesType {
					for len(s) > 0 {
						d, k := protowire.ConsumeVarint(s)
						if k < 0 {
							return errors.New("corrupt dims")
						}
						t.dims, s = append(t.dims, int(d)), s[k:]
					}
				} else {
					t.dims = append(t.dims, int(x))
				}
			case 2:
				t.dtype = int(x)
			case 8:
				t.name = string(s)
			case 9:
				t.raw = s
			}
			return nil
		}); err != nil {
			return err
		}
		pname := strings.TrimSuffix(t.name, ".f16")
		want, isParam := shapes[pname]
		if !isParam {
			return nil
		}
		if !slices.Equal(t.dims, want) {
			return fmt.Errorf("initializer %q is %v, the architecture's parameter is %v", t.name, t.dims, want)
		}
		n := 1
		for _, d := range want {
			n *= d
		}
		var w []float32
		switch {
		case t.dtype == typeFloat && man.Dtype == model.DtypeF32 && t.name == pname:
			if len(t.raw) != 4*n {
				return fmt.Errorf("initializer %q holds %d bytes, want %d", t.name, len(t.raw), 4*n)
			}
			w = make([]float32, n)
			for i := range w {
				w[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.raw[4*i:]))
			}
		case t.dtype == typeFloat16 && man.Dtype == model.DtypeF16 && t.name != pname:
			var err error
			if w, err = model.Dequantize(model.DtypeF16, t.raw, n); err != nil {
				return fmt.Errorf("initializer %q: %w", t.name, err)
			}
		default:
			return fmt.Errorf("initializer %q has ONNX type %d, a %s bundle holds parameters as %s", t.name, t.dtype, man.Dtype, man.Dtype)
		}
		weights[pname] = w
		return nil
	})
}
