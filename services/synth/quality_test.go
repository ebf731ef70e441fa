package synth_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

func TestPOPEBalancedAndNegativesAbsent(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskPOPE)
	needRecords(t, recs, 300)
	answers := map[string]int{}
	strategies := map[string]int{}
	for _, r := range recs {
		answers[r.Answer.YesNo]++
		strategies[r.Answer.PopeSplit]++
		phrase := r.Answer.Text
		if !containsPhrase(humanText(r), " "+phrase) {
			t.Fatalf("%s: probe %q not asked in %q", r.ID, phrase, humanText(r))
		}
		present := false
		for _, o := range f.byIm[r.Lineage.ImageID] {
			if phrase == o.Category || phrase == o.Attributes["color"]+" "+o.Category {
				present = true
			}
		}
		switch r.Answer.YesNo {
		case "yes":
			if !present || lastGPT(r) != "Yes" {
				t.Fatalf("%s: yes probe %q, present=%v, answer %q", r.ID, phrase, present, lastGPT(r))
			}
		case "no":
			if present || lastGPT(r) != "No" {
				t.Fatalf("%s: negative %q is in the image (answer %q)", r.ID, phrase, lastGPT(r))
			}
		default:
			t.Fatalf("%s: yes_no %q", r.ID, r.Answer.YesNo)
		}
	}
	if answers["yes"] != answers["no"] {
		t.Fatalf("yes %d, no %d: want balanced", answers["yes"], answers["no"])
	}
	for _, s := range []string{synth.PopeRandom, synth.PopePopular, synth.PopeAdversarial} {
		if share := float64(strategies[s]) / float64(len(recs)); math.Abs(share-1.0/3) > 0.03 {
			t.Fatalf("strategy %s has %.1f%% of probes, want a third (%v)", s, 100*share, strategies)
		}
	}
	if f.m.Counts.PopeAnswer["yes"] != int64(answers["yes"]) || f.m.Counts.PopeSplit[synth.PopeAdversarial] != int64(strategies[synth.PopeAdversarial]) {
		t.Fatalf("manifest POPE counts %v %v disagree with records %v %v", f.m.Counts.PopeAnswer, f.m.Counts.PopeSplit, answers, strategies)
	}
}

// Adversarial negatives must be phrases that co-occur with what the image
// shows more than random ones do, on average.
func TestPOPEAdversarialNegativesCooccur(t *testing.T) {
	f := sharedSet(t)
	cooc := map[[2]string]int{}
	for _, objs := range f.byIm {
		cats := map[string]bool{}
		for _, o := range objs {
			cats[o.Category] = true
		}
		for a := range cats {
			for b := range cats {
				if a != b {
					cooc[[2]string{a, b}]++
				}
			}
		}
	}
	score := map[string][]float64{}
	for _, r := range f.of(synth.TaskPOPE) {
		if r.Answer.YesNo != "no" || strings.Contains(r.Answer.Text, " ") {
			continue // category-level probes only
		}
		s := 0
		for _, o := range f.byIm[r.Lineage.ImageID] {
			s += cooc[[2]string{o.Category, r.Answer.Text}]
		}
		score[r.Answer.PopeSplit] = append(score[r.Answer.PopeSplit], float64(s))
	}
	mean := func(v []float64) float64 {
		t := 0.0
		for _, x := range v {
			t += x
		}
		return t / float64(len(v))
	}
	if len(score[synth.PopeAdversarial]) < 20 || mean(score[synth.PopeAdversarial]) <= mean(score[synth.PopeRandom]) {
		t.Fatalf("adversarial negatives co-occur %.1f on average, random %.1f: adversarial should be higher",
			mean(score[synth.PopeAdversarial]), mean(score[synth.PopeRandom]))
	}
}

func TestSplitsKeptApart(t *testing.T) {
	f := sharedSet(t)
	cropSplits := map[string]string{}
	for _, r := range f.recs {
		if f.img[r.Lineage.ImageID].Split != r.Split {
			t.Fatalf("%s: split %s, image's split %s", r.ID, r.Split, f.img[r.Lineage.ImageID].Split)
		}
		for _, im := range r.Images {
			src := im.Source
			if im.Kind == "image" {
				src = r.Lineage.ImageID
				if im.Path != f.img[src].File {
					t.Fatalf("%s: full image %s is not the record's image", r.ID, im.Path)
				}
			}
			if s := f.img[src].Split; s != r.Split {
				t.Fatalf("%s (%s): reads %s of split %s", r.ID, r.Split, im.Path, s)
			}
			if im.Kind == "crop" {
				if prev, ok := cropSplits[im.Path]; ok && prev != r.Split {
					t.Fatalf("crop %s read by %s and %s records", im.Path, prev, r.Split)
				}
				cropSplits[im.Path] = r.Split
			}
		}
	}
	if len(f.m.Counts.Split) < 3 {
		t.Fatalf("expected records of several splits, got %v", f.m.Counts.Split)
	}
	if f.m.Quality.SplitViolations != 0 || f.m.Quality.CropRefsChecked == 0 {
		t.Fatalf("quality: %+v", f.m.Quality)
	}
}

func TestNoDuplicatesAndBoxesInside(t *testing.T) {
	f := sharedSet(t)
	seen := map[string]string{}
	for _, r := range f.recs {
		var key strings.Builder
		for _, im := range r.Images {
			key.WriteString(im.Path + "|")
		}
		for _, c := range r.Conversations {
			key.WriteString(c.From + ":" + c.Value + "|")
		}
		if prev, ok := seen[key.String()]; ok {
			t.Fatalf("%s duplicates %s", r.ID, prev)
		}
		seen[key.String()] = r.ID
		im := f.img[r.Lineage.ImageID]
		for _, b := range r.Answer.Boxes {
			if b[0] < 0 || b[1] < 0 || b[2] > float64(im.Width) || b[3] > float64(im.Height) || b[0] >= b[2] || b[1] >= b[3] {
				t.Fatalf("%s: answer box %v outside %dx%d", r.ID, b, im.Width, im.Height)
			}
		}
		for _, ref := range r.Images {
			if ref.CropBox == nil {
				continue
			}
			src := f.img[ref.Source]
			b := *ref.CropBox
			if b[0] < 0 || b[1] < 0 || b[2] > float64(src.Width) || b[3] > float64(src.Height) || b[0] >= b[2] || b[1] >= b[3] {
				t.Fatalf("%s: crop box %v outside %dx%d", r.ID, b, src.Width, src.Height)
			}
		}
		// Every box written in the text must parse.
		for _, c := range r.Conversations {
			for _, bt := range boxRe.FindAllString(c.Value, -1) {
				if _, err := model.ParseBox(bt); err != nil {
					t.Fatalf("%s: %v", r.ID, err)
				}
			}
		}
	}
}

// No record's human turns contain its answer's box text or name.
func TestNoAnswerInPrompt(t *testing.T) {
	f := sharedSet(t)
	checked := 0
	for _, r := range f.recs {
		h := humanText(r)
		switch r.Task {
		case synth.TaskREC, synth.TaskCropLocate:
			if strings.Contains(h, lastGPT(r)) {
				t.Fatalf("%s: answer %q in prompt %q", r.ID, lastGPT(r), h)
			}
			checked++
		case synth.TaskREG, synth.TaskCropName:
			if strings.Contains(h, r.Answer.Text) {
				t.Fatalf("%s: answer %q in prompt %q", r.ID, r.Answer.Text, h)
			}
			checked++
		case synth.TaskInventory, synth.TaskDense:
			for _, bt := range boxRe.FindAllString(lastGPT(r), -1) {
				if strings.Contains(h, bt) {
					t.Fatalf("%s: answer box %s in prompt", r.ID, bt)
				}
			}
			checked++
		}
	}
	if checked < 1000 {
		t.Fatalf("checked only %d records", checked)
	}
}

// A dataset whose referring expression spells out the answer box: the T->C
// records built from it are dropped and counted, never written.
func TestLeakCheckDropsAndCounts(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 5, Images: 12, Size: 96})
	if err != nil {
		t.Fatal(err)
	}
	leaky := map[string]string{}
	for i := range ds.Objects {
		o := &ds.Objects[i]
		im := ds.Images[0]
		for _, x := range ds.Images {
			if x.ID == o.ImageID {
				im = x
			}
		}
		bt := model.FormatBox(model.Normalize(o.Box, im.Width, im.Height))
		// Only ref sentences are offered: the generated expression is
		// disabled by making every object's category a twin's.
		ds.Refs = append(ds.Refs, dataset.Ref{ID: o.ID + "_leak", ImageID: o.ImageID, ObjectID: o.ID, Sentences: []string{"the object at " + bt}})
		leaky[o.ID] = bt
	}
	b, _ := blob.NewLocal(filepath.Join(dir, "blob"))
	opts := synth.BuildOptions{
		DatasetID: "leak", Seed: 1, Samples: 600, Stages: []string{synth.Stage2},
		TaskWeights: map[string]float64{synth.TaskREG: 0, synth.TaskCropName: 0, synth.TaskCropPick: 0, synth.TaskCropLocate: 0, synth.TaskBoxPick: 0},
	}
	m, err := synth.Build(context.Background(), ds, opts, b, "leak", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Quality.Leaks == 0 || m.Quality.Drops["rec/leak"] != m.Quality.Leaks {
		t.Fatalf("leaks %d, drops %v: the leaking refs were not caught", m.Quality.Leaks, m.Quality.Drops)
	}
	n := 0
	err = synth.ReadRecords(context.Background(), b, m, nil, func(r *model.Record) error {
		n++
		if strings.Contains(humanText(r), lastGPT(r)) {
			t.Errorf("%s: leak written: %q", r.ID, humanText(r))
		}
		if slices.ContainsFunc(r.Lineage.AnnotationIDs, func(id string) bool { return strings.HasSuffix(id, "_leak") }) {
			t.Errorf("%s: built from a leaking ref", r.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || int64(n) != m.Total {
		t.Fatalf("read %d records, manifest says %d", n, m.Total)
	}
}

func TestLineage(t *testing.T) {
	f := sharedSet(t)
	for _, r := range f.recs {
		l := r.Lineage
		if l.DatasetID != "ds-test" || f.img[l.ImageID] == nil {
			t.Fatalf("%s: lineage %+v", r.ID, l)
		}
		if len(l.AnnotationIDs) == 0 {
			t.Fatalf("%s: no annotation ids", r.ID)
		}
		for _, id := range l.AnnotationIDs {
			o := f.objs[id]
			rel := slices.IndexFunc(f.ds.Relations, func(x dataset.Relation) bool { return x.ID == id })
			ref := slices.IndexFunc(f.ds.Refs, func(x dataset.Ref) bool { return x.ID == id })
			if o == nil && rel < 0 && ref < 0 {
				t.Fatalf("%s: annotation %s not in the dataset", r.ID, id)
			}
			if o != nil {
				if _, ok := l.SourceFiles[f.img[o.ImageID].File]; !ok {
					t.Fatalf("%s: object %s of %s but its file is not in the lineage", r.ID, id, o.ImageID)
				}
			}
		}
		for path, sum := range l.SourceFiles {
			found := false
			for _, im := range f.img {
				if im.File == path && im.SHA256 == sum && sum != "" {
					found = true
				}
			}
			if !found {
				t.Fatalf("%s: source file %s hash %q does not match the dataset", r.ID, path, sum)
			}
		}
	}
}

func TestCountsAndManifest(t *testing.T) {
	f := sharedSet(t)
	m := f.m
	if int64(len(f.recs)) != m.Total {
		t.Fatalf("read %d records, manifest total %d", len(f.recs), m.Total)
	}
	if m.Total < sharedSamples*97/100 || m.Total > sharedSamples*101/100 {
		t.Fatalf("total %d, target %d", m.Total, sharedSamples)
	}
	sum := func(c map[string]int64) (s int64) {
		for _, v := range c {
			s += v
		}
		return s
	}
	if sum(m.Counts.Stage) != m.Total || sum(m.Counts.Task) != m.Total || sum(m.Counts.Split) != m.Total || sum(m.Counts.Cells) != m.Total {
		t.Fatalf("counts do not add up to %d: %+v", m.Total, m.Counts)
	}
	dirs := map[string]int64{}
	for _, r := range f.recs {
		dirs[r.Direction]++
	}
	for _, d := range []string{synth.DirTC, synth.DirCT, synth.DirIT, synth.DirTI, synth.DirIC, synth.DirCI} {
		if m.Counts.Direction[d] == 0 || m.Counts.Direction[d] != dirs[d] {
			t.Fatalf("direction %s: manifest %d, records %d", d, m.Counts.Direction[d], dirs[d])
		}
	}
	for _, s := range []string{synth.ScaleTight, synth.Scale15, synth.Scale25} {
		if m.Counts.Scale[s] == 0 {
			t.Fatalf("no records at scale %s: %v", s, m.Counts.Scale)
		}
	}
	var shardRecs int64
	for _, s := range m.Shards {
		shardRecs += s.Records
		if s.SHA256 == "" || !strings.HasPrefix(s.Key, "sets/shared/") {
			t.Fatalf("shard %+v", s)
		}
	}
	if shardRecs != m.Total {
		t.Fatalf("shards hold %d records, total %d", shardRecs, m.Total)
	}
	back, err := synth.OpenManifest(f.b, "sets/shared/manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	if back.ContentHash != m.ContentHash || back.Total != m.Total || len(back.Shards) != len(m.Shards) {
		t.Fatalf("stored manifest differs: %+v", back)
	}
	flat := m.Counts.Flat(m.Total)
	if flat["total"] != m.Total || flat["direction/T->C"] != m.Counts.Direction[synth.DirTC] {
		t.Fatalf("flat counts %v", flat)
	}
}

// Stage 2 balances size bins: its records are spread over small, medium
// and large more evenly than the objects are.
func TestSizeBinsBalanced(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 9, Images: 80, Size: 128})
	if err != nil {
		t.Fatal(err)
	}
	// Skew the objects: drop four of five small ones.
	var kept []dataset.Object
	n := 0
	for _, o := range ds.Objects {
		if o.Attributes["size"] == "small" {
			n++
			if n%5 != 0 {
				continue
			}
		}
		kept = append(kept, o)
	}
	ds.Objects = kept
	b, _ := blob.NewLocal(filepath.Join(dir, "blob"))
	m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "bins", Samples: 3000, Stages: []string{synth.Stage2}}, b, "bins", nil)
	if err != nil {
		t.Fatal(err)
	}
	objs := m.SizeBins.ObjectsBins
	ratio := func(v [3]float64) float64 {
		return max(v[0], v[1], v[2]) / min(v[0], v[1], v[2])
	}
	objRatio := ratio([3]float64{float64(objs[0]), float64(objs[1]), float64(objs[2])})
	got := [3]float64{float64(m.Counts.SizeBin["small"]), float64(m.Counts.SizeBin["medium"]), float64(m.Counts.SizeBin["large"])}
	if ratio(got) >= objRatio/2 || ratio(got) > 1.5 {
		t.Fatalf("stage-2 bins %v (max/min %.2f), objects %v (max/min %.2f): not balanced", got, ratio(got), objs, objRatio)
	}
}

func TestStagesAndSmallTargets(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 2, Images: 10, Size: 64})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := blob.NewLocal(filepath.Join(dir, "blob"))
	m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "s1", Samples: 60, Stages: []string{synth.Stage1}}, b, "s1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Total < 50 || m.Counts.Stage[synth.Stage1] != m.Total || m.Crops.Unique != 0 {
		t.Fatalf("stage-1-only set: total %d, stages %v, crops %d", m.Total, m.Counts.Stage, m.Crops.Unique)
	}
	for _, bad := range []synth.BuildOptions{
		{DatasetID: "x", Stages: []string{"stage4"}},
		{DatasetID: "x", Scales: []string{"3x"}},
		{DatasetID: "x", Candidates: 1},
		{DatasetID: "x", TaskWeights: map[string]float64{"nope": 1}},
		{DatasetID: "x", Samples: -1},
	} {
		if _, err := synth.Build(context.Background(), ds, bad, b, "bad", nil); err == nil {
			t.Fatalf("options %+v accepted", bad)
		}
	}
}

func TestReadRecordsDetectsCorruptShard(t *testing.T) {
	f := sharedSet(t)
	dir := t.TempDir()
	b, _ := blob.NewLocal(dir)
	m, err := synth.Build(context.Background(), f.ds, synth.BuildOptions{DatasetID: "c", Samples: 300, Stages: []string{synth.Stage1}}, b, "c", nil)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := b.Path(m.Shards[0].Key)
	good := readFile(t, p)
	read := func() error {
		return synth.ReadRecords(context.Background(), b, m, nil, func(*model.Record) error { return nil })
	}

	// A byte flipped inside the gzip trailer: gzip's own CRC catches it.
	data := bytes.Clone(good)
	data[len(data)-3] ^= 0xff
	writeFile(t, p, data)
	if err := read(); err == nil || !strings.Contains(err.Error(), m.Shards[0].Name) {
		t.Fatalf("shard with a broken gzip trailer: %v, want an error naming %s", err, m.Shards[0].Name)
	}

	// A well-formed shard with other content (one letter of one record
	// changed, the same number of records, compressed again): only the
	// manifest's sha256 tells it apart.
	zr, err := gzip.NewReader(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.IndexByte(plain, 'a')
	plain[i] = 'b'
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(plain)
	zw.Close()
	writeFile(t, p, zb.Bytes())
	if err := read(); err == nil || !strings.Contains(err.Error(), "sha256") || !strings.Contains(err.Error(), m.Shards[0].Name) {
		t.Fatalf("shard with other content: %v, want a sha256 mismatch naming %s", err, m.Shards[0].Name)
	}
}
