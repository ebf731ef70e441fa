package model

import (
	"bufio"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"image"
	_ "image/jpeg" // decoders for FileImageResolver
	_ "image/png"
	"io"
	"iter"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/groundmesh/groundmesh/internal/dataset"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
)

// ShardFormat is the "format" metadata of the shards BuildShards writes.
const ShardFormat = "tinygrounder/v1 shard"

// ImageResolver turns a record's image reference into an image.
type ImageResolver interface {
	ResolveImage(ctx context.Context, ref ImageRef) (image.Image, error)
}

// ImageResolverFunc adapts a function to ImageResolver.
type ImageResolverFunc func(ctx context.Context, ref ImageRef) (image.Image, error)

// ResolveImage calls f.
func (f ImageResolverFunc) ResolveImage(ctx context.Context, ref ImageRef) (image.Image, error) {
	return f(ctx, ref)
}

// BlobOpener opens blob keys; blob.Store is one.
type BlobOpener interface {
	Open(key string) (io.ReadCloser, error)
}

// FileImageResolver reads "image" references from files under DatasetRoot
// and "crop" references from blobs, decoding PNG or JPEG. It refuses an
// image whose size differs from the reference's Width and Height (when
// set), since boxes are in that frame.
type FileImageResolver struct {
	DatasetRoot string     // directory "image" paths are relative to
	Blobs       BlobOpener // where "crop" keys live; nil refuses crops
}

// ResolveImage opens and decodes ref.
func (r FileImageResolver) ResolveImage(_ context.Context, ref ImageRef) (image.Image, error) {
	var f io.ReadCloser
	var err error
	switch ref.Kind {
	case "image":
		if !filepath.IsLocal(filepath.FromSlash(ref.Path)) {
			return nil, fmt.Errorf("resolve image %q: path escapes the dataset root", ref.Path)
		}
		f, err = os.Open(filepath.Join(r.DatasetRoot, filepath.FromSlash(ref.Path)))
	case "crop":
		if r.Blobs == nil {
			return nil, fmt.Errorf("resolve crop %q: no blob store", ref.Path)
		}
		f, err = r.Blobs.Open(ref.Path)
	default:
		return nil, fmt.Errorf("resolve image %q: unknown kind %q", ref.Path, ref.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s %q: %w", ref.Kind, ref.Path, err)
	}
	defer f.Close()
	img, _, err := image.Decode(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("decode %s %q: %w", ref.Kind, ref.Path, err)
	}
	if b := img.Bounds(); ref.Width > 0 && ref.Height > 0 && (b.Dx() != ref.Width || b.Dy() != ref.Height) {
		return nil, fmt.Errorf("decode %s %q: %dx%d, record says %dx%d", ref.Kind, ref.Path, b.Dx(), b.Dy(), ref.Width, ref.Height)
	}
	if img, err = ApplyTransform(img, ref.Transform); err != nil {
		return nil, fmt.Errorf("%s %q: %w", ref.Kind, ref.Path, err)
	}
	return img, nil
}

// ReadRecords streams records from JSONL, gzip-compressed or not (as synth
// writes its shards). Iteration stops after the first error it yields.
func ReadRecords(r io.Reader) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		br := bufio.NewReader(r)
		var src io.Reader = br
		if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
			zr, err := gzip.NewReader(br)
			if err != nil {
				yield(Record{}, fmt.Errorf("read records: %w", err))
				return
			}
			defer zr.Close()
			src = zr
		}
		dec := json.NewDecoder(src)
		for n := 1; ; n++ {
			var rec Record
			err := dec.Decode(&rec)
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(Record{}, fmt.Errorf("read records: record %d: %w", n, err))
				return
			}
			if !yield(rec, nil) {
				return
			}
		}
	}
}

// ShardConfig configures BuildShards.
type ShardConfig struct {
	// Model is the architecture; ImageSize, MaxSeq, MaxImages and PadToken
	// shape the shards. Required, validated.
	Model Config
	// Tokenizer encodes the conversations. Required; its vocabulary size
	// must equal Model.VocabSize.
	Tokenizer *Tokenizer
	// Dir is the output directory, created if missing. Required.
	Dir string
	// Name prefixes the file names: "<Name>-00000.safetensors". Default "shard".
	Name string
	// Stages keeps records of these stages only; empty keeps all.
	Stages []string
	// Splits keeps records of these splits only. Default {"train"}.
	Splits []string
	// SamplesPerShard is N, the samples of every shard but the last. Default 1024.
	SamplesPerShard int
	// Seed orders the samples: a record's place is a hash of the seed and
	// its ID, so the shards do not depend on the order records arrive in.
	Seed int64
	// SynthSet is the synth set id written to the metadata ("synth_set").
	SynthSet string
	// Workers decode and preprocess images in parallel. Default GOMAXPROCS.
	Workers int
	// CacheBytes bounds the cache of preprocessed images kept across
	// shards. Default 256 MiB; negative disables the cache.
	CacheBytes int64
	// Pack turns the records that read the same single image into
	// multi-turn conversations about it, as many as fit MaxSeq, in their
	// shuffled order (later records' human turns drop their <image>). The
	// image is encoded once for several answers, so a step learns more
	// answers for nearly the same compute; BuildStats.Packed counts the
	// records that joined another's sequence.
	Pack bool
	// Logger receives progress. Default discards.
	Logger *slog.Logger
}

func (c *ShardConfig) defaults() error {
	if err := c.Model.Validate(); err != nil {
		return fmt.Errorf("shard config: %w", err)
	}
	if c.Tokenizer == nil {
		return errors.New("shard config: no tokenizer")
	}
	if c.Tokenizer.VocabSize() != c.Model.VocabSize {
		return fmt.Errorf("shard config: tokenizer has %d tokens, model config %d", c.Tokenizer.VocabSize(), c.Model.VocabSize)
	}
	if c.Model.PatchToken != tokPatch || c.Model.PadToken != tokPad {
		return fmt.Errorf("shard config: model patch/pad tokens %d/%d, tokenizer %d/%d", c.Model.PatchToken, c.Model.PadToken, tokPatch, tokPad)
	}
	if c.Dir == "" {
		return errors.New("shard config: no output directory")
	}
	if c.Pack && c.Model.GroundReadout {
		// A packed image comes once, after its first turn's question: its
		// patches ground that question, and later turns would read it.
		return errors.New("shard config: pack with ground_readout: later turns would read the first turn's referent")
	}
	if c.Name == "" {
		c.Name = "shard"
	}
	if strings.ContainsAny(c.Name, `/\`) {
		return fmt.Errorf("shard config: name %q contains a path separator", c.Name)
	}
	if len(c.Splits) == 0 {
		c.Splits = []string{"train"}
	}
	if c.SamplesPerShard == 0 {
		c.SamplesPerShard = 1024
	}
	if c.SamplesPerShard < 0 {
		return fmt.Errorf("shard config: samples per shard %d", c.SamplesPerShard)
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = 256 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ShardInfo describes one written shard.
type ShardInfo struct {
	Path    string // file path
	SHA256  string // hex sha256 of the file
	Bytes   int64
	Samples int
	Images  int   // distinct images stored
	Tokens  int64 // non-padding tokens
	Targets int64 // positions that carry a loss
}

// BuildStats counts what a build did with its records.
type BuildStats struct {
	Read     int            // records read
	Filtered int            // skipped by the stage or split filter
	Kept     int            // written to shards
	Dropped  map[string]int // by reason: "too_long", "too_many_images", "invalid"
	Packed   int            // records written as a later turn of another record's sample (Pack)
	Shards   int
}

// ShardBuilder turns synth records into tokenized training shards.
type ShardBuilder struct {
	cfg    ShardConfig
	images ImageResolver
	stats  BuildStats
	cache  map[string][]uint8
	cached int64
}

// NewShardBuilder validates and defaults cfg.
func NewShardBuilder(cfg ShardConfig, images ImageResolver) (*ShardBuilder, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if images == nil {
		return nil, errors.New("shard builder: no image resolver")
	}
	return &ShardBuilder{cfg: cfg, images: images}, nil
}

// Stats reports the last Build.
func (b *ShardBuilder) Stats() BuildStats { return b.stats }

// BuildShards builds shards with a new ShardBuilder; see ShardBuilder.Build.
func BuildShards(ctx context.Context, cfg ShardConfig, records iter.Seq2[Record, error], images ImageResolver) ([]ShardInfo, error) {
	b, err := NewShardBuilder(cfg, images)
	if err != nil {
		return nil, err
	}
	return b.Build(ctx, records)
}

type entry struct {
	key    uint64
	id     string
	seq    int
	sample Sample
	images []ImageRef
	rec    *Record // set when the record may be packed with others of its image
	// ground is the referent of the first image's patches, for
	// patch_targets (Config.GroundLossWeight); nil for none.
	ground *groundRef
	// ref is the referent's box on the first image for Config.Grounder's
	// head, normalized to the padded square; nil for none.
	ref *NormBox
	// exists is Config.Grounder's existence label: 1 when the text before
	// the first image names something on it (a REC referent, a POPE "yes"),
	// 0 when it names something absent (a POPE "no"), -1 for no label.
	exists int32
	// cells are the first image's cell labels (CellLabels), nil for none.
	cells []int32
	// name is the first image's name label (NameLabel), nil for none.
	name []int32
}

// rowLabels lays out a shard's label rows of width per: each sample's own
// (get) where it has one, fill throughout where not; nil when no sample
// of the chunk has one.
func rowLabels(chunk []entry, per int, fill int32, get func(entry) []int32) []int32 {
	if per <= 0 || !slices.ContainsFunc(chunk, func(e entry) bool { return get(e) != nil }) {
		return nil
	}
	out := make([]int32, len(chunk)*per)
	for i, e := range chunk {
		if row := get(e); row != nil {
			copy(out[i*per:(i+1)*per], row)
			continue
		}
		for j := range per {
			out[i*per+j] = fill
		}
	}
	return out
}

// nameOf returns Config.GrounderNameSlots' label for a crop-naming
// record: the words of its answer's name (Answer.Text, the object at the
// crop's centre), nil for other records and names longer than the slots.
func nameOf(c Config, tok *Tokenizer, rec *Record) []int32 {
	if c.GrounderNameSlots <= 0 || rec.Task != "crop_name" || len(rec.Images) == 0 {
		return nil
	}
	return NameLabel(tok, rec.Answer.Text, c.GrounderNameSlots)
}

// NoNameWord fills the slots of Shard.NameIDs after a name's <eos>, and
// every slot of a sample without a name.
const NoNameWord = -1

// NameLabel is the name head's target for name: its token ids, <eos>,
// then NoNameWord up to slots; nil when the name takes more than slots-1
// tokens, has a token no name may hold (NameToken: a word outside the
// vocabulary, spelled in bytes), or none. The name is encoded as it reads inside a sentence
// (" small red circle": a vocabulary's words carry the space before
// them) unless it takes fewer tokens as it stands.
func NameLabel(tok *Tokenizer, name string, slots int) []int32 {
	name = strings.TrimSpace(name)
	ids := tok.Encode(" " + name)
	if bare := tok.Encode(name); len(bare) < len(ids) {
		ids = bare
	}
	if name == "" || len(ids) >= slots || slices.ContainsFunc(ids, func(id int32) bool { return !NameToken(id) }) {
		return nil
	}
	out := make([]int32, slots)
	n := copy(out, ids)
	out[n] = tokEOS
	for i := n + 1; i < slots; i++ {
		out[i] = NoNameWord
	}
	return out
}

// cellsOf returns Config.Grounder's cell labels for a REC record whose
// answer names every object of its image (Answer.Names), nil otherwise.
func cellsOf(c Config, tok *Tokenizer, rec *Record) []int32 {
	if !c.GrounderCellWords || refOf(c, rec) == nil || len(rec.Answer.Names) != 1+len(rec.Answer.Others) {
		return nil
	}
	im := rec.Images[0]
	boxes := append([][4]float64{rec.Answer.Boxes[0]}, rec.Answer.Others...)
	return CellLabels(c, tok, im.Width, im.Height, boxes, rec.Answer.Names)
}

// existsOf returns a record's existence label (see entry.exists).
func existsOf(c Config, rec *Record) int32 {
	if !c.Grounder || len(rec.Images) == 0 || rec.Images[0].Kind != "image" {
		return NoRefBox
	}
	switch {
	case rec.Task == "rec" && len(rec.Answer.Boxes) == 1:
		return 1
	case rec.Task == "pope" && rec.Answer.YesNo == "yes":
		return 1
	case rec.Task == "pope" && rec.Answer.YesNo == "no":
		return 0
	}
	return NoRefBox
}

// refOf returns Config.Grounder's label for a record: the one box of a
// REC answer (an expression in the text, its referent on the first, full
// image), normalized. Other tasks' boxes are not what the text before the
// image names (a crop's place, every object of a dense description), so
// they label nothing.
func refOf(c Config, rec *Record) *NormBox {
	if !c.Grounder || rec.Task != "rec" || len(rec.Answer.Boxes) != 1 || len(rec.Images) == 0 || rec.Images[0].Kind != "image" {
		return nil
	}
	im := rec.Images[0]
	if im.Width <= 0 || im.Height <= 0 {
		return nil
	}
	b := rec.Answer.Boxes[0]
	n := Normalize(dataset.Box{X1: b[0], Y1: b[1], X2: b[2], Y2: b[3]}, im.Width, im.Height)
	return &n
}

// groundRef is what a sample's first image's patches are labelled with: the
// answer's boxes (pixel xyxy) on that image of w x h pixels.
type groundRef struct {
	w, h  int
	boxes [][4]float64
}

// groundOf returns the patch labels' source for a record: its answer's
// boxes when its first image is a full image (Answer.Boxes are in that
// image's pixels), else nil. Only the first record of a packed sequence
// labels it: the later turns' text comes after the patches, which a causal
// model's patches cannot read.
func groundOf(c Config, rec *Record) *groundRef {
	if c.GroundLossWeight <= 0 || len(rec.Answer.Boxes) == 0 || len(rec.Images) == 0 || rec.Images[0].Kind != "image" {
		return nil
	}
	im := rec.Images[0]
	if im.Width <= 0 || im.Height <= 0 {
		return nil
	}
	return &groundRef{w: im.Width, h: im.Height, boxes: rec.Answer.Boxes}
}

// PatchCover returns, for each patch of the model's patch grid (raster
// order) over the image padded to a square, the largest fraction of it
// that any of boxes (pixel xyxy of a w x h image) covers.
func PatchCover(c Config, w, h int, boxes [][4]float64) []float64 {
	out, _ := patchCover(c, w, h, boxes)
	return out
}

// patchCover is PatchCover that also returns, per patch, the index of the
// box that covers it most (-1 for none).
func patchCover(c Config, w, h int, boxes [][4]float64) (cover []float64, which []int) {
	g := c.ImageSize / c.PatchSize
	out := make([]float64, g*g)
	which = make([]int, g*g)
	for i := range which {
		which[i] = -1
	}
	for k, b := range boxes {
		n := Normalize(dataset.Box{X1: b[0], Y1: b[1], X2: b[2], Y2: b[3]}, w, h)
		for py := range g {
			y0, y1 := float64(py)/float64(g), float64(py+1)/float64(g)
			ch := max(0, min(y1, n[3])-max(y0, n[1])) * float64(g)
			if ch == 0 {
				continue
			}
			for px := range g {
				x0, x1 := float64(px)/float64(g), float64(px+1)/float64(g)
				cw := max(0, min(x1, n[2])-max(x0, n[0])) * float64(g)
				if f := cw * ch; f > out[py*g+px] {
					out[py*g+px], which[py*g+px] = f, k
				}
			}
		}
	}
	return out, which
}

// pack merges, in entry order, the packable entries that read the same
// image into multi-turn samples that fit MaxSeq. A merged sample keeps the
// place of its first record; a record with patch labels (entry.ground)
// starts a new sample.
func (b *ShardBuilder) pack(entries []entry) []entry {
	open := map[string]int{} // image key -> index in out of the sample still taking turns
	out := entries[:0:0]
	for _, e := range entries {
		if e.rec == nil {
			out = append(out, e)
			continue
		}
		k := e.images[0].Key()
		// A record whose answer grounds the image (it labels the patches:
		// entry.ground) only leads a sequence: as a later turn its question
		// would come after the patches, which could neither be modulated by
		// it (Config.TextFusion) nor labelled for it, and REC would learn
		// from the text alone. Records after it can still join it.
		// Nor a record the grounder learns from (a referent or an existence
		// label: it has a ref box only where it has the label), for the
		// same reason: its sentence vector reads the text before the image.
		// Nor a record with a name label, which the merged sequence would
		// drop.
		if i, ok := open[k]; ok && e.ground == nil && e.exists == NoRefBox && e.name == nil {
			cur := &out[i]
			merged := *cur.rec
			merged.Conversations = append(slices.Clip(cur.rec.Conversations), laterTurns(e.rec.Conversations)...)
			if s, err := EncodeRecord(b.cfg.Tokenizer, b.cfg.Model, merged); err == nil {
				cur.rec, cur.sample = &merged, s
				b.stats.Packed++
				continue
			}
		}
		open[k] = len(out)
		out = append(out, e)
	}
	for i := range out {
		out[i].rec = nil
	}
	return out
}

// laterTurns returns a record's turns for a later place in a conversation
// about the same image: without the <image> placeholder.
func laterTurns(turns []Turn) []Turn {
	out := make([]Turn, len(turns))
	for i, t := range turns {
		if before, after, ok := strings.Cut(t.Value, imagePlaceholder); t.From == "human" && ok {
			t.Value = strings.TrimSpace(before + strings.TrimPrefix(after, "\n"))
		}
		out[i] = t
	}
	return out
}

// sortKey places a record in the shuffled order: FNV-1a of the seed and the
// record ID.
func sortKey(seed int64, id string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for i := range b {
		b[i] = byte(uint64(seed) >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(id))
	return h.Sum64()
}

// Build reads every record, keeps those of the configured stages and
// splits, tokenizes them (dropping, and counting, those that do not fit),
// orders them by a seeded hash of their IDs and writes shards of
// SamplesPerShard samples, each with its distinct images stored once. Equal
// inputs give byte-identical files.
func (b *ShardBuilder) Build(ctx context.Context, records iter.Seq2[Record, error]) (infos []ShardInfo, err error) {
	ctx, span := otel.Tracer("groundmesh/model").Start(ctx, "model.BuildShards")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	cfg := b.cfg
	b.stats = BuildStats{Dropped: map[string]int{}}
	b.cache = map[string][]uint8{}
	b.cached = 0
	var entries []entry
	for rec, err := range records {
		if err != nil {
			return nil, fmt.Errorf("build shards: %w", err)
		}
		if b.stats.Read%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("build shards: %w", err)
			}
		}
		b.stats.Read++
		if (len(cfg.Stages) > 0 && !slices.Contains(cfg.Stages, rec.Stage)) || !slices.Contains(cfg.Splits, rec.Split) {
			b.stats.Filtered++
			continue
		}
		s, err := EncodeRecord(cfg.Tokenizer, cfg.Model, rec)
		switch {
		case errors.Is(err, ErrTooManyImages):
			b.stats.Dropped["too_many_images"]++
			continue
		case errors.Is(err, ErrTooLong):
			b.stats.Dropped["too_long"]++
			continue
		case err != nil:
			b.stats.Dropped["invalid"]++
			if b.stats.Dropped["invalid"] <= 10 {
				cfg.Logger.Warn("shard builder drops an invalid record", "record", rec.ID, "err", err)
			}
			continue
		}
		e := entry{key: sortKey(cfg.Seed, rec.ID), id: rec.ID, seq: len(entries), sample: s, images: rec.Images, ground: groundOf(cfg.Model, &rec), ref: refOf(cfg.Model, &rec), exists: existsOf(cfg.Model, &rec), cells: cellsOf(cfg.Model, cfg.Tokenizer, &rec), name: nameOf(cfg.Model, cfg.Tokenizer, &rec)}
		if cfg.Pack && len(rec.Images) == 1 {
			e.rec = &rec
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(x, y entry) int {
		return cmp.Or(cmp.Compare(x.key, y.key), strings.Compare(x.id, y.id), cmp.Compare(x.seq, y.seq))
	})
	if cfg.Pack {
		entries = b.pack(entries)
	}
	b.stats.Kept = len(entries) + b.stats.Packed
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("build shards: %w", err)
	}
	n := cfg.SamplesPerShard
	total := (len(entries) + n - 1) / n
	for i := range total {
		chunk := entries[i*n : min(len(entries), (i+1)*n)]
		info, err := b.writeShard(ctx, i, total, chunk)
		if err != nil {
			return nil, fmt.Errorf("build shards: shard %d: %w", i, err)
		}
		infos = append(infos, info)
		cfg.Logger.Info("shard written", "path", info.Path, "samples", info.Samples, "images", info.Images, "bytes", info.Bytes)
	}
	b.stats.Shards = len(infos)
	span.SetAttributes(attribute.Int("records.read", b.stats.Read), attribute.Int("records.kept", b.stats.Kept),
		attribute.Int("shards", len(infos)))
	cfg.Logger.Info("shards built", "read", b.stats.Read, "filtered", b.stats.Filtered, "kept", b.stats.Kept,
		"dropped", b.stats.Dropped, "shards", len(infos))
	return infos, nil
}

func (b *ShardBuilder) writeShard(ctx context.Context, index, total int, chunk []entry) (ShardInfo, error) {
	cfg := b.cfg
	L, K, S := cfg.Model.MaxSeq, cfg.Model.MaxImages, cfg.Model.ImageSize
	tokens := make([]int32, len(chunk)*L)
	targets := make([]int32, len(chunk)*L)
	imageIndex := make([]int32, len(chunk)*K)
	var patchTargets, patchBoxes []uint8
	if cfg.Model.GroundLossWeight > 0 {
		patchTargets = make([]uint8, len(chunk)*L)
		for i := range patchTargets {
			patchTargets[i] = NoPatchTarget
		}
	}
	if cfg.Model.BoxLossWeight > 0 {
		patchBoxes = make([]uint8, len(chunk)*L*4)
	}
	var refBoxes, refExists []int32
	if cfg.Model.Grounder {
		refBoxes = make([]int32, len(chunk)*4)
		for i := range refBoxes {
			refBoxes[i] = NoRefBox
		}
		refExists = make([]int32, len(chunk))
	}
	cellWords := rowLabels(chunk, cfg.Model.Patches()*CellWords, NoCellLabels, func(e entry) []int32 { return e.cells })
	nameIDs := rowLabels(chunk, cfg.Model.GrounderNameSlots, NoNameWord, func(e entry) []int32 { return e.name })
	rows := map[string]int32{}
	var refs []ImageRef
	info := ShardInfo{Samples: len(chunk)}
	for i, e := range chunk {
		row := tokens[i*L : (i+1)*L]
		trow := targets[i*L : (i+1)*L]
		copy(row, e.sample.Tokens)
		copy(trow, e.sample.Targets)
		for p := len(e.sample.Tokens); p < L; p++ {
			row[p], trow[p] = cfg.Model.PadToken, -1
		}
		if patchTargets != nil && e.ground != nil {
			// The first image's patches are the first Patches() patch
			// tokens: placeholders keep their order.
			cover, which := patchCover(cfg.Model, e.ground.w, e.ground.h, e.ground.boxes)
			var hundredths [][4]uint8 // each box in hundredths of the padded square
			if patchBoxes != nil {
				hundredths = make([][4]uint8, len(e.ground.boxes))
				for j, b := range e.ground.boxes {
					n := Normalize(dataset.Box{X1: b[0], Y1: b[1], X2: b[2], Y2: b[3]}, e.ground.w, e.ground.h)
					for k, v := range n {
						hundredths[j][k] = uint8(math.Round(min(max(v, 0), 1) * 100))
					}
				}
			}
			np := 0
			for p, tok := range e.sample.Tokens {
				if tok != cfg.Model.PatchToken || np == len(cover) {
					continue
				}
				patchTargets[i*L+p] = uint8(math.Round(cover[np] * PatchTargetScale))
				if patchBoxes != nil && patchTargets[i*L+p] > 0 {
					copy(patchBoxes[(i*L+p)*4:], hundredths[which[np]][:])
				}
				np++
			}
		}
		if refExists != nil {
			refExists[i] = e.exists
		}
		if refBoxes != nil && e.ref != nil {
			r := refBoxes[i*4 : i*4+4]
			for k, v := range e.ref {
				r[k] = int32(math.Round(min(max(v, 0), 1) * 1000))
			}
			for k := range 2 { // keep a positive extent after rounding
				if r[k+2] <= r[k] {
					r[k+2] = min(r[k]+1, 1000)
					r[k] = r[k+2] - 1
				}
			}
		}
		info.Tokens += int64(len(e.sample.Tokens))
		for _, t := range e.sample.Targets {
			if t >= 0 {
				info.Targets++
			}
		}
		for k := range K {
			imageIndex[i*K+k] = -1
		}
		for k, ref := range e.images {
			r, ok := rows[ref.Key()]
			if !ok {
				r = int32(len(refs))
				rows[ref.Key()] = r
				refs = append(refs, ref)
			}
			imageIndex[i*K+k] = r
		}
	}
	pix, err := b.loadImages(ctx, refs)
	if err != nil {
		return ShardInfo{}, err
	}
	images := make([]byte, 0, len(refs)*S*S*3)
	for _, p := range pix {
		images = append(images, p...)
	}
	info.Images = len(refs)
	tensors := []Tensor{
		{Name: "tokens", DType: "I32", Shape: []int{len(chunk), L}, Data: Int32Bytes(tokens)},
		{Name: "targets", DType: "I32", Shape: []int{len(chunk), L}, Data: Int32Bytes(targets)},
		{Name: "image_index", DType: "I32", Shape: []int{len(chunk), K}, Data: Int32Bytes(imageIndex)},
		{Name: "images", DType: "U8", Shape: []int{len(refs), S, S, 3}, Data: images},
	}
	if patchTargets != nil {
		tensors = append(tensors, Tensor{Name: "patch_targets", DType: "U8", Shape: []int{len(chunk), L}, Data: patchTargets})
	}
	if patchBoxes != nil {
		tensors = append(tensors, Tensor{Name: "patch_boxes", DType: "U8", Shape: []int{len(chunk), L, 4}, Data: patchBoxes})
	}
	if refBoxes != nil {
		tensors = append(tensors, Tensor{Name: "ref_boxes", DType: "I32", Shape: []int{len(chunk), 4}, Data: Int32Bytes(refBoxes)},
			Tensor{Name: "ref_exists", DType: "I32", Shape: []int{len(chunk)}, Data: Int32Bytes(refExists)})
	}
	if cellWords != nil {
		tensors = append(tensors, Tensor{Name: "cell_words", DType: "I32", Shape: []int{len(chunk), cfg.Model.Patches(), CellWords}, Data: Int32Bytes(cellWords)})
	}
	if nameIDs != nil {
		tensors = append(tensors, Tensor{Name: "name_ids", DType: "I32", Shape: []int{len(chunk), cfg.Model.GrounderNameSlots}, Data: Int32Bytes(nameIDs)})
	}
	meta := map[string]string{
		"format":        ShardFormat,
		"config_sha256": cfg.Model.SHA256(),
		"synth_set":     cfg.SynthSet,
		"tokenizer":     cfg.Tokenizer.ID(),
		"seed":          strconv.FormatInt(cfg.Seed, 10),
		"stages":        strings.Join(cfg.Stages, ","),
		"splits":        strings.Join(cfg.Splits, ","),
		"shard":         strconv.Itoa(index),
		"shards":        strconv.Itoa(total),
		"samples":       strconv.Itoa(len(chunk)),
	}
	path := filepath.Join(cfg.Dir, fmt.Sprintf("%s-%05d.safetensors", cfg.Name, index))
	tmp, err := os.CreateTemp(cfg.Dir, ".tmp-shard-*")
	if err != nil {
		return ShardInfo{}, fmt.Errorf("create shard: %w", err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, h), 1<<20)
	n, err := WriteSafetensors(bw, tensors, meta)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return ShardInfo{}, fmt.Errorf("write shard: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return ShardInfo{}, fmt.Errorf("write shard: %w", err)
	}
	info.Path, info.Bytes, info.SHA256 = path, n, hex.EncodeToString(h.Sum(nil))
	return info, nil
}

// loadImages resolves and preprocesses refs in parallel, through the cache.
func (b *ShardBuilder) loadImages(ctx context.Context, refs []ImageRef) ([][]uint8, error) {
	out := make([][]uint8, len(refs))
	var todo []int
	for i, ref := range refs {
		if p, ok := b.cache[ref.Key()]; ok {
			out[i] = p
		} else {
			todo = append(todo, i)
		}
	}
	errs := make([]error, len(refs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(b.cfg.Workers, len(todo)) {
		wg.Go(func() {
			for i := range next {
				if err := ctx.Err(); err != nil {
					errs[i] = err
					continue
				}
				img, err := b.images.ResolveImage(ctx, refs[i])
				if err != nil {
					errs[i] = fmt.Errorf("resolve %s %q: %w", refs[i].Kind, refs[i].Path, err)
					continue
				}
				p, err := Preprocess(img, b.cfg.Model.ImageSize)
				if err != nil {
					errs[i] = fmt.Errorf("preprocess %s %q: %w", refs[i].Kind, refs[i].Path, err)
					continue
				}
				out[i] = p
			}
		})
	}
	for _, i := range todo {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, i := range todo {
		if b.cfg.CacheBytes > 0 && b.cached+int64(len(out[i])) <= b.cfg.CacheBytes {
			b.cache[refs[i].Key()] = out[i]
			b.cached += int64(len(out[i]))
		}
	}
	return out, nil
}

// Shard is a tokenized training shard read back from disk.
type Shard struct {
	N          int // samples
	SeqLen     int // MaxSeq
	ImageSlots int // MaxImages
	ImageSize  int
	NumImages  int // distinct images stored
	Tokens     []int32
	Targets    []int32
	ImageIndex []int32
	Images     []uint8
	// PatchTargets is the optional "patch_targets" tensor, uint8 [N,
	// MaxSeq]: at an image patch position, the fraction of the patch that
	// the answer's referent box covers, times PatchTargetScale; NoPatchTarget
	// everywhere else and for images without a referent. Nil when the shard
	// has none (Config.GroundLossWeight then has nothing to train on).
	PatchTargets []uint8
	// PatchBoxes is the optional "patch_boxes" tensor, uint8 [N, MaxSeq,
	// 4]: where PatchTargets is above 0, the covering box's x1, y1, x2, y2
	// in hundredths of the padded square image (Config.BoxLossWeight); nil
	// when the shard has none.
	PatchBoxes []uint8
	// RefBoxes is the optional "ref_boxes" tensor, int32 [N, 4]: the
	// referent's box on the first image of a single-box REC sample, x1,
	// y1, x2, y2 in thousandths of the padded square image (Config.Grounder's
	// head trains on it); NoRefBox in all four for other samples. Nil when
	// the shard has none.
	RefBoxes []int32
	// RefExists is the optional "ref_exists" tensor, int32 [N]: 1 where
	// the text before the first image names something on it (a REC
	// referent, a POPE "yes"), 0 where it names something absent (a POPE
	// "no"), NoRefBox for no label (Config.Grounder's existence loss).
	RefExists []int32
	// CellWords is the optional "cell_words" tensor, int32 [N, Patches,
	// CellWords]: for the first image of a sample that labels its cells
	// (Config.Grounder, REC records whose answer lists the image's
	// objects), the word ids of the objects each cell holds (CellLabels),
	// NoCellWord after them; NoCellLabels in every slot of samples
	// without labels.
	CellWords []int32
	// NameIDs is the optional "name_ids" tensor, int32 [N, NameSlots]
	// (Config.GrounderNameSlots): for a crop-naming sample, the words
	// that name its first image's central object, <eos>, then NoNameWord
	// (NameLabel); NoNameWord in every slot of samples without a name.
	NameIDs   []int32
	NameSlots int
	Metadata  map[string]string
}

// NameRow returns sample i's name label [NameSlots], or nil when the
// shard has none or the sample is unlabelled.
func (s *Shard) NameRow(i int) []int32 {
	if s.NameIDs == nil {
		return nil
	}
	row := s.NameIDs[i*s.NameSlots : (i+1)*s.NameSlots]
	if row[0] == NoNameWord {
		return nil
	}
	return row
}

// Cell label encoding (Shard.CellWords).
const (
	CellWords    = 6  // word slots per cell
	NoCellWord   = -1 // an empty slot of a labelled cell
	NoCellLabels = -2 // a sample whose cells are not labelled
)

// CellWordsRow returns sample i's cell labels [Patches*CellWords], or nil
// when the shard has none or the sample is unlabelled.
func (s *Shard) CellWordsRow(i, patches int) []int32 {
	if s.CellWords == nil {
		return nil
	}
	row := s.CellWords[i*patches*CellWords : (i+1)*patches*CellWords]
	if row[0] == NoCellLabels {
		return nil
	}
	return row
}

// CellLabels labels the patch grid of a w x h image (padded to a square)
// with the words of the objects on it: a cell takes the words of every
// object whose box holds the cell's centre, and an object too small to
// hold any cell's centre labels the cell its own centre falls in. Words
// are tokenizer word ids (others are skipped); a cell keeps at most
// CellWords distinct ones. It returns [Patches*CellWords], NoCellWord in
// the empty slots.
func CellLabels(c Config, tok *Tokenizer, w, h int, boxes [][4]float64, names []string) []int32 {
	g := c.ImageSize / c.PatchSize
	out := make([]int32, g*g*CellWords)
	for i := range out {
		out[i] = NoCellWord
	}
	add := func(cell int, ids []int32) {
		slots := out[cell*CellWords : (cell+1)*CellWords]
		for _, id := range ids {
			for k, v := range slots {
				if v == id {
					break
				}
				if v == NoCellWord {
					slots[k] = id
					break
				}
			}
		}
	}
	for i, b := range boxes {
		if i >= len(names) {
			break
		}
		var ids []int32
		// Inside a sentence a word follows a space: encode it as it is
		// read there ("the red circle"), not as a sentence's first word.
		for _, id := range tok.Encode(" " + names[i]) {
			if id >= tokWord0 {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			continue
		}
		n := Normalize(dataset.Box{X1: b[0], Y1: b[1], X2: b[2], Y2: b[3]}, w, h)
		hit := false
		for py := range g {
			cy := (float64(py) + 0.5) / float64(g)
			for px := range g {
				cx := (float64(px) + 0.5) / float64(g)
				if cx >= n[0] && cx <= n[2] && cy >= n[1] && cy <= n[3] {
					add(py*g+px, ids)
					hit = true
				}
			}
		}
		if !hit {
			px := min(int((n[0]+n[2])/2*float64(g)), g-1)
			py := min(int((n[1]+n[3])/2*float64(g)), g-1)
			add(max(py, 0)*g+max(px, 0), ids)
		}
	}
	return out
}

// NoRefBox marks a sample without a referent in Shard.RefBoxes.
const NoRefBox = -1

// RefBoxRow returns sample i's referent box in thousandths, or nil when
// the shard has no ref_boxes or the sample no referent.
func (s *Shard) RefBoxRow(i int) []int32 {
	if s.RefBoxes == nil || s.RefBoxes[i*4] == NoRefBox {
		return nil
	}
	return s.RefBoxes[i*4 : i*4+4]
}

// PatchTargets encoding: a covered fraction f in [0, 1] is stored as
// round(f * PatchTargetScale); NoPatchTarget marks a position without a
// label.
const (
	PatchTargetScale = 250
	NoPatchTarget    = 255
)

// PatchTargetRow returns row i of PatchTargets, or nil when the shard has
// none.
func (s *Shard) PatchTargetRow(i int) []uint8 {
	if s.PatchTargets == nil {
		return nil
	}
	return s.PatchTargets[i*s.SeqLen : (i+1)*s.SeqLen]
}

// PatchBoxRow returns row i of PatchBoxes ([MaxSeq*4]), or nil when the
// shard has none.
func (s *Shard) PatchBoxRow(i int) []uint8 {
	if s.PatchBoxes == nil {
		return nil
	}
	return s.PatchBoxes[i*s.SeqLen*4 : (i+1)*s.SeqLen*4]
}

// Sample returns row i: tokens, targets and image slots.
func (s *Shard) Sample(i int) (tokens, targets, imageIndex []int32) {
	L, K := s.SeqLen, s.ImageSlots
	return s.Tokens[i*L : (i+1)*L], s.Targets[i*L : (i+1)*L], s.ImageIndex[i*K : (i+1)*K]
}

// Image returns the preprocessed RGB pixels of stored image j.
func (s *Shard) Image(j int) []uint8 {
	n := s.ImageSize * s.ImageSize * 3
	return s.Images[j*n : (j+1)*n]
}

// ReadShard reads and checks a shard written by BuildShards.
func ReadShard(path string) (*Shard, error) {
	tensors, meta, err := ReadSafetensorsFile(path)
	if err != nil {
		return nil, fmt.Errorf("read shard %s: %w", path, err)
	}
	s, err := shardFromTensors(tensors, meta)
	if err != nil {
		return nil, fmt.Errorf("read shard %s: %w", path, err)
	}
	return s, nil
}

func shardFromTensors(tensors []Tensor, meta map[string]string) (*Shard, error) {
	byName := map[string]Tensor{}
	for _, t := range tensors {
		byName[t.Name] = t
	}
	get := func(name, dtype string, rank int) (Tensor, error) {
		t, ok := byName[name]
		if !ok {
			return Tensor{}, fmt.Errorf("no tensor %q", name)
		}
		if t.DType != dtype || len(t.Shape) != rank {
			return Tensor{}, fmt.Errorf("tensor %q is %s%v, want %s of rank %d", name, t.DType, t.Shape, dtype, rank)
		}
		return t, nil
	}
	tok, err := get("tokens", "I32", 2)
	if err != nil {
		return nil, err
	}
	tgt, err := get("targets", "I32", 2)
	if err != nil {
		return nil, err
	}
	idx, err := get("image_index", "I32", 2)
	if err != nil {
		return nil, err
	}
	img, err := get("images", "U8", 4)
	if err != nil {
		return nil, err
	}
	n, l := tok.Shape[0], tok.Shape[1]
	if !slices.Equal(tgt.Shape, tok.Shape) || idx.Shape[0] != n {
		return nil, fmt.Errorf("shapes disagree: tokens %v, targets %v, image_index %v", tok.Shape, tgt.Shape, idx.Shape)
	}
	if img.Shape[1] != img.Shape[2] || img.Shape[3] != 3 {
		return nil, fmt.Errorf("images shape %v: want [M, S, S, 3]", img.Shape)
	}
	s := &Shard{
		N: n, SeqLen: l, ImageSlots: idx.Shape[1], ImageSize: img.Shape[1], NumImages: img.Shape[0],
		Tokens: BytesInt32(tok.Data), Targets: BytesInt32(tgt.Data), ImageIndex: BytesInt32(idx.Data),
		Images: img.Data, Metadata: meta,
	}
	if pt, ok := byName["patch_targets"]; ok {
		if pt.DType != "U8" || !slices.Equal(pt.Shape, tok.Shape) {
			return nil, fmt.Errorf("tensor \"patch_targets\" is %s%v, want U8%v", pt.DType, pt.Shape, tok.Shape)
		}
		for i, v := range pt.Data {
			if v > PatchTargetScale && v != NoPatchTarget {
				return nil, fmt.Errorf("patch_targets[%d][%d] = %d: want 0..%d or %d", i/l, i%l, v, PatchTargetScale, NoPatchTarget)
			}
		}
		s.PatchTargets = pt.Data
	}
	if pb, ok := byName["patch_boxes"]; ok {
		if pb.DType != "U8" || !slices.Equal(pb.Shape, []int{n, l, 4}) || s.PatchTargets == nil {
			return nil, fmt.Errorf("tensor \"patch_boxes\" is %s%v, want U8[%d %d 4] beside patch_targets", pb.DType, pb.Shape, n, l)
		}
		for i, v := range pb.Data {
			if v > 100 {
				return nil, fmt.Errorf("patch_boxes[%d][%d][%d] = %d: want 0..100", i/(4*l), i/4%l, i%4, v)
			}
		}
		s.PatchBoxes = pb.Data
	}
	if rb, ok := byName["ref_boxes"]; ok {
		if rb.DType != "I32" || !slices.Equal(rb.Shape, []int{n, 4}) {
			return nil, fmt.Errorf("tensor \"ref_boxes\" is %s%v, want I32[%d 4]", rb.DType, rb.Shape, n)
		}
		s.RefBoxes = BytesInt32(rb.Data)
		for i := 0; i < len(s.RefBoxes); i += 4 {
			b := s.RefBoxes[i : i+4]
			none := b[0] == NoRefBox && b[1] == NoRefBox && b[2] == NoRefBox && b[3] == NoRefBox
			if !none && (b[0] < 0 || b[1] < 0 || b[2] > 1000 || b[3] > 1000 || b[0] >= b[2] || b[1] >= b[3]) {
				return nil, fmt.Errorf("ref_boxes[%d] = %v: want 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000 (thousandths), or all %d", i/4, b, NoRefBox)
			}
		}
	}
	if cw, ok := byName["cell_words"]; ok {
		if cw.DType != "I32" || len(cw.Shape) != 3 || cw.Shape[0] != n || cw.Shape[2] != CellWords {
			return nil, fmt.Errorf("tensor \"cell_words\" is %s%v, want I32[%d patches %d]", cw.DType, cw.Shape, n, CellWords)
		}
		s.CellWords = BytesInt32(cw.Data)
		for i, v := range s.CellWords {
			if v < NoCellLabels {
				return nil, fmt.Errorf("cell_words[%d] = %d", i, v)
			}
		}
	}
	if ni, ok := byName["name_ids"]; ok {
		if ni.DType != "I32" || len(ni.Shape) != 2 || ni.Shape[0] != n || ni.Shape[1] < 2 || ni.Shape[1] > MaxNameSlots {
			return nil, fmt.Errorf("tensor \"name_ids\" is %s%v, want I32[%d, 2..%d]", ni.DType, ni.Shape, n, MaxNameSlots)
		}
		s.NameIDs, s.NameSlots = BytesInt32(ni.Data), ni.Shape[1]
		for i := 0; i < n; i++ {
			row := s.NameIDs[i*s.NameSlots : (i+1)*s.NameSlots]
			if row[0] == NoNameWord {
				if slices.ContainsFunc(row, func(v int32) bool { return v != NoNameWord }) {
					return nil, fmt.Errorf("name_ids[%d] = %v: an unlabelled row must be all %d", i, row, NoNameWord)
				}
				continue
			}
			end := slices.Index(row, tokEOS)
			if end < 1 || slices.ContainsFunc(row[:end], func(v int32) bool { return !NameToken(v) }) || slices.ContainsFunc(row[end+1:], func(v int32) bool { return v != NoNameWord }) {
				return nil, fmt.Errorf("name_ids[%d] = %v: want word ids, <eos> (%d), then %d", i, row, tokEOS, NoNameWord)
			}
		}
	}
	if re, ok := byName["ref_exists"]; ok {
		if re.DType != "I32" || !slices.Equal(re.Shape, []int{n}) {
			return nil, fmt.Errorf("tensor \"ref_exists\" is %s%v, want I32[%d]", re.DType, re.Shape, n)
		}
		s.RefExists = BytesInt32(re.Data)
		for i, v := range s.RefExists {
			if v != 0 && v != 1 && v != NoRefBox {
				return nil, fmt.Errorf("ref_exists[%d] = %d: want 0, 1 or %d", i, v, NoRefBox)
			}
		}
	}
	for i, r := range s.ImageIndex {
		if r < -1 || int(r) >= s.NumImages {
			return nil, fmt.Errorf("image_index[%d][%d] = %d outside [-1, %d)", i/s.ImageSlots, i%s.ImageSlots, r, s.NumImages)
		}
	}
	for i, t := range s.Targets {
		if t < -1 {
			return nil, fmt.Errorf("targets[%d][%d] = %d", i/l, i%l, t)
		}
	}
	return s, nil
}

// RefExistsAt returns sample i's existence label, NoRefBox for none.
func (s *Shard) RefExistsAt(i int) int32 {
	if s.RefExists == nil {
		return NoRefBox
	}
	return s.RefExists[i]
}
