package metrics

// Reference cases: the published formulas of lmms-eval's refcoco_bbox_rec
// task and of LLaVA's POPE evaluation, re-written here from their
// definitions (not copied), run on the same predictions as our metrics.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
)

// lmms-eval refcoco_bbox_rec, by definition:
//   - the ground truth is the COCO xywh box converted to xyxy and divided by
//     the image width and height;
//   - the answer's first "[f, f, f, f]" (optionally signed decimals) is the
//     prediction, [0, 0, 0, 0] when there is none;
//   - IoU = max(0, dx) * max(0, dy) / (area1 + area2 - inter) with raw areas;
//   - ACC@t counts IoU >= t; Center_ACC counts the prediction's centre
//     inside the ground truth (borders included); each metric is the mean
//     over expressions.
var lmmsBoxRE = regexp.MustCompile(`\[\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\s*\]`)

func lmmsParse(s string) [4]float64 {
	m := lmmsBoxRE.FindStringSubmatch(s)
	if m == nil {
		return [4]float64{}
	}
	var b [4]float64
	for i := range b {
		b[i], _ = strconv.ParseFloat(m[i+1], 64)
	}
	return b
}

func lmmsIoU(g, p [4]float64) float64 {
	inter := math.Max(0, math.Min(g[2], p[2])-math.Max(g[0], p[0])) * math.Max(0, math.Min(g[3], p[3])-math.Max(g[1], p[1]))
	union := (g[2]-g[0])*(g[3]-g[1]) + (p[2]-p[0])*(p[3]-p[1]) - inter
	return inter / union
}

func lmmsCenter(g, p [4]float64) bool {
	cx, cy := (p[0]+p[2])/2, (p[1]+p[3])/2
	return g[0] <= cx && cx <= g[2] && g[1] <= cy && cy <= g[3]
}

type lmmsRow struct {
	gt   [4]float64 // normalized by w, h
	pred [4]float64 // normalized by w, h
}

func lmmsAggregate(rows []lmmsRow) map[string]float64 {
	out := map[string]float64{}
	for _, r := range rows {
		iou := lmmsIoU(r.gt, r.pred)
		out["IoU"] += iou
		for _, t := range []float64{0.25, 0.5, 0.75} {
			if iou >= t {
				out[fmt.Sprintf("ACC@%v", t)]++
			}
		}
		if lmmsCenter(r.gt, r.pred) {
			out["Center_ACC"]++
		}
	}
	for k := range out {
		out[k] /= float64(len(rows))
	}
	return out
}

// TestRECMatchesLmmsEval scores one set of answers both ways. Our model
// writes boxes in the padded-square frame and we score in pixels; lmms-eval
// scores in the frame normalized by width and height. IoU is invariant
// under per-axis scaling and translation, so on the same predicted box the
// numbers must agree exactly, whatever the aspect ratio.
func TestRECMatchesLmmsEval(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var rows []lmmsRow
	var acc RECAccumulator
	for i := range 2000 {
		w, h := 50+rng.IntN(600), 50+rng.IntN(600)
		// COCO xywh ground truth, away from the origin so that lmms-eval's
		// [0,0,0,0] stand-in for a missing box never lands inside it.
		bw, bh := 2+rng.Float64()*float64(w-3)/2, 2+rng.Float64()*float64(h-3)/2
		x, y := 1+rng.Float64()*(float64(w)-bw-1), 1+rng.Float64()*(float64(h)-bh-1)
		truth := dataset.Box{X1: x, Y1: y, X2: x + bw, Y2: y + bh}
		gtNorm := [4]float64{x / float64(w), y / float64(h), (x + bw) / float64(w), (y + bh) / float64(h)}

		var answer string
		switch k := i % 10; {
		case k == 0:
			answer = "I am not sure."
		case k == 1:
			answer = "It is around [0.2, 0.3]." // no four-number box for either parser
		default:
			// A jittered version of the truth in the model's frame.
			j := func(v, span float64) float64 { return v + (rng.Float64()-0.5)*span }
			p := dataset.Box{X1: j(truth.X1, bw), Y1: j(truth.Y1, bh), X2: j(truth.X2, bw), Y2: j(truth.Y2, bh)}
			if p.X2 < p.X1 {
				p.X1, p.X2 = p.X2, p.X1
			}
			if p.Y2 < p.Y1 {
				p.Y1, p.Y2 = p.Y2, p.Y1
			}
			answer = "The box is " + model.FormatBox(model.Normalize(p, w, h)) + "."
		}

		var pred *dataset.Box
		lmmsPred := lmmsParse(answer)
		if b, err := infer.PixelBox(answer, nil, w, h); err == nil {
			pred = &b
			// The same predicted box, expressed in lmms-eval's frame.
			lmmsPred = [4]float64{b.X1 / float64(w), b.Y1 / float64(h), b.X2 / float64(w), b.Y2 / float64(h)}
		}
		ours := acc.Add(pred, truth)
		ref := lmmsIoU(gtNorm, lmmsPred)
		if math.Abs(ours-ref) > 1e-9 {
			t.Fatalf("sample %d (%dx%d, %q): IoU %v, lmms-eval %v", i, w, h, answer, ours, ref)
		}
		rows = append(rows, lmmsRow{gt: gtNorm, pred: lmmsPred})
	}
	got := acc.Result()
	ref := lmmsAggregate(rows)
	pairs := []struct {
		name      string
		ours, ref float64
	}{
		{"IoU", got.MeanIoU, ref["IoU"]},
		{"ACC@0.25", got.Acc25, ref["ACC@0.25"]},
		{"ACC@0.5", got.Acc50, ref["ACC@0.5"]},
		{"ACC@0.75", got.Acc75, ref["ACC@0.75"]},
		{"Center_ACC", got.CenterAcc, ref["Center_ACC"]},
	}
	for _, p := range pairs {
		if math.Abs(p.ours-p.ref) > 1e-9 {
			t.Errorf("%s: ours %v, lmms-eval %v", p.name, p.ours, p.ref)
		}
	}
	// The sample must exercise both sides of every threshold.
	if got.Acc50 < 0.1 || got.Acc50 > 0.9 || got.Acc75 == 0 || got.Acc25 == 1 {
		t.Fatalf("degenerate sample: %+v", got)
	}
	if !near(got.ParseFailRate, 0.2) {
		t.Fatalf("parse failures %v, want 0.2", got.ParseFailRate)
	}
}

// TestRECStricterThanLmmsEval documents the deliberate differences: a box
// outside [0, 1] or with its corners reversed is a parse failure for us (the
// box grammar cannot produce either, and the issue counts an unusable box as
// wrong), while lmms-eval scores it as written: an out-of-range box can get
// IoU > 0, and a reversed one, though its IoU is 0, can still hit
// Center_ACC.
func TestRECStricterThanLmmsEval(t *testing.T) {
	gt := [4]float64{0.1, 0.1, 0.9, 0.9}
	outOfRange := "[0.100, 0.100, 1.500, 0.900]"
	if _, err := infer.PixelBox(outOfRange, nil, 100, 100); err == nil {
		t.Fatal("out-of-range box accepted")
	}
	if iou := lmmsIoU(gt, lmmsParse(outOfRange)); iou <= 0 {
		t.Fatalf("lmms-eval IoU %v: expected it to score the box", iou)
	}
	reversed := "[0.700, 0.200, 0.300, 0.800]"
	if _, err := infer.PixelBox(reversed, nil, 100, 100); err == nil {
		t.Fatal("reversed box accepted")
	}
	if p := lmmsParse(reversed); lmmsIoU(gt, p) != 0 || !lmmsCenter(gt, p) {
		t.Fatalf("lmms-eval on a reversed box: IoU %v, centre %v", lmmsIoU(gt, p), lmmsCenter(gt, p))
	}
	var acc RECAccumulator
	acc.Add(nil, dataset.Box{X1: 10, Y1: 10, X2: 90, Y2: 90})
	if r := acc.Result(); r.CenterAcc != 0 || r.ParseFailRate != 1 {
		t.Fatalf("ours on a reversed box: %+v", r)
	}
}

// LLaVA POPE (llava/eval/eval_pope.py), by definition: the answer keeps
// the text before the first '.', loses its commas, is split on ' ', and is
// "no" when a word is "No", "not" or "no", else "yes"; labels are 0 for
// "no" and 1 otherwise; yes_ratio = count of predicted 1 / n; TP, FP, TN, FN
// with 1 positive; precision = TP/(TP+FP), recall = TP/(TP+FN),
// f1 = 2pr/(p+r), acc = (TP+TN)/n. Each category (random, popular,
// adversarial) is scored separately.
func llavaPOPE(answers, labels []string) (acc, precision, recall, f1, yesRatio float64) {
	var pred, lab []int
	for _, a := range answers {
		first := strings.SplitN(a, ".", 2)[0]
		words := strings.Split(strings.ReplaceAll(first, ",", ""), " ")
		p := 1
		for _, w := range words {
			switch w {
			case "No", "not", "no":
				p = 0
			}
		}
		pred = append(pred, p)
	}
	for _, l := range labels {
		if l == "no" {
			lab = append(lab, 0)
		} else {
			lab = append(lab, 1)
		}
	}
	var tp, fp, tn, fn, yes float64
	for i := range pred {
		if pred[i] == 1 {
			yes++
		}
		switch {
		case pred[i] == 1 && lab[i] == 1:
			tp++
		case pred[i] == 1 && lab[i] == 0:
			fp++
		case pred[i] == 0 && lab[i] == 0:
			tn++
		default:
			fn++
		}
	}
	precision = tp / (tp + fp)
	recall = tp / (tp + fn)
	f1 = 2 * precision * recall / (precision + recall)
	acc = (tp + tn) / (tp + tn + fp + fn)
	return acc, precision, recall, f1, yes / float64(len(pred))
}

func TestPOPEMatchesLLaVA(t *testing.T) {
	pool := []string{
		"Yes", "No", "yes", "no", "Yes, there is a cup in the image.", "No, there is no cup.",
		"There is no cup in the image.", "The cup is not visible", "Yes. No.", "I think so",
		"No.", "There is a cup.", "There is not a cup.", "Nope", "NO", "Maybe, not sure",
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for _, split := range POPESplits {
		t.Run(split, func(t *testing.T) {
			var answers, labels []string
			// Adversarial probes get more "yes" answers to negatives, as a
			// model that hallucinates co-occurring objects would.
			bias := map[string]float64{POPERandom: 0.1, POPEPopular: 0.2, POPEAdversarial: 0.35}[split]
			for range 3000 {
				label := []string{"yes", "no"}[rng.IntN(2)]
				a := pool[rng.IntN(len(pool))]
				if label == "no" && rng.Float64() < bias {
					a = "Yes"
				}
				answers, labels = append(answers, a), append(labels, label)
			}
			got, err := POPE(answers, labels)
			if err != nil {
				t.Fatal(err)
			}
			acc, p, r, f1, yes := llavaPOPE(answers, labels)
			for _, c := range []struct {
				name      string
				ours, ref float64
			}{{"accuracy", got.Accuracy, acc}, {"precision", got.Precision, p}, {"recall", got.Recall, r}, {"f1", got.F1, f1}, {"yes_ratio", got.YesRatio, yes}} {
				if math.Abs(c.ours-c.ref) > 1e-12 {
					t.Errorf("%s: ours %v, LLaVA %v", c.name, c.ours, c.ref)
				}
			}
			if got.TP == 0 || got.FP == 0 || got.TN == 0 || got.FN == 0 {
				t.Fatalf("sample does not exercise every cell: %+v", got)
			}
		})
	}
}
