package eval

import (
	"context"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
)

// A small synthetic world for service tests: non-square images with three
// coloured rectangles each, and synth-style records over them.

type worldObject struct {
	name string
	col  color.RGBA
	box  dataset.Box
}

const worldW, worldH = 160, 120

func buildWorld(t testing.TB, root string, seed uint64) []model.Record {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 99))
	palette := []worldObject{
		{name: "red square", col: color.RGBA{220, 40, 40, 255}},
		{name: "green square", col: color.RGBA{40, 180, 60, 255}},
		{name: "blue square", col: color.RGBA{40, 70, 220, 255}},
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	var recs []model.Record
	splits := []string{"train", "train", "train", "val", "val", "test", "test", "test", "heldout"}
	for i := range 18 {
		split := splits[i%len(splits)]
		img := image.NewRGBA(image.Rect(0, 0, worldW, worldH))
		draw.Draw(img, img.Bounds(), image.NewUniform(color.RGBA{235, 230, 220, 255}), image.Point{}, draw.Src)
		var objs []worldObject
		for k, o := range palette {
			w, h := 20+rng.Float64()*30, 15+rng.Float64()*25
			x := float64(k)*worldW/3 + rng.Float64()*(worldW/3-w)
			y := rng.Float64() * (worldH - h)
			o.box = dataset.Box{X1: math.Round(x), Y1: math.Round(y), X2: math.Round(x + w), Y2: math.Round(y + h)}
			draw.Draw(img, image.Rect(int(o.box.X1), int(o.box.Y1), int(o.box.X2), int(o.box.Y2)), image.NewUniform(o.col), image.Point{}, draw.Src)
			objs = append(objs, o)
		}
		file := fmt.Sprintf("img%02d.png", i)
		f, err := os.Create(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(f, img); err != nil {
			t.Fatal(err)
		}
		f.Close()
		full := model.ImageRef{Kind: "image", Path: file, Width: worldW, Height: worldH}
		conv := func(q, a string) []model.Turn {
			return []model.Turn{{From: "human", Value: "<image>\n" + q}, {From: "gpt", Value: a}}
		}
		box := func(b dataset.Box) string { return model.FormatBox(model.Normalize(b, worldW, worldH)) }
		lin := model.Lineage{DatasetID: "ds", ImageID: file}
		var dense []string
		var phrases []string
		var boxes [][4]float64
		for k, o := range objs {
			id := fmt.Sprintf("%s-%02d-%d", split, i, k)
			recs = append(recs, model.Record{
				ID: "rec-" + id, Stage: "stage2", Task: "rec", Direction: "T->C", Split: split,
				Images: []model.ImageRef{full}, Conversations: conv("Give the box of the "+o.name+".", box(o.box)),
				Answer: model.Answer{Boxes: [][4]float64{boxArr(o.box)}}, Lineage: lin,
			})
			if split == "train" {
				continue
			}
			crop := model.ImageRef{Kind: "crop", Path: "crops/" + id + ".png", Width: 32, Height: 32}
			recs = append(recs,
				model.Record{ID: "name-" + id, Stage: "stage2", Task: "crop_name", Direction: "I->T", Split: split,
					Images: []model.ImageRef{crop}, Conversations: conv("What is this?", "It is a "+o.name+"."),
					Answer: model.Answer{Text: o.name}, Lineage: lin},
				model.Record{ID: "loc-" + id, Stage: "stage2", Task: "crop_locate", Direction: "I->C", Split: split,
					Images: []model.ImageRef{full, crop}, Conversations: conv("<image>\nWhere is the crop?", box(o.box)),
					Answer: model.Answer{Boxes: [][4]float64{boxArr(o.box)}}, Lineage: lin},
				model.Record{ID: "pick-" + id, Stage: "stage2", Task: "crop_pick", Direction: "T->I", Split: split,
					Images: []model.ImageRef{crop, crop, crop}, Conversations: conv("Which shows the "+o.name+"?", fmt.Sprintf("Candidate %d.", k+1)),
					Answer: model.Answer{Index: ptr(k)}, Lineage: lin},
			)
			for pi, ps := range []string{"random", "popular", "adversarial"} {
				yes := (k+pi)%2 == 0
				label, q := "no", "a purple circle"
				if yes {
					label, q = "yes", "a "+o.name
				}
				recs = append(recs, model.Record{ID: fmt.Sprintf("pope-%s-%s", ps, id), Stage: "stage3", Task: "pope", Split: split,
					Images: []model.ImageRef{full}, Conversations: conv("Is there "+q+" in the image?", map[bool]string{true: "Yes", false: "No"}[yes]),
					Answer: model.Answer{YesNo: label, PopeSplit: ps}, Lineage: lin})
			}
			dense = append(dense, "a "+o.name+" "+box(o.box))
			phrases = append(phrases, o.name)
			boxes = append(boxes, boxArr(o.box))
		}
		if split != "train" {
			recs = append(recs, model.Record{ID: fmt.Sprintf("dense-%s-%02d", split, i), Stage: "stage3", Task: "dense", Split: split,
				Images: []model.ImageRef{full}, Conversations: conv("Describe the image in detail.", "There is "+strings.Join(dense, ", ")+"."),
				Answer: model.Answer{Boxes: boxes, Phrases: phrases}, Lineage: lin})
		}
	}
	// Something no benchmark scores.
	recs = append(recs, model.Record{ID: "cap-0", Task: "caption", Split: "test"})
	return recs
}

func ptr[T any](v T) *T { return &v }

func decide(id, stage string, q float64) bool {
	h := fnv.New32a()
	h.Write([]byte(id + "|" + stage))
	return float64(h.Sum32()%1000) < q*1000
}

// noisyOracle answers right with probability q (decided by a hash of the
// record and stage, so runs are repeatable) and attaches attention peaked
// at the true box to box answers.
func noisyOracle(q map[string]float64) PredictorFactory {
	return func(ctx context.Context, ck Checkpoint, run RunInfo) (Predictor, error) {
		quality, ok := q[ck.Stage]
		if !ok {
			return nil, fmt.Errorf("no quality for %s", ck.Stage)
		}
		return PredictorFunc(func(ctx context.Context, recs []model.Record) ([]Prediction, error) {
			out := make([]Prediction, len(recs))
			for i, r := range recs {
				_, ref := infer.PromptOf(r)
				right := decide(r.ID, ck.Stage, quality)
				bench := BenchmarkOf(r)
				switch {
				case bench == BenchREC || bench == BenchCropLocate:
					if right {
						out[i].Text = ref
					} else if decide(r.ID, "garbage", 0.2) {
						out[i].Text = "I cannot tell."
					} else {
						out[i].Text = "[0.800, 0.800, 0.950, 0.950]"
					}
					if bench == BenchREC {
						out[i].Attention = peakedAttention(r, 8)
					}
				case strings.HasPrefix(bench, BenchPOPEPrefix):
					ans := r.Answer.YesNo
					if !right {
						ans = map[string]string{"yes": "no", "no": "yes"}[ans]
					}
					out[i].Text = strings.ToUpper(ans[:1]) + ans[1:] + "."
				case right:
					out[i].Text = ref
				default:
					out[i].Text = "Candidate 9, a purple thing."
				}
			}
			return out, nil
		}), nil
	}
}

// peakedAttention puts weight on the patches of an 8x8 grid over the padded
// square that the true box covers, twice for each of the four box tokens.
func peakedAttention(r model.Record, g int) [][]float32 {
	w, h := imageSize(r)
	n := model.Normalize(arrBox(r.Answer.Boxes[0]), w, h)
	row := make([]float32, g*g)
	for y := range g {
		for x := range g {
			cx, cy := (float64(x)+0.5)/float64(g), (float64(y)+0.5)/float64(g)
			v := float32(0.01)
			if cx >= n[0] && cx <= n[2] && cy >= n[1] && cy <= n[3] {
				v = 1
			}
			row[y*g+x] = v
		}
	}
	return [][]float32{row, row, row, row}
}
