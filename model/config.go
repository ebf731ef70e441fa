// Package model is the tinygrounder v1 model: its architecture config and
// the architecture itself, defined once against the tensor operations of
// Ops (net.go: the forward pass, the training losses, the grounding encoder
// and head, inference with a KV cache; Config.Params is derived from it),
// the tokenizer with the box grammar, prompt templates, image
// preprocessing, tokenized training shards, decoding (greedy and under the
// answer grammars, DecodeLoop) and the box codec. Backends (plugins/*)
// implement the operations, or the same function, and do tensor compute
// only; everything that defines what the model reads and writes lives
// here, once.
package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Config is the tinygrounder v1 architecture. It travels as JSON to the
// compute backends (compute.TrainRequest.ModelConfig).
//
// Architecture: the image (Size x Size x 3, float32 HWC, normalized) is cut
// into (Size/Patch)^2 patches; a vision encoder (linear patch embedding +
// learned position embedding + VisionDepth pre-LN transformer blocks of width
// Width) encodes them; an MLP projector (Linear-GELU-Linear) maps them into
// the language model width. The language model is a causal pre-LN
// transformer (Depth blocks, Heads heads, MLP ratio MLPRatio) over token
// embeddings plus learned positions; at every position whose token id is
// PatchToken the embedding is replaced by the next projected patch feature
// of the sequence's images, in order (image 0 patches first, then image 1).
// Output head is tied to nothing: a separate "lm_head" matrix.
//
// Canonical parameter names (prefixes select what trains per stage):
//
//	vision.patch_embed.{w,b}   vision.pos   vision.stem.<i>.{w,b}   (ConvStem)
//	vision.blocks.<i>.{ln1,attn,ln2,mlp}.*   vision.ln_f.*
//	projector.{fc1,fc2}.{w,b}
//	embed.tokens   embed.pos   embed.patch_pos (PatchPositions)
//	fusion.ln.*   fusion.{w,b}   (TextFusion)   fusion.query   (FusionAttention)
//	ground.ln.*   ground.{w,b}   (GroundLossWeight; training only
//	                             unless GroundReadout)   readout.w   (GroundReadout)
//	box.ln.*   box.{w,b}   (BoxLossWeight; training only)
//	lm.blocks.<i>.{ln1,attn,ln2,mlp}.*   lm.ln_f.*   lm_head.w
//
// Config.Params lists every parameter by its full name with its shape.
type Config struct {
	Version     string  `json:"version"` // "tinygrounder/v1"
	ImageSize   int     `json:"image_size"`
	PatchSize   int     `json:"patch_size"`
	VisionWidth int     `json:"vision_width"`
	VisionDepth int     `json:"vision_depth"`
	Width       int     `json:"width"`
	Depth       int     `json:"depth"`
	Heads       int     `json:"heads"`
	MLPRatio    float64 `json:"mlp_ratio"`
	VocabSize   int     `json:"vocab_size"`
	MaxSeq      int     `json:"max_seq"`
	MaxImages   int     `json:"max_images"` // image slots per sequence (full image + crop)
	PatchToken  int32   `json:"patch_token"`
	PadToken    int32   `json:"pad_token"`
	// BoxToken0 and BoxTokens are the coarse box-number tokens ("0.00" ..
	// "1.00", in value order) and BoxLabelSigma, when positive, is the
	// width in coarse steps of the Gaussian a box-number target is trained
	// against instead of a one-hot (ordinal label smoothing: predicting
	// "0.41" for "0.42" costs less than "0.90"). Zero values train every
	// target one-hot, as configs before these fields did.
	BoxToken0     int32   `json:"box_token0,omitempty"`
	BoxTokens     int     `json:"box_tokens,omitempty"`
	BoxLabelSigma float64 `json:"box_label_sigma,omitempty"`
	// ImagesAfterText lays a human turn's images out after its text (the
	// instruction first, then the patches): in a causal language model the
	// patch positions can then attend to what is asked about, which a probe
	// of this model ("where is the red square", green distractor) learned
	// markedly faster than with the image first. Placeholders keep their
	// order; the chat template is otherwise unchanged.
	ImagesAfterText bool `json:"images_after_text,omitempty"`
	// TextFusion conditions the image on the text before it (FiLM,
	// feature-wise linear modulation): at every patch position, the mean
	// token embedding of the non-patch positions up to it (zeros where
	// there are none) goes through a layer norm "fusion.ln" and a linear
	// layer "fusion" [width, 2 * vision_width] to a scale and a shift, and
	// the patch's vision feature becomes feature * (1 + scale) + shift
	// before the projector, which is then applied per position. With
	// ImagesAfterText the projector's nonlinearity can tell whether a patch
	// is what the instruction asks about before the first block; early
	// fusion of text into vision is what grounding detectors do (GLIP,
	// Grounding DINO). The colour-binding probe learned with it in 400
	// steps what it otherwise needed about 1,000 for.
	TextFusion bool `json:"text_fusion,omitempty"`
	// PatchPositions gives an image's patches a position embedding of
	// their own, "embed.patch_pos" [Patches(), Width] row k for the k-th
	// patch of its image, in place of "embed.pos" at their sequence
	// position (text positions keep "embed.pos"). With ImagesAfterText the
	// patches come after an instruction whose length varies, and the
	// sequence position no longer says where in the image a patch is: on
	// the scene probe (plugins/gomlx, BenchmarkSceneProbe), colour words
	// after 4 to 12 filler words instead of always 8 took the freely
	// decoded box centre from the object 68.5% of the time to 7.3% (below
	// the mean box's 10%) after 1,000 steps; the 2D positions added to
	// the vision features do not make up for it.
	PatchPositions bool `json:"patch_positions,omitempty"`
	// FusionAttention pools the text that TextFusion reads with learned
	// attention instead of a plain mean: each non-patch position's token
	// embedding e weighs exp(clip(q . e, -30, 30)), q the vector
	// "fusion.query" [width] (zeros at initialization: the mean). A plain
	// mean gives the two or three words an expression turns on a tenth of
	// a templated instruction's pooled text, less in a packed multi-turn
	// sequence: on the scene probe with colour words after eight filler
	// words, the mean's model put its box centre on the object 31% of the
	// time after 1,000 steps, against 66% without the filler.
	FusionAttention bool `json:"fusion_attention,omitempty"`
	// GroundLossWeight, when positive, adds a training-only grounding loss
	// (deep supervision of the referent's patches): at every image patch
	// position a shard labels (Shard.PatchTargets: the fraction of the
	// patch the answer's box covers), the hidden state entering the last
	// language-model block goes through the layer norm "ground.ln" and the
	// linear layer "ground" [width, 1] to a logit, trained with binary
	// cross-entropy against that fraction, weighted by GroundLossWeight and
	// added to the answer loss. The patches can then tell whether they are
	// what the instruction refers to before the last block, whose attention
	// reads the box off them. Inference does not use "ground.*" unless
	// GroundReadout does.
	GroundLossWeight float64 `json:"ground_loss_weight,omitempty"`
	// ConvStem replaces the linear patch embedding with a convolutional
	// stem ("early convolutions", Xiao et al. 2021): log2(PatchSize) 3x3
	// convolutions of stride 2 and zero padding 1, each followed by GELU,
	// "vision.stem.<i>.w" [3, 3, in, out] (HWIO) and ".b" [out], with
	// StemChannels' output channels, then "vision.patch_embed" as a 1x1
	// convolution [VisionWidth, VisionWidth] per patch cell. A patch token
	// then sees 15 pixels around its cell (for 8-pixel patches) through
	// layers that share their filters across the image, where the linear
	// embedding sees its own 64 pixels through one matrix: on the scene
	// probe's crops, the linear embedding named an object's shape 25% of
	// the time after 1,000 steps (8 shapes; the most frequent is 13%).
	ConvStem bool `json:"conv_stem,omitempty"`
	// BoxLossWeight, when positive, adds a training-only box loss beside
	// the grounding loss (which it needs): at every patch position that the
	// answer's box covers (Shard.PatchBoxes), the hidden state entering the
	// last language-model block goes through the layer norm "box.ln" and
	// the linear layer "box" [width, 4] to the referent's box (x1, y1, x2,
	// y2 in the padded square image, 0..1), trained with the L1 distance
	// weighted by the covered fraction, times BoxLossWeight. The patches of
	// the referent then carry its extent, not only that they are it, for
	// the last block to read the box's numbers off. Inference does not use
	// "box.*".
	BoxLossWeight float64 `json:"box_loss_weight,omitempty"`
	// GroundReadout makes the grounding head part of the model (it needs
	// GroundLossWeight): every text position after an image reads, before
	// the last language-model block, the hidden states of that image's
	// patches pooled by the softmax of their grounding logits. Position t
	// takes the patches of the image whose last patch comes latest before
	// t (none before any image, and patch positions take none); each
	// patch's grounding logit is "ground" of "ground.ln" of its hidden
	// state entering the last block, as the grounding loss trains it, and
	// the pooled "ground.ln" states go through the linear layer "readout"
	// [width, width] (no bias) and are added to position t's hidden state.
	// The patches the loss teaches to say "I am the referent" then hand
	// their state, box and all (BoxLossWeight), straight to the answer,
	// instead of the last block's attention having to learn to find them.
	// The pooling weights take no gradient from the answer (the grounding
	// loss alone trains them): with it, the scene probe's boxes came out
	// worse than the mean box. "ground.*" is then used by inference too.
	GroundReadout bool `json:"ground_readout,omitempty"`
	// Grounder replaces the patch embedding with a spatial grounding
	// encoder and gives box answers a head of their own:
	//
	//   - a sentence vector per sequence from the text before its first
	//     image: token embeddings plus "grounder.text.pos", one
	//     bidirectional transformer block "grounder.text.block" over those
	//     positions, GrounderQueries learned attention pools
	//     ("grounder.text.query", zeros at initialization: plain means),
	//     concatenated through "grounder.text.proj" and "grounder.text.ln";
	//   - a CoordConv tower over each image (two coordinate channels in -1..1
	//     beside the input of every 3x3 convolution "grounder.conv.<i>"):
	//     the pixels folded 2x2 into 12 channels (space to depth: full
	//     resolution at a quarter of the positions), then log2(PatchSize)-1
	//     stride-2 convolutions, each followed by a residual stride-1 one,
	//     every convolution followed by
	//     a FiLM scale and shift from the sentence
	//     vector ("grounder.film.<i>", zeros at initialization) and GELU;
	//     (no normalization before it),
	//     its grid of (ImageSize/PatchSize)^2 cells of VisionWidth channels
	//     is what the language model's patch positions read (vision.ln_f,
	//     projector), so the patches arrive already conditioned on the
	//     question;
	//   - a head over the cells of the first image ("grounder.head.fc1",
	//     "grounder.head.out": a pointer logit and the distances from the
	//     cell's centre to the box's four sides), trained, where a shard
	//     labels the referent (Shard.RefBoxes: single-box REC records), by
	//     cross-entropy to a Gaussian around the cell holding the box's
	//     centre plus L1 and GIoU of the boxes near it, with an existence
	//     term on the pointer logits (REC referents, POPE probes: shards'
	//     ref_exists), times GrounderLossWeight; the pointer logit adds a
	//     match of each cell's key with the sentence's query
	//     ("grounder.match.q", "grounder.match.k");
	//   - with GrounderCellWords, every cell of a labelled image predicts
	//     the words of the objects it holds ("grounder.words", tied to the
	//     token embeddings; shards' cell_words from REC records that name
	//     every object of their image).
	//
	// At inference a box answer's four numbers are the box of the cell the
	// pointer picks (compute.ForwardResult.HeadBoxes; the host's box
	// grammar writes them), while the language model writes the rest of
	// the answer. The reasoning is the reference grounders' (FiLM and
	// MDETR on CLEVR, CoordConv, CenterNet/FCOS): read positions off a
	// spatial map conditioned on the expression rather than generate them
	// digit by digit from a tiny decoder.
	Grounder           bool    `json:"grounder,omitempty"`
	GrounderQueries    int     `json:"grounder_queries,omitempty"`
	GrounderLossWeight float64 `json:"grounder_loss_weight,omitempty"`
	GrounderCellWords  bool    `json:"grounder_cell_words,omitempty"`
	// GrounderNorm normalizes every convolution of the grounder's tower
	// per image and channel over its cells (instance normalization, no
	// learned scale: FiLM's scale and shift follow) before FiLM, the
	// conv-norm-FiLM order of the FiLM paper. Unlike a per-cell norm over
	// channels, it keeps how strongly one cell responds against another.
	GrounderNorm bool `json:"grounder_norm,omitempty"`
	// GrounderGridDepth is the number of transformer blocks
	// ("grounder.grid.blocks.<i>", width VisionWidth, Heads heads, no
	// mask) over the tower's cells before the head and the language model
	// read them: every cell sees every other, which relations ("left of
	// the blue square") need and a stack of 3x3 convolutions reaches only
	// across part of the image.
	GrounderGridDepth int `json:"grounder_grid_depth,omitempty"`
	// GrounderTextDepth is the number of bidirectional transformer blocks
	// ("grounder.text.blocks.<i>") the sentence encoder runs after
	// "grounder.text.block" and before its pools: expressions that name a
	// thing by another ("the cube left of the red ball") need more than
	// one block of attention between their words.
	GrounderTextDepth int `json:"grounder_text_depth,omitempty"`
	// GrounderTextGRU makes the sentence vector a bidirectional GRU's
	// ("grounder.text.gru.fwd", ".bwd", width Width) two final states
	// over the marked text, projected to Width, in place of the
	// transformer block and its attention pools (grounder_text_depth and
	// grounder_queries are then unused). A recurrence reads the words in
	// order, which tells the thing asked for from the thing it is placed
	// by ("the circle left of the blue star"); issue 19's reference
	// grounder encodes its expressions this way.
	GrounderTextGRU bool `json:"grounder_text_gru,omitempty"`
	// GrounderStem is the number of 3x3 stride-1 convolutions (each with
	// its FiLM, like the rest of the tower) the tower runs at the folded
	// image's resolution (ImageSize/2) before its first stride-2 one,
	// with VisionWidth/4 channels, the second and later residual. Without
	// them the first convolution sees 6 x 6 pixels and moves 4 at a
	// time: one linear filter has to tell a 2-pixel stripe from a dot
	// pattern and from a solid fill, in every colour.
	GrounderStem int `json:"grounder_stem,omitempty"`
	// GrounderSigma is the width in cells of the Gaussian around the
	// referent's centre cell that the pointer is trained against, and
	// that weighs the box loss of the cells near it; 0 means
	// DefaultGrounderSigma (0.75), what configs before this field
	// trained with. A narrower target tells the pointer which cell holds
	// the centre instead of spreading a third of the probability over
	// its neighbours, which may hold other objects.
	GrounderSigma float64 `json:"grounder_sigma,omitempty"`
	// GrounderNameSlots, when above 0, gives the model a name head
	// (Net.NameLogits): convolutions of its own over each image's pixels,
	// not modulated by the text, that name the object at the image's
	// centre in at most this many words, one distribution over the
	// vocabulary per word and <eos> after the last. It trains where a
	// shard labels an image's name (name_ids: crop-naming records, whose
	// crop is centred on the object they name), and at inference it
	// answers crop-naming questions (GenerateOptions.NameFromHead) the
	// way the grounding head answers REC's box: the language model's
	// own free text never read the crop (docs/experiments.md).
	GrounderNameSlots int `json:"grounder_name_slots,omitempty"`
}

// MaxNameSlots bounds Config.GrounderNameSlots.
const MaxNameSlots = 8

// DefaultGrounderSigma is GrounderSigma when a config leaves it 0.
const DefaultGrounderSigma = 0.75

// PointerSigma is the Gaussian width the grounder loss uses:
// GrounderSigma, or DefaultGrounderSigma when it is 0.
func (c Config) PointerSigma() float64 {
	if c.GrounderSigma > 0 {
		return c.GrounderSigma
	}
	return DefaultGrounderSigma
}

// GrounderConvs lists Config.Grounder's convolutions in order: their
// stride (2 or 1) and output channels. After the 2x2 space-to-depth fold
// come GrounderStem stride-1 convolutions of VisionWidth/4 channels at
// that resolution, then stride-2 convolutions take the image to the patch
// grid, each followed by a residual stride-1 convolution at its
// resolution; the first pair has VisionWidth/2 channels, the rest
// VisionWidth. Nil without Grounder.
func (c Config) GrounderConvs() (strides, channels []int) {
	if !c.Grounder {
		return nil, nil
	}
	for range c.GrounderStem {
		strides, channels = append(strides, 1), append(channels, c.VisionWidth/4)
	}
	for p, i := c.PatchSize/2, 0; p > 1; p, i = p/2, i+1 {
		ch := c.VisionWidth
		if i == 0 && c.PatchSize > 4 {
			ch /= 2
		}
		strides, channels = append(strides, 2, 1), append(channels, ch, ch)
	}
	return strides, channels
}

// StemChannels returns ConvStem's output channels per convolution: they
// double up to VisionWidth (16, 32, 64 for 8-pixel patches and width 64);
// nil without ConvStem.
func (c Config) StemChannels() []int {
	if !c.ConvStem {
		return nil
	}
	var out []int
	for p := c.PatchSize; p > 1; p /= 2 {
		out = append(out, 0)
	}
	for i := range out {
		out[i] = c.VisionWidth >> (len(out) - 1 - i)
	}
	return out
}

// Patches returns the number of patches per image.
func (c Config) Patches() int { return (c.ImageSize / c.PatchSize) * (c.ImageSize / c.PatchSize) }

// Validate checks the config, naming the first bad field.
func (c Config) Validate() error {
	switch {
	case c.Version != "tinygrounder/v1":
		return fmt.Errorf("model config: version %q: want tinygrounder/v1", c.Version)
	case c.ImageSize <= 0 || c.PatchSize <= 0 || c.ImageSize%c.PatchSize != 0:
		return fmt.Errorf("model config: image_size %d must be a positive multiple of patch_size %d", c.ImageSize, c.PatchSize)
	case c.Width <= 0 || c.Heads <= 0 || c.Width%c.Heads != 0:
		return fmt.Errorf("model config: width %d must be a positive multiple of heads %d", c.Width, c.Heads)
	case c.VisionWidth <= 0 || c.VisionWidth%c.Heads != 0:
		return fmt.Errorf("model config: vision_width %d must be a positive multiple of heads %d", c.VisionWidth, c.Heads)
	case c.Depth <= 0 || c.VisionDepth < 0:
		return fmt.Errorf("model config: depth %d / vision_depth %d", c.Depth, c.VisionDepth)
	case c.MLPRatio <= 0:
		return fmt.Errorf("model config: mlp_ratio %v must be positive", c.MLPRatio)
	case c.VocabSize <= 0 || int(c.PatchToken) >= c.VocabSize || int(c.PadToken) >= c.VocabSize:
		return fmt.Errorf("model config: vocab_size %d too small for special tokens", c.VocabSize)
	case c.BoxTokens < 0 || c.BoxToken0 < 0 || int(c.BoxToken0)+c.BoxTokens > c.VocabSize:
		return fmt.Errorf("model config: box tokens %d..%d outside the vocabulary of %d", c.BoxToken0, int(c.BoxToken0)+c.BoxTokens-1, c.VocabSize)
	case c.BoxLabelSigma < 0 || c.BoxLabelSigma > 0 && c.BoxTokens == 0:
		return fmt.Errorf("model config: box_label_sigma %v needs box_tokens and must not be negative", c.BoxLabelSigma)
	case c.FusionAttention && !c.TextFusion:
		return fmt.Errorf("model config: fusion_attention needs text_fusion")
	case c.ConvStem && (c.PatchSize < 2 || c.PatchSize&(c.PatchSize-1) != 0 || c.VisionWidth%(c.PatchSize/2) != 0):
		return fmt.Errorf("model config: conv_stem needs a patch_size that is a power of two (not %d) and a vision_width divisible by patch_size/2 (not %d)", c.PatchSize, c.VisionWidth)
	case c.GroundLossWeight < 0 || math.IsNaN(c.GroundLossWeight):
		return fmt.Errorf("model config: ground_loss_weight %v must not be negative", c.GroundLossWeight)
	case c.BoxLossWeight < 0 || math.IsNaN(c.BoxLossWeight) || c.BoxLossWeight > 0 && c.GroundLossWeight <= 0:
		return fmt.Errorf("model config: box_loss_weight %v must not be negative, and needs ground_loss_weight", c.BoxLossWeight)
	case c.GroundReadout && c.GroundLossWeight <= 0:
		return fmt.Errorf("model config: ground_readout needs ground_loss_weight")
	case c.Grounder && (c.PatchSize < 4 || c.PatchSize&(c.PatchSize-1) != 0 || c.VisionWidth%4 != 0):
		return fmt.Errorf("model config: grounder needs a patch_size that is a power of two of at least 4 (not %d) and a vision_width divisible by 4 (not %d)", c.PatchSize, c.VisionWidth)
	case c.Grounder && (c.ConvStem || c.TextFusion || c.GroundReadout || c.VisionDepth != 0):
		return fmt.Errorf("model config: grounder replaces conv_stem, text_fusion, ground_readout and the vision blocks (vision_depth %d): turn them off", c.VisionDepth)
	case c.Grounder && !c.ImagesAfterText:
		return fmt.Errorf("model config: grounder needs images_after_text (its sentence vector reads the text before the first image)")
	case c.Grounder && (c.GrounderQueries <= 0 || c.GrounderLossWeight <= 0 || math.IsNaN(c.GrounderLossWeight)):
		return fmt.Errorf("model config: grounder needs grounder_queries (%d) and grounder_loss_weight (%v) above 0", c.GrounderQueries, c.GrounderLossWeight)
	case c.GrounderSigma < 0 || c.GrounderSigma > 4 || math.IsNaN(c.GrounderSigma):
		return fmt.Errorf("model config: grounder_sigma %v must be in [0, 4] cells (0: %v)", c.GrounderSigma, DefaultGrounderSigma)
	case c.GrounderStem < 0 || c.GrounderStem > 4:
		return fmt.Errorf("model config: grounder_stem %d must be in 0..4", c.GrounderStem)
	case c.GrounderTextDepth < 0 || c.GrounderTextDepth > 8:
		return fmt.Errorf("model config: grounder_text_depth %d must be in 0..8", c.GrounderTextDepth)
	case c.GrounderNameSlots < 0 || c.GrounderNameSlots > MaxNameSlots:
		return fmt.Errorf("model config: grounder_name_slots %d must be in 0..%d", c.GrounderNameSlots, MaxNameSlots)
	case !c.Grounder && (c.GrounderQueries != 0 || c.GrounderLossWeight != 0 || c.GrounderCellWords || c.GrounderNorm || c.GrounderGridDepth != 0 || c.GrounderTextDepth != 0 || c.GrounderStem != 0 || c.GrounderSigma != 0 || c.GrounderTextGRU || c.GrounderNameSlots != 0):
		return fmt.Errorf("model config: grounder_queries, grounder_loss_weight, grounder_cell_words, grounder_norm, grounder_grid_depth, grounder_text_depth, grounder_text_gru, grounder_stem, grounder_sigma and grounder_name_slots need grounder")
	case c.GrounderGridDepth < 0 || c.GrounderGridDepth > 8 || c.GrounderGridDepth > 0 && c.VisionWidth%c.Heads != 0:
		return fmt.Errorf("model config: grounder_grid_depth %d must be in 0..8, with a vision_width (%d) divisible by heads (%d)", c.GrounderGridDepth, c.VisionWidth, c.Heads)
	case c.MaxSeq < c.Patches()*c.MaxImages+8:
		return fmt.Errorf("model config: max_seq %d shorter than %d image patches plus text", c.MaxSeq, c.Patches()*c.MaxImages)
	}
	return nil
}

// ParseConfig decodes and validates a config, rejecting unknown fields.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("decode model config: %w", err)
	}
	return c, c.Validate()
}

// Tokenized training shard format (safetensors, one file per shard):
//
//	tokens       int32 [N, MaxSeq]   token ids, PadToken after the end
//	targets      int32 [N, MaxSeq]   next-token target per position, -1 = no loss
//	                                 (prompt, image patches and padding carry -1;
//	                                 only answer tokens are learned)
//	images       uint8 [M, ImageSize, ImageSize, 3]  preprocessed (padded to
//	                                 square with the mean colour, resized) RGB
//	image_index  int32 [N, MaxImages]  row of images per slot, -1 = empty slot
//	patch_targets uint8 [N, MaxSeq]  optional (written when GroundLossWeight > 0):
//	                                 at the first image's patch positions of a
//	                                 sample whose first answer has boxes on it,
//	                                 round(covered fraction * PatchTargetScale);
//	                                 NoPatchTarget (255) everywhere else
//	patch_boxes  uint8 [N, MaxSeq, 4]  optional (written when BoxLossWeight > 0):
//	                                 where patch_targets is above 0, the box
//	                                 that covers the patch most (x1, y1, x2, y2
//	                                 in hundredths of the padded square image);
//	                                 0 everywhere else
//
// Backends normalize images as (pixel/255 - 0.5) / 0.25 per channel, the
// same function as NormalizePixels, so that training and inference agree.
// The safetensors header's __metadata__ carries "config_sha256" and
// "synth_set" for lineage.

// Features lists the architecture options the config turns on, by their
// JSON names. A backend declares the features it implements
// (compute.Description.Features); a host refuses to run a config that
// needs one it lacks (Unsupported).
func (c Config) Features() []string {
	var out []string
	for _, f := range []struct {
		name string
		on   bool
	}{
		{"box_label_sigma", c.BoxLabelSigma > 0},
		{"images_after_text", c.ImagesAfterText},
		{"text_fusion", c.TextFusion},
		{"patch_positions", c.PatchPositions},
		{"fusion_attention", c.FusionAttention},
		{"ground_loss_weight", c.GroundLossWeight > 0},
		{"conv_stem", c.ConvStem},
		{"box_loss_weight", c.BoxLossWeight > 0},
		{"ground_readout", c.GroundReadout},
		{"grounder", c.Grounder},
		{"grounder_cell_words", c.GrounderCellWords},
		{"grounder_norm", c.GrounderNorm},
		{"grounder_grid_depth", c.GrounderGridDepth > 0},
		{"grounder_text_depth", c.GrounderTextDepth > 0},
		{"grounder_text_gru", c.GrounderTextGRU},
		{"grounder_stem", c.GrounderStem > 0},
		{"grounder_sigma", c.GrounderSigma > 0},
		{"grounder_name_slots", c.GrounderNameSlots > 0},
	} {
		if f.on {
			out = append(out, f.name)
		}
	}
	return out
}

// AllFeatures lists every architecture option a config can turn on, as
// Features names them: what a backend that implements the whole model
// declares.
func AllFeatures() []string {
	all := Config{BoxLabelSigma: 1, ImagesAfterText: true, TextFusion: true, PatchPositions: true, FusionAttention: true,
		GroundLossWeight: 1, ConvStem: true, BoxLossWeight: 1, GroundReadout: true, Grounder: true, GrounderCellWords: true, GrounderNorm: true, GrounderGridDepth: 1, GrounderTextDepth: 1, GrounderTextGRU: true, GrounderStem: 1, GrounderSigma: 0.5, GrounderNameSlots: 1}
	return all.Features()
}

// Unsupported returns an error naming the features c needs that a backend
// (name) does not declare, nil when it declares them all.
func (c Config) Unsupported(backend string, declared []string) error {
	var missing []string
	for _, f := range c.Features() {
		if !slices.Contains(declared, f) {
			missing = append(missing, f)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("model config needs %s, which backend %q does not implement (it declares %s)",
		strings.Join(missing, ", "), backend, strings.Join(declared, ", "))
}
