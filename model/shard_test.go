package model

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/png"
	"iter"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
)

// memImages makes a deterministic image per reference (size and colours
// from a hash of its path) and counts resolutions.
type memImages struct{ calls atomic.Int64 }

func (m *memImages) ResolveImage(_ context.Context, ref ImageRef) (image.Image, error) {
	m.calls.Add(1)
	if strings.Contains(ref.Path, "missing") {
		return nil, errors.New("no such image")
	}
	h := fnv.New32a()
	h.Write([]byte(ref.Kind + ref.Path))
	v := h.Sum32()
	w, hh := 10+int(v%23), 10+int(v/23%17)
	img := image.NewRGBA(image.Rect(0, 0, w, hh))
	for y := range hh {
		for x := range w {
			img.SetRGBA(x, y, color.RGBA{uint8(v >> 3 * uint32(x)), uint8(v >> 11 * uint32(y)), uint8(v), 255})
		}
	}
	return img, nil
}

// testRecords: 40 records over three stages and two splits, crops and
// multi-image records, plus one too long, one with too many images and one
// invalid.
func testRecords() []Record {
	var rs []Record
	stages := []string{"stage1", "stage2", "stage3"}
	for i := range 40 {
		r := Record{
			ID:     fmt.Sprintf("rec-%03d", i),
			Stage:  stages[i%3],
			Split:  "train",
			Images: []ImageRef{{Kind: "image", Path: fmt.Sprintf("img/%d.png", i%7)}},
			Conversations: []Turn{
				{From: "human", Value: "<image>\nWhere is the red circle?"},
				{From: "gpt", Value: fmt.Sprintf("[0.%03d, 0.100, 0.900, 0.950]", i)},
			},
		}
		if i%5 == 0 {
			r.Split = "val"
		}
		if i%4 == 1 {
			r.Images = append(r.Images, ImageRef{Kind: "crop", Path: fmt.Sprintf("crops/%d.png", i%3)})
			r.Conversations[0].Value = "<image>\n<image>\nWhere is the second image in the first one?"
		}
		rs = append(rs, r)
	}
	rs = append(rs,
		Record{ID: "too-long", Stage: "stage1", Split: "train", Images: []ImageRef{{Kind: "image", Path: "img/1.png"}},
			Conversations: []Turn{{From: "human", Value: "<image>" + strings.Repeat(" zebra", 40)}, {From: "gpt", Value: "no"}}},
		Record{ID: "too-many", Stage: "stage2", Split: "train",
			Images:        []ImageRef{{Kind: "image", Path: "a"}, {Kind: "crop", Path: "b"}, {Kind: "crop", Path: "c"}},
			Conversations: []Turn{{From: "human", Value: "<image><image><image>"}, {From: "gpt", Value: "0"}}},
		Record{ID: "invalid", Stage: "stage3", Split: "train", Images: []ImageRef{{Kind: "image", Path: "img/1.png"}},
			Conversations: []Turn{{From: "human", Value: "no placeholder"}, {From: "gpt", Value: "no"}}},
	)
	return rs
}

func seqOf(rs []Record) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		for _, r := range rs {
			if !yield(r, nil) {
				return
			}
		}
	}
}

// buildTestShards builds records with a new builder and returns its shards and stats.
func buildTestShards(t *testing.T, sc ShardConfig, imgs ImageResolver, records []Record) ([]ShardInfo, BuildStats) {
	t.Helper()
	b, err := NewShardBuilder(sc, imgs)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := b.Build(context.Background(), seqOf(records))
	if err != nil {
		t.Fatal(err)
	}
	return infos, b.Stats()
}

func shardConfig(t *testing.T, tok *Tokenizer, dir string) ShardConfig {
	cfg := tinyConfig(tok)
	cfg.MaxSeq = 64
	return ShardConfig{Model: cfg, Tokenizer: tok, Dir: dir, SamplesPerShard: 7, Seed: 42, SynthSet: "synth-1", Workers: 2}
}

func TestBuildShards(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	imgs := &memImages{}
	records := testRecords()
	infos, st := buildTestShards(t, sc, imgs, records)
	// 40 generated: 8 are val; 3 extra records are dropped for their reasons.
	if st.Read != 43 || st.Filtered != 8 || st.Kept != 32 ||
		st.Dropped["too_long"] != 1 || st.Dropped["too_many_images"] != 1 || st.Dropped["invalid"] != 1 || st.Shards != 5 {
		t.Fatalf("stats %+v", st)
	}
	byID := map[string]Record{}
	for _, r := range records {
		byID[r.ID] = r
	}
	// Map encoded token rows back to records (answers differ per record).
	byTokens := map[string]Record{}
	for _, r := range records {
		if s, err := EncodeRecord(tok, sc.Model, r); err == nil {
			byTokens[fmt.Sprint(s.Tokens)] = r
		}
	}
	seen := map[string]bool{}
	var order []string
	for i, info := range infos {
		if want := min(7, 32-7*i); info.Samples != want {
			t.Fatalf("shard %d: %d samples, want %d", i, info.Samples, want)
		}
		if filepath.Base(info.Path) != fmt.Sprintf("shard-%05d.safetensors", i) {
			t.Fatalf("shard path %s", info.Path)
		}
		sum, n, err := blob.FileSHA256(info.Path)
		if err != nil || sum != info.SHA256 || n != info.Bytes {
			t.Fatalf("shard %d: sha256/bytes %s/%d, file %s/%d (%v)", i, info.SHA256, info.Bytes, sum, n, err)
		}
		sh, err := ReadShard(info.Path)
		if err != nil {
			t.Fatal(err)
		}
		if sh.N != info.Samples || sh.SeqLen != sc.Model.MaxSeq || sh.ImageSlots != sc.Model.MaxImages || sh.ImageSize != sc.Model.ImageSize || sh.NumImages != info.Images {
			t.Fatalf("shard %d: shape %+v", i, sh)
		}
		for k, want := range map[string]string{
			"format": ShardFormat, "config_sha256": sc.Model.SHA256(), "synth_set": "synth-1", "tokenizer": tok.ID(),
			"seed": "42", "shard": strconv.Itoa(i), "shards": "5", "samples": strconv.Itoa(info.Samples), "splits": "train",
		} {
			if sh.Metadata[k] != want {
				t.Fatalf("shard %d metadata %s = %q, want %q", i, k, sh.Metadata[k], want)
			}
		}
		used := map[int32]bool{}
		var nonPad, learned int64
		for j := range sh.N {
			tokens, targets, slots := sh.Sample(j)
			end := slices.Index(tokens, tokPad)
			if end < 0 {
				end = len(tokens)
			}
			rec, ok := byTokens[fmt.Sprint(tokens[:end])]
			if !ok {
				t.Fatalf("shard %d row %d: tokens match no record", i, j)
			}
			if seen[rec.ID] || rec.Split != "train" {
				t.Fatalf("record %s written twice or from split %s", rec.ID, rec.Split)
			}
			seen[rec.ID] = true
			order = append(order, rec.ID)
			s, _ := EncodeRecord(tok, sc.Model, rec)
			if !slices.Equal(targets[:end], s.Targets) || slices.ContainsFunc(targets[end:], func(x int32) bool { return x != -1 }) {
				t.Fatalf("record %s: targets differ", rec.ID)
			}
			nonPad += int64(end)
			for _, x := range targets {
				if x >= 0 {
					learned++
				}
			}
			for k, slot := range slots {
				if k >= len(rec.Images) {
					if slot != -1 {
						t.Fatalf("record %s: slot %d = %d, want -1", rec.ID, k, slot)
					}
					continue
				}
				used[slot] = true
				img, _ := (&memImages{}).ResolveImage(context.Background(), rec.Images[k])
				want, _ := Preprocess(img, sc.Model.ImageSize)
				if !bytes.Equal(sh.Image(int(slot)), want) {
					t.Fatalf("record %s image %d: pixels differ", rec.ID, k)
				}
			}
		}
		if len(used) != sh.NumImages {
			t.Fatalf("shard %d stores %d images, uses %d (dedup)", i, sh.NumImages, len(used))
		}
		if nonPad != info.Tokens || learned != info.Targets {
			t.Fatalf("shard %d: tokens %d/%d, targets %d/%d", i, nonPad, info.Tokens, learned, info.Targets)
		}
	}
	if len(seen) != 32 {
		t.Fatalf("%d records written", len(seen))
	}
	if slices.IsSorted(order) {
		t.Fatalf("records were not shuffled: %v", order)
	}
	// 7 distinct full images and 3 crops: each resolved once across shards (cache).
	if c := imgs.calls.Load(); c != 10 {
		t.Fatalf("%d resolutions, want 10", c)
	}
}

func shardSums(t *testing.T, sc ShardConfig, records []Record) []string {
	t.Helper()
	infos, err := BuildShards(context.Background(), sc, seqOf(records), &memImages{})
	if err != nil {
		t.Fatal(err)
	}
	var sums []string
	for _, in := range infos {
		sums = append(sums, in.SHA256)
	}
	return sums
}

func TestBuildShardsDeterministic(t *testing.T) {
	tok := testTokenizer(t)
	records := testRecords()
	a := shardSums(t, shardConfig(t, tok, t.TempDir()), records)
	reversed := slices.Clone(records)
	slices.Reverse(reversed)
	noCache := shardConfig(t, tok, t.TempDir())
	noCache.CacheBytes, noCache.Workers = -1, 1
	b := shardSums(t, noCache, reversed)
	if !slices.Equal(a, b) {
		t.Fatalf("same records in another order gave other shards:\n%v\n%v", a, b)
	}
	other := shardConfig(t, tok, t.TempDir())
	other.Seed = 43
	if c := shardSums(t, other, records); slices.Equal(a, c) {
		t.Fatal("another seed gave the same shards")
	}
}

func TestBuildShardsStageFilter(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	sc.Stages, sc.Splits, sc.SamplesPerShard, sc.Name = []string{"stage2"}, []string{"train", "val"}, 100, "s2"
	b, err := NewShardBuilder(sc, &memImages{})
	if err != nil {
		t.Fatal(err)
	}
	infos, err := b.Build(context.Background(), seqOf(testRecords()))
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, r := range testRecords()[:40] {
		if r.Stage == "stage2" {
			want++
		}
	}
	if len(infos) != 1 || infos[0].Samples != want || b.Stats().Dropped["too_many_images"] != 1 || filepath.Base(infos[0].Path) != "s2-00000.safetensors" {
		t.Fatalf("infos %+v stats %+v, want %d samples", infos, b.Stats(), want)
	}
	sh, err := ReadShard(infos[0].Path)
	if err != nil || sh.Metadata["stages"] != "stage2" {
		t.Fatalf("read: %v, meta %v", err, sh.Metadata)
	}
}

func TestBuildShardsErrors(t *testing.T) {
	tok := testTokenizer(t)
	dir := t.TempDir()
	sc := shardConfig(t, tok, dir)
	if _, err := BuildShards(context.Background(), sc, seqOf(testRecords()), nil); err == nil {
		t.Error("nil resolver accepted")
	}
	bad := sc
	bad.Model.VocabSize++
	if _, err := NewShardBuilder(bad, &memImages{}); err == nil {
		t.Error("vocab mismatch accepted")
	}
	bad = sc
	bad.Dir = ""
	if _, err := NewShardBuilder(bad, &memImages{}); err == nil {
		t.Error("empty dir accepted")
	}
	bad = sc
	bad.Pack, bad.Model.GroundLossWeight, bad.Model.GroundReadout = true, 1, true
	if _, err := NewShardBuilder(bad, &memImages{}); err == nil || !strings.Contains(err.Error(), "pack with ground_readout") {
		t.Errorf("pack with ground_readout: error %v", err)
	}
	recs := testRecords()
	recs[2].Images[0].Path = "img/missing.png"
	if _, err := BuildShards(context.Background(), sc, seqOf(recs), &memImages{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing image: %v", err)
	}
	failing := func(yield func(Record, error) bool) { yield(Record{}, errors.New("disk on fire")) }
	if _, err := BuildShards(context.Background(), sc, failing, &memImages{}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("iterator error: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := BuildShards(ctx, sc, seqOf(testRecords()), &memImages{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, err := ReadShard(filepath.Join(dir, "nope")); err == nil {
		t.Error("ReadShard of a missing file succeeded")
	}
	// A safetensors file that is not a shard.
	var buf bytes.Buffer
	if _, err := WriteSafetensors(&buf, []Tensor{{Name: "tokens", DType: "F32", Shape: []int{1, 1}, Data: make([]byte, 4)}}, nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "x.safetensors")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadShard(p); err == nil {
		t.Error("non-shard accepted")
	}
}

func TestReadRecordsAndFileResolver(t *testing.T) {
	recs := testRecords()[:3]
	var plain bytes.Buffer
	enc := json.NewEncoder(&plain)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain.Bytes())
	zw.Close()
	for name, b := range map[string][]byte{"plain": plain.Bytes(), "gzip": gz.Bytes()} {
		var ids []string
		for r, err := range ReadRecords(bytes.NewReader(b)) {
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ids = append(ids, r.ID)
		}
		if !slices.Equal(ids, []string{"rec-000", "rec-001", "rec-002"}) {
			t.Fatalf("%s: ids %v", name, ids)
		}
	}
	n := 0
	for _, err := range ReadRecords(strings.NewReader(`{"id":"a"}` + "\n{broken")) {
		n++
		if n == 2 && err == nil {
			t.Fatal("broken record read without error")
		}
	}
	if n != 2 {
		t.Fatalf("%d yields", n)
	}

	root := t.TempDir()
	store, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := image.NewRGBA(image.Rect(0, 0, 5, 3))
	var pb bytes.Buffer
	if err := png.Encode(&pb, img); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "imgs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "imgs", "a.png"), pb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Put("crops/c.png", bytes.NewReader(pb.Bytes())); err != nil {
		t.Fatal(err)
	}
	res := FileImageResolver{DatasetRoot: root, Blobs: store}
	ctx := context.Background()
	for _, ref := range []ImageRef{{Kind: "image", Path: "imgs/a.png", Width: 5, Height: 3}, {Kind: "crop", Path: "crops/c.png"}} {
		if m, err := res.ResolveImage(ctx, ref); err != nil || m.Bounds().Dx() != 5 {
			t.Fatalf("%+v: %v", ref, err)
		}
	}
	for _, ref := range []ImageRef{
		{Kind: "image", Path: "../x.png"}, {Kind: "image", Path: "imgs/a.png", Width: 6, Height: 3},
		{Kind: "video", Path: "imgs/a.png"}, {Kind: "crop", Path: "crops/none.png"}, {Kind: "image", Path: "imgs/none.png"},
	} {
		if _, err := res.ResolveImage(ctx, ref); err == nil {
			t.Errorf("%+v resolved", ref)
		}
	}
}

// TestBuildShardsPack: with Pack, records of the same single image share a
// multi-turn sample; every kept record's answer is learned exactly once,
// no sample exceeds MaxSeq or reads more than its one image, multi-image
// records stay alone, and the result is still independent of input order.
func TestBuildShardsPack(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	sc.Pack, sc.SamplesPerShard = true, 100
	records := testRecords()
	infos, st := buildTestShards(t, sc, &memImages{}, records)
	if st.Kept != 32 || st.Packed == 0 || len(infos) != 1 || infos[0].Samples != st.Kept-st.Packed {
		t.Fatalf("stats %+v, shards %+v", st, infos)
	}
	// Each kept record's answer (its tokens and <eos>) must be one learned
	// segment of exactly one sample.
	want := map[string]Record{}
	for _, r := range records {
		if r.Split != "train" {
			continue
		}
		if _, err := EncodeRecord(tok, sc.Model, r); err != nil {
			continue
		}
		want[fmt.Sprint(append(tok.Encode(r.Conversations[1].Value), tokEOS))] = r
	}
	sh, err := ReadShard(infos[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	multi := 0
	for j := range sh.N {
		tokens, targets, slots := sh.Sample(j)
		var segs []string
		var seg []int32
		for p, x := range targets {
			if x >= 0 {
				if x != tokens[p+1] {
					t.Fatalf("row %d: target at %d is %d, next token %d", j, p, x, tokens[p+1])
				}
				seg = append(seg, x)
				continue
			}
			if len(seg) > 0 {
				segs = append(segs, fmt.Sprint(seg))
				seg = nil
			}
		}
		if len(seg) > 0 {
			segs = append(segs, fmt.Sprint(seg))
		}
		patches := 0
		for _, x := range tokens {
			if x == tokPatch {
				patches++
			}
		}
		if len(segs) > 1 {
			multi++
			if slots[1] != -1 || patches != sc.Model.Patches() {
				t.Fatalf("packed row %d reads slots %v with %d patch tokens", j, slots, patches)
			}
			first := want[segs[0]].Images[0]
			for _, s := range segs {
				if r := want[s]; len(r.Images) != 1 || r.Images[0] != first {
					t.Fatalf("row %d packs records of different images: %v and %v", j, first, r.Images)
				}
			}
		}
		for _, s := range segs {
			if _, ok := want[s]; !ok {
				t.Fatalf("row %d: learned segment %s is no record's answer", j, s)
			}
			got[s]++
		}
	}
	if multi == 0 || len(got) != len(want) {
		t.Fatalf("%d packed rows; %d of %d answers learned", multi, len(got), len(want))
	}
	for s, n := range got {
		if n != 1 {
			t.Fatalf("answer of %s learned %d times", want[s].ID, n)
		}
	}
	reversed := slices.Clone(records)
	slices.Reverse(reversed)
	sc2 := sc
	sc2.Dir = t.TempDir()
	if a, b := shardSums(t, sc, records), shardSums(t, sc2, reversed); !slices.Equal(a, b) {
		t.Fatal("packing depends on the order records arrive in")
	}
}

func TestPatchCover(t *testing.T) {
	c := Config{ImageSize: 16, PatchSize: 8} // a 2 x 2 patch grid
	// A 20 x 10 image pads to 20 x 20 with 5 pixels above and below: the
	// box x 0..10, y 0..5 is the left half of the top-left patch's lower
	// half, i.e. x 0..0.5, y 0.25..0.5 of the square.
	got := PatchCover(c, 20, 10, [][4]float64{{0, 0, 10, 5}})
	want := []float64{0.5, 0, 0, 0}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-9 {
			t.Fatalf("cover %v, want %v", got, want)
		}
	}
	// Two boxes: each patch takes the larger cover, not the sum.
	got = PatchCover(c, 16, 16, [][4]float64{{0, 0, 16, 16}, {0, 0, 8, 8}})
	for i, v := range got {
		if math.Abs(v-1) > 1e-9 {
			t.Fatalf("patch %d cover %v, want 1", i, v)
		}
	}
}

// TestBuildShardsPatchTargets: with GroundLossWeight the shards label the
// first image's patches of a record whose answer has boxes on a full image
// with the fraction each box covers, and nothing else; without it they
// carry no patch_targets tensor.
func TestBuildShardsPatchTargets(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	sc.Model.GroundLossWeight, sc.Model.BoxLossWeight = 1, 1
	sc.SamplesPerShard = 10
	img := ImageRef{Kind: "image", Path: "img/a.png", Width: 16, Height: 16}
	rec := Record{ID: "rec", Stage: "stage2", Split: "train", Task: "rec", Images: []ImageRef{img},
		Conversations: []Turn{{From: "human", Value: "<image>\nWhere is the red circle?"}, {From: "gpt", Value: "[0.000, 0.000, 0.500, 0.500]"}},
		Answer:        Answer{Boxes: [][4]float64{{0, 0, 8, 8}}}}
	crop := Record{ID: "crop", Stage: "stage2", Split: "train", Task: "crop_name",
		Images:        []ImageRef{{Kind: "crop", Path: "crops/a.png", Width: 16, Height: 16}},
		Conversations: []Turn{{From: "human", Value: "<image>\nWhat is this?"}, {From: "gpt", Value: "A red circle."}},
		Answer:        Answer{Text: "red circle"}}
	infos, _ := buildTestShards(t, sc, &memImages{}, []Record{rec, crop})
	sh, err := ReadShard(infos[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if sh.PatchTargets == nil {
		t.Fatal("no patch_targets tensor")
	}
	labelled := map[int][]uint8{}
	var boxes [][]uint8 // patch_boxes at the labelled positions
	for r := range sh.N {
		tokens, _, _ := sh.Sample(r)
		row, brow := sh.PatchTargetRow(r), sh.PatchBoxRow(r)
		for p, v := range row {
			if v != NoPatchTarget {
				if tokens[p] != tokPatch {
					t.Fatalf("row %d: label %d at non-patch position %d (token %d)", r, v, p, tokens[p])
				}
				labelled[r] = append(labelled[r], v)
				boxes = append(boxes, brow[p*4:p*4+4])
			} else if !slices.Equal(brow[p*4:p*4+4], []uint8{0, 0, 0, 0}) {
				t.Fatalf("row %d: patch_boxes %v at an unlabelled position %d", r, brow[p*4:p*4+4], p)
			}
		}
	}
	// The covered patch carries the box in hundredths of the image; the
	// uncovered ones nothing.
	if want := [][]uint8{{0, 0, 50, 50}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}}; !slices.EqualFunc(boxes, want, slices.Equal) {
		t.Fatalf("patch_boxes %v, want %v", boxes, want)
	}
	if len(labelled) != 1 {
		t.Fatalf("labelled rows %v: want only the rec record's", labelled)
	}
	for _, v := range labelled {
		if !slices.Equal(v, []uint8{PatchTargetScale, 0, 0, 0}) {
			t.Fatalf("labels %v: want the top-left patch covered, the others not", v)
		}
	}

	sc.Model.GroundLossWeight, sc.Model.BoxLossWeight = 0, 0
	sc.Dir = t.TempDir()
	infos, _ = buildTestShards(t, sc, &memImages{}, []Record{rec, crop})
	if sh, err = ReadShard(infos[0].Path); err != nil || sh.PatchTargets != nil || sh.PatchBoxes != nil {
		t.Fatalf("without ground_loss_weight: err %v, patch_targets %v, patch_boxes %v", err, sh.PatchTargets != nil, sh.PatchBoxes != nil)
	}
}

func TestReadShardRejectsBadPatchTargets(t *testing.T) {
	base := func() []Tensor {
		return []Tensor{
			{Name: "tokens", DType: "I32", Shape: []int{1, 2}, Data: Int32Bytes([]int32{1, 2})},
			{Name: "targets", DType: "I32", Shape: []int{1, 2}, Data: Int32Bytes([]int32{-1, -1})},
			{Name: "image_index", DType: "I32", Shape: []int{1, 1}, Data: Int32Bytes([]int32{-1})},
			{Name: "images", DType: "U8", Shape: []int{0, 4, 4, 3}, Data: nil},
		}
	}
	targets := Tensor{Name: "patch_targets", DType: "U8", Shape: []int{1, 2}, Data: []byte{250, 0}}
	for _, tc := range []struct {
		name string
		pt   []Tensor
		want string
	}{
		{"value", []Tensor{{Name: "patch_targets", DType: "U8", Shape: []int{1, 2}, Data: []byte{251, 0}}}, "patch_targets[0][0] = 251"},
		{"shape", []Tensor{{Name: "patch_targets", DType: "U8", Shape: []int{2, 1}, Data: []byte{0, 0}}}, `"patch_targets" is U8[2 1]`},
		{"box value", []Tensor{targets, {Name: "patch_boxes", DType: "U8", Shape: []int{1, 2, 4}, Data: []byte{0, 0, 50, 50, 0, 101, 0, 0}}}, "patch_boxes[0][1][1] = 101"},
		{"box shape", []Tensor{targets, {Name: "patch_boxes", DType: "U8", Shape: []int{1, 2}, Data: []byte{0, 0}}}, `"patch_boxes" is U8[1 2]`},
		{"box alone", []Tensor{{Name: "patch_boxes", DType: "U8", Shape: []int{1, 2, 4}, Data: make([]byte, 8)}}, "beside patch_targets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.safetensors")
			var buf bytes.Buffer
			if _, err := WriteSafetensors(&buf, append(base(), tc.pt...), nil); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadShard(path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to name %q", err, tc.want)
			}
		})
	}
}

// TestBuildShardsPackGroundingLeads: with Pack and GroundLossWeight, a
// record whose answer grounds its image (REC) never joins another's
// sample as a later turn, where its question would come after the patches:
// each starts a sample of its own, whose patches it labels, and text-answer
// records of the image may still follow it.
func TestBuildShardsPackGroundingLeads(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	sc.Pack, sc.SamplesPerShard = true, 100
	sc.Model.GroundLossWeight = 1
	img := ImageRef{Kind: "image", Path: "img/a.png", Width: 16, Height: 16}
	var records []Record
	for i := range 4 {
		records = append(records, Record{ID: fmt.Sprintf("rec%d", i), Stage: "stage2", Split: "train", Task: "rec", Images: []ImageRef{img},
			Conversations: []Turn{{From: "human", Value: "<image>\nWhere is the red circle?"}, {From: "gpt", Value: "[0.000, 0.000, 0.500, 0.500]"}},
			Answer:        Answer{Boxes: [][4]float64{{0, 0, 8, 8}}}})
		records = append(records, Record{ID: fmt.Sprintf("cap%d", i), Stage: "stage1", Split: "train", Task: "caption", Images: []ImageRef{img},
			Conversations: []Turn{{From: "human", Value: "<image>\nDescribe the image."}, {From: "gpt", Value: "A red circle."}}})
	}
	infos, st := buildTestShards(t, sc, &memImages{}, records)
	if st.Kept != 8 {
		t.Fatalf("stats %+v", st)
	}
	sh, err := ReadShard(infos[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	labelled := 0
	for r := range sh.N {
		for _, v := range sh.PatchTargetRow(r) {
			if v != NoPatchTarget {
				labelled++
				break
			}
		}
	}
	if labelled != 4 || sh.N < 4 || st.Packed == 0 {
		t.Fatalf("%d samples, %d labelled, %d packed: want each of the 4 REC records to lead a labelled sample, captions packed behind them", sh.N, labelled, st.Packed)
	}
}

// TestBuildShardsRefBoxes: with Config.Grounder, every single-box REC
// record leads its own sample and carries its referent (normalized to the
// padded square, in thousandths) in ref_boxes; other box answers (a crop's
// place) carry none, and the shard reads back what was written.
func TestBuildShardsRefBoxes(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	sc.Pack, sc.SamplesPerShard = true, 100
	sc.Model.Grounder, sc.Model.GrounderQueries, sc.Model.GrounderLossWeight = true, 2, 1
	sc.Model.ImagesAfterText, sc.Model.VisionDepth = true, 0
	if err := sc.Model.Validate(); err != nil {
		t.Fatal(err)
	}
	img := ImageRef{Kind: "image", Path: "img/a.png", Width: 16, Height: 8} // padded to 16 x 16
	var records []Record
	for i := range 3 {
		records = append(records, Record{ID: fmt.Sprintf("rec%d", i), Stage: "stage2", Split: "train", Task: "rec", Images: []ImageRef{img},
			Conversations: []Turn{{From: "human", Value: "<image>\nWhere is the red circle?"}, {From: "gpt", Value: "[0.000, 0.250, 0.500, 0.500]"}},
			Answer:        Answer{Boxes: [][4]float64{{0, 0, 8, 4}}}})
		records = append(records, Record{ID: fmt.Sprintf("loc%d", i), Stage: "stage2", Split: "train", Task: "crop_locate", Images: []ImageRef{img},
			Conversations: []Turn{{From: "human", Value: "<image>\nWhere is the red circle?"}, {From: "gpt", Value: "[0.000, 0.250, 0.500, 0.500]"}},
			Answer:        Answer{Boxes: [][4]float64{{0, 0, 8, 4}}}})
	}
	for _, yn := range []string{"yes", "no"} {
		records = append(records, Record{ID: "pope-" + yn, Stage: "stage3", Split: "train", Task: "pope", Images: []ImageRef{img},
			Conversations: []Turn{{From: "human", Value: "<image>\nIs there a red circle in the image?"}, {From: "gpt", Value: yn}},
			Answer:        Answer{YesNo: yn}})
	}
	infos, st := buildTestShards(t, sc, &memImages{}, records)
	sh, err := ReadShard(infos[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[int32]int{}
	for r := range sh.N {
		labels[sh.RefExistsAt(r)]++
	}
	if labels[1] != 4 || labels[0] != 1 {
		t.Errorf("existence labels %v: want 4 present (3 REC, a POPE yes) and 1 absent (a POPE no)", labels)
	}
	if sh.RefBoxes == nil {
		t.Fatal("no ref_boxes")
	}
	refs := 0
	for r := range sh.N {
		if b := sh.RefBoxRow(r); b != nil {
			refs++
			if want := []int32{0, 250, 500, 500}; !slices.Equal(b, want) {
				t.Errorf("sample %d: ref box %v, want %v", r, b, want)
			}
		}
	}
	if refs != 3 || st.Kept != 8 {
		t.Fatalf("%d samples with a referent (stats %+v), want the 3 REC records", refs, st)
	}
}

// TestCellLabels: a cell takes the words of every object whose box holds
// its centre; an object too small to hold a centre labels the cell its own
// centre is in; unknown words are skipped and slots do not repeat.
func TestCellLabels(t *testing.T) {
	tok := testTokenizer(t)
	c := DefaultConfig(tok.VocabSize())
	c.ImageSize, c.PatchSize = 32, 8 // a 4 x 4 grid of 8-pixel cells
	w := func(s string) int32 { return tok.Encode(" " + s)[0] }
	red, circle := w("red"), w("circle")
	got := CellLabels(c, tok, 32, 32, [][4]float64{{0, 0, 16, 16}, {25, 25, 27, 27}}, []string{"red circle red", "circle zzzunknownzzz"})
	cell := func(i int) []int32 { return got[i*CellWords : (i+1)*CellWords] }
	for _, i := range []int{0, 1, 4, 5} {
		if !slices.Equal(cell(i)[:3], []int32{red, circle, NoCellWord}) {
			t.Errorf("cell %d: %v, want red circle", i, cell(i))
		}
	}
	if !slices.Equal(cell(15)[:2], []int32{circle, NoCellWord}) {
		t.Errorf("cell 15 (the small object's centre): %v", cell(15))
	}
	if cell(10)[0] != NoCellWord {
		t.Errorf("cell 10 is empty but reads %v", cell(10))
	}
}

// TestBuildShardsNames: with Config.GrounderNameSlots, a crop-naming
// record's sample carries its name (the answer's words, <eos>, then
// NoNameWord) in name_ids, other samples none, a named record is never
// packed behind another of its image (its label would be lost), and the
// reader refuses a malformed row.
func TestBuildShardsNames(t *testing.T) {
	tok := testTokenizer(t)
	sc := shardConfig(t, tok, t.TempDir())
	sc.Pack, sc.SamplesPerShard = true, 100
	sc.Model.Grounder, sc.Model.GrounderQueries, sc.Model.GrounderLossWeight = true, 2, 1
	sc.Model.ImagesAfterText, sc.Model.VisionDepth, sc.Model.GrounderNameSlots = true, 0, 4
	if err := sc.Model.Validate(); err != nil {
		t.Fatal(err)
	}
	crop := ImageRef{Kind: "crop", Path: "img/c.png", Width: 8, Height: 8}
	records := []Record{
		{ID: "name", Stage: "stage2", Split: "train", Task: "crop_name", Images: []ImageRef{crop},
			Conversations: []Turn{{From: "human", Value: "<image>\nWhat is this?"}, {From: "gpt", Value: "A small blue square."}},
			Answer:        Answer{Text: "small blue square"}},
		{ID: "name2", Stage: "stage2", Split: "train", Task: "crop_name", Images: []ImageRef{crop},
			Conversations: []Turn{{From: "human", Value: "<image>\nName it."}, {From: "gpt", Value: "A small blue square."}},
			Answer:        Answer{Text: "small blue square"}},
		{ID: "long", Stage: "stage2", Split: "train", Task: "crop_name", Images: []ImageRef{{Kind: "crop", Path: "img/d.png", Width: 8, Height: 8}},
			Conversations: []Turn{{From: "human", Value: "<image>\nWhat is this?"}, {From: "gpt", Value: "A large yellow striped star."}},
			Answer:        Answer{Text: "large yellow striped star"}},
		{ID: "rec", Stage: "stage2", Split: "train", Task: "rec", Images: []ImageRef{{Kind: "image", Path: "img/a.png", Width: 8, Height: 8}},
			Conversations: []Turn{{From: "human", Value: "<image>\nWhere is the red circle?"}, {From: "gpt", Value: "[0.000, 0.250, 0.500, 0.500]"}},
			Answer:        Answer{Boxes: [][4]float64{{0, 0, 4, 4}}}},
	}
	infos, st := buildTestShards(t, sc, &memImages{}, records)
	sh, err := ReadShard(infos[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if sh.NameSlots != 4 || st.Kept != 4 || sh.N != 4 {
		t.Fatalf("name slots %d, %d samples (stats %+v): want 4 slots and 4 samples (none packed)", sh.NameSlots, sh.N, st)
	}
	want := append(tok.Encode(" small blue square"), tok.EOSID())
	named := 0
	for r := range sh.N {
		if row := sh.NameRow(r); row != nil {
			named++
			if !slices.Equal(row, want) {
				t.Errorf("sample %d: name %v, want %v", r, row, want)
			}
		}
	}
	if named != 2 {
		t.Errorf("%d named samples, want the two crop names that fit four slots", named)
	}

	base := []Tensor{
		{Name: "tokens", DType: "I32", Shape: []int{1, 2}, Data: Int32Bytes([]int32{1, 2})},
		{Name: "targets", DType: "I32", Shape: []int{1, 2}, Data: Int32Bytes([]int32{-1, -1})},
		{Name: "image_index", DType: "I32", Shape: []int{1, 1}, Data: Int32Bytes([]int32{-1})},
		{Name: "images", DType: "U8", Shape: []int{0, 4, 4, 3}, Data: nil},
	}
	w := tok.Encode(" blue")[0]
	for name, tc := range map[string]struct {
		row   []int32
		shape []int
		want  string
	}{
		"no eos":        {[]int32{w, w, w}, []int{1, 3}, "want word ids, <eos>"},
		"eos first":     {[]int32{tokEOS, NoNameWord, NoNameWord}, []int{1, 3}, "want word ids, <eos>"},
		"box number":    {[]int32{tokCoarse0, tokEOS, NoNameWord}, []int{1, 3}, "want word ids, <eos>"},
		"after eos":     {[]int32{w, tokEOS, w}, []int{1, 3}, "want word ids, <eos>"},
		"half labelled": {[]int32{NoNameWord, w, NoNameWord}, []int{1, 3}, "must be all -1"},
		"shape":         {[]int32{w, tokEOS}, []int{2, 1}, `"name_ids" is I32[2 1]`},
	} {
		path := filepath.Join(t.TempDir(), "s.safetensors")
		var buf bytes.Buffer
		if _, err := WriteSafetensors(&buf, append(slices.Clone(base), Tensor{Name: "name_ids", DType: "I32", Shape: tc.shape, Data: Int32Bytes(tc.row)}), nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadShard(path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to say %q", name, err, tc.want)
		}
	}
}
