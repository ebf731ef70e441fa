package model

import (
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
)

// handConfig is small enough to count by hand.
var handConfig = Config{
	Version: "tinygrounder/v1", ImageSize: 8, PatchSize: 4, VisionWidth: 4, VisionDepth: 1,
	Width: 8, Depth: 1, Heads: 2, MLPRatio: 2, VocabSize: 10, MaxSeq: 12, MaxImages: 1,
	PatchToken: 5, PadToken: 0,
}

func TestParamCountByHand(t *testing.T) {
	c := handConfig
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// vision: patch_embed 48*4 + 4, pos 4 patches * 4            = 212
	// vision block (w 4, mlp 8): ln 4*4, qkv 4*12+12, out 16+4,
	//   mlp 4*8+8 + 8*4+4                                         = 172
	// vision.ln_f 8; projector 4*8+8 + 8*8+8 = 112
	// embed: tokens 10*8 = 80, pos 12*8 = 96
	// lm block (w 8, mlp 16): ln 32, qkv 8*24+24, out 64+8,
	//   mlp 8*16+16 + 16*8+8                                      = 600
	// lm.ln_f 16; lm_head 8*10 = 80
	const want = 212 + 172 + 8 + 112 + 80 + 96 + 600 + 16 + 80 // 1376
	if got := c.ParamCount(); got != want {
		t.Fatalf("ParamCount = %d, want %d", got, want)
	}
	// Forward FLOPs per token: 2*(4*8*8 + 2*8*16) + 4*12*8 = 1408 per
	// block, plus the head 2*8*10 = 160.
	if got := c.FLOPsPerToken(); got != 1568 {
		t.Fatalf("FLOPsPerToken = %v, want 1568", got)
	}
	// Per image, per patch: embed 2*48*4 = 384; block 2*(4*16 + 2*4*8) +
	// 4*4*4 = 320; projector 2*(4*8 + 8*8) = 192; times 4 patches.
	if got := c.FLOPsPerImage(); got != 4*(384+320+192) {
		t.Fatalf("FLOPsPerImage = %v, want %d", got, 4*(384+320+192))
	}
	if got := c.FLOPsPerStep(2); got != 3*2*(12*1568+3584) {
		t.Fatalf("FLOPsPerStep(2) = %v", got)
	}
}

func TestParamsMatchParamCount(t *testing.T) {
	tok := testTokenizer(t)
	fused := DefaultConfig(tok.VocabSize())
	fused.TextFusion = true
	grounded := fused
	grounded.GroundLossWeight = 0.5
	attn := grounded
	attn.FusionAttention = true
	stem := attn
	stem.ConvStem = true
	boxed := stem
	boxed.BoxLossWeight = 1
	readout := boxed
	readout.GroundReadout = true
	for _, c := range []Config{handConfig, DefaultConfig(tok.VocabSize()), tinyConfig(tok), fused, grounded, attn, stem, boxed, readout,
		{Version: "tinygrounder/v1", ImageSize: 64, PatchSize: 16, VisionWidth: 48, VisionDepth: 0, Width: 72,
			Depth: 2, Heads: 3, MLPRatio: 2.5, VocabSize: 999, MaxSeq: 100, MaxImages: 2}} {
		var sum int64
		names := map[string]bool{}
		for _, p := range c.Params() {
			if names[p.Name] {
				t.Fatalf("parameter %s listed twice", p.Name)
			}
			names[p.Name] = true
			sum += p.Size()
			ok := false
			for _, prefix := range []string{"vision.", "projector.", "embed.", "fusion.", "ground.", "box.", "readout.", "lm.", "lm_head."} {
				ok = ok || strings.HasPrefix(p.Name, prefix)
			}
			if !ok {
				t.Fatalf("parameter %s has no canonical prefix", p.Name)
			}
		}
		if sum != c.ParamCount() {
			t.Fatalf("%+v: Params sum %d, ParamCount %d", c, sum, c.ParamCount())
		}
	}
}

func TestDefaultConfig(t *testing.T) {
	tok := testTokenizer(t)
	c := DefaultConfig(tok.VocabSize())
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	back, err := ParseConfig(b)
	if err != nil || back != c || back.SHA256() != c.SHA256() {
		t.Fatalf("config JSON round trip: %v", err)
	}
	other := c
	other.Depth++
	if other.SHA256() == c.SHA256() {
		t.Fatal("SHA256 ignores depth")
	}
	if c.PatchToken != tok.PatchID() || c.PadToken != tok.PadID() {
		t.Fatal("default config's special tokens differ from the tokenizer's")
	}
	// A 4-image crop task and a dense description both fit.
	if need := c.MaxImages*c.Patches() + 80; need > c.MaxSeq {
		t.Fatalf("4 images + 80 text tokens = %d > max_seq %d", need, c.MaxSeq)
	}
	t.Logf("default config (vocab %d): %d params, %.3g FLOPs/token, %.3g FLOPs/image, %.3g FLOPs/step at batch 16",
		c.VocabSize, c.ParamCount(), c.FLOPsPerToken(), c.FLOPsPerImage(), c.FLOPsPerStep(16))
}

// TestValidateNamesBadField: each rule of Validate rejects a config that
// breaks it and names the field.
func TestValidateNamesBadField(t *testing.T) {
	tok := testTokenizer(t)
	for want, mod := range map[string]func(*Config){
		"fusion_attention needs text_fusion": func(c *Config) { c.FusionAttention, c.TextFusion = true, false },
		"ground_loss_weight -1":              func(c *Config) { c.GroundLossWeight = -1 },
		"box_label_sigma -1":                 func(c *Config) { c.BoxLabelSigma = -1 },
		"mlp_ratio 0":                        func(c *Config) { c.MLPRatio = 0 },
		"box_loss_weight 1 must not be negative, and needs ground_loss_weight": func(c *Config) { c.BoxLossWeight = 1 },
		"box_loss_weight -1":                      func(c *Config) { c.BoxLossWeight, c.GroundLossWeight = -1, 1 },
		"ground_readout needs ground_loss_weight": func(c *Config) { c.GroundReadout = true },
		"power of two (not 6)":                    func(c *Config) { c.ConvStem, c.PatchSize = true, 6 },
		"divisible by patch_size/2 (not 66)":      func(c *Config) { c.ConvStem, c.VisionWidth, c.Heads = true, 66, 2 },
	} {
		c := DefaultConfig(tok.VocabSize())
		mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to say %q", err, want)
		}
	}
	ok := DefaultConfig(tok.VocabSize())
	ok.TextFusion, ok.FusionAttention = true, true
	if err := ok.Validate(); err != nil {
		t.Fatalf("text fusion with attention: %v", err)
	}
}

func TestStemChannels(t *testing.T) {
	c := DefaultConfig(100)
	if got := c.StemChannels(); got != nil {
		t.Fatalf("StemChannels without conv_stem: %v", got)
	}
	c.ConvStem, c.VisionWidth = true, 64
	if got := c.StemChannels(); !slices.Equal(got, []int{16, 32, 64}) {
		t.Fatalf("StemChannels for 8-pixel patches, width 64: %v, want [16 32 64]", got)
	}
	// 48-pixel image: convolutions to 24, 12 and 6 pixels, then the 1x1
	// embedding and the projector per patch (VisionDepth 1 adds a block).
	lin := c
	lin.ConvStem = false
	stem := 2 * (24*24*9*3*16 + 12*12*9*16*32 + 6*6*9*32*64.0)
	want := lin.FLOPsPerImage() - 36*2*8*8*3*64 + stem + 36*2*64*64
	if got := c.FLOPsPerImage(); math.Abs(got-want) > 1 {
		t.Fatalf("FLOPsPerImage with conv_stem: %v, want %v", got, want)
	}
}

// TestGrounderStemAndSigma: the tower's stem convolutions come first at the
// folded resolution (the first non-residual, since the fold has 12
// channels), a zero grounder_sigma trains with the 0.75 cells configs
// before the field did, and out-of-range values name their field.
func TestGrounderStemAndSigma(t *testing.T) {
	c := DefaultConfig(500)
	c.ImageSize, c.MaxSeq, c.VisionDepth, c.ImagesAfterText = 64, 320, 0, true
	c.Grounder, c.GrounderQueries, c.GrounderLossWeight = true, 2, 1
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.GrounderStem = 2
	strides, chans := c.GrounderConvs()
	if !slices.Equal(strides, []int{1, 1, 2, 1, 2, 1}) || !slices.Equal(chans, []int{16, 16, 32, 32, 64, 64}) {
		t.Fatalf("GrounderConvs with grounder_stem 2: strides %v channels %v", strides, chans)
	}
	if c.PointerSigma() != DefaultGrounderSigma {
		t.Fatalf("PointerSigma of grounder_sigma 0: %v", c.PointerSigma())
	}
	c.GrounderSigma = 0.3
	if c.PointerSigma() != 0.3 || !slices.Contains(c.Features(), "grounder_sigma") || !slices.Contains(c.Features(), "grounder_stem") {
		t.Fatalf("PointerSigma %v, features %v", c.PointerSigma(), c.Features())
	}
	for want, mod := range map[string]func(*Config){
		"grounder_stem 5 must be in 0..4":                                     func(c *Config) { c.GrounderStem = 5 },
		"grounder_sigma -1 must be in [0, 4]":                                 func(c *Config) { c.GrounderSigma = -1 },
		"grounder_sigma NaN must be in [0, 4]":                                func(c *Config) { c.GrounderSigma = math.NaN() },
		"grounder_stem, grounder_sigma and grounder_name_slots need grounder": func(c *Config) { c.Grounder, c.GrounderQueries, c.GrounderLossWeight = false, 0, 0 },
	} {
		bad := c
		mod(&bad)
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to say %q", err, want)
		}
	}
}

// TestGrounderFLOPsPerImage counts the demo tower by hand: 64-pixel images
// folded to 32 x 32 x 12, two 32-channel convolutions at 16 x 16 and two
// 64-channel ones at 8 x 8, each reading two coordinate channels more,
// then the head over the 64 cells.
func TestGrounderFLOPsPerImage(t *testing.T) {
	c := DefaultConfig(500)
	if c.GrounderFLOPsPerImage() != 0 {
		t.Fatal("FLOPs of a grounder without one")
	}
	c.ImageSize, c.VisionWidth, c.Grounder = 64, 64, true
	tower := 2 * (16*16*9*14*32 + 16*16*9*34*32 + 8*8*9*34*64 + 8*8*9*66*64.0)
	head := 64 * 2 * (66*64 + 64*5 + 64*64.0)
	if got := c.GrounderFLOPsPerImage(); math.Abs(got-(tower+head)) > 1 {
		t.Fatalf("GrounderFLOPsPerImage %v, want %v", got, tower+head)
	}
}
