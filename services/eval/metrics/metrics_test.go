package metrics

import (
	"math"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/infer"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestRECHandComputed(t *testing.T) {
	const w, h = 200, 100
	truth := dataset.Box{X1: 50, Y1: 25, X2: 150, Y2: 75} // 100 x 50
	answers := []string{
		"[0.250, 0.375, 0.750, 0.625]", // exact: IoU 1
		"[0.250, 0.375, 0.500, 0.625]", // left half: 2500/5000 = 0.5, counts at 0.5 (>=)
		// The same numbers normalized by width and height instead of the
		// padded square: in pixels (50,0,150,100), IoU 5000/10000 = 0.5.
		"[0.250, 0.250, 0.750, 0.750]",
		"[0.250, 0.375, 0.350, 0.625]", // 20 x 50 inside: 1000/5000 = 0.2
		"no idea",                      // unparsable: IoU 0, wrong
	}
	wantIoU := []float64{1, 0.5, 0.5, 0.2, 0}
	var acc RECAccumulator
	for i, a := range answers {
		var pred *dataset.Box
		if b, err := infer.PixelBox(a, nil, w, h); err == nil {
			pred = &b
		}
		if got := acc.Add(pred, truth); !near(got, wantIoU[i]) {
			t.Errorf("answer %d: IoU %v, want %v", i, got, wantIoU[i])
		}
	}
	r := acc.Result()
	want := RECResult{N: 5, Acc25: 3.0 / 5, Acc50: 3.0 / 5, Acc75: 1.0 / 5, MeanIoU: 2.2 / 5, CenterAcc: 4.0 / 5, ParseFailRate: 1.0 / 5}
	if r.N != want.N || !near(r.Acc25, want.Acc25) || !near(r.Acc50, want.Acc50) || !near(r.Acc75, want.Acc75) ||
		!near(r.MeanIoU, want.MeanIoU) || !near(r.CenterAcc, want.CenterAcc) || !near(r.ParseFailRate, want.ParseFailRate) {
		t.Fatalf("result = %+v\nwant     %+v", r, want)
	}
	m := r.Map()
	if m["acc@0.5"] != r.Acc50 || m["parse_fail"] != r.ParseFailRate || m["n"] != 5 {
		t.Fatalf("map = %v", m)
	}
}

func TestRECThresholdBoundaries(t *testing.T) {
	// IoU exactly 1/3: counts at 0.25, not at 0.5.
	a := dataset.Box{X1: 0, Y1: 0, X2: 2, Y2: 1}
	b := dataset.Box{X1: 1, Y1: 0, X2: 3, Y2: 1}
	r := REC([]RECSample{{Pred: &a, Truth: b}})
	if r.Acc25 != 1 || r.Acc50 != 0 || !near(r.MeanIoU, 1.0/3) {
		t.Fatalf("IoU 1/3: %+v", r)
	}
	// Degenerate prediction (a line) scores 0 but is not a parse failure.
	line := dataset.Box{X1: 1, Y1: 0, X2: 1, Y2: 1}
	r = REC([]RECSample{{Pred: &line, Truth: b}})
	if r.MeanIoU != 0 || r.ParseFailRate != 0 || r.Acc25 != 0 {
		t.Fatalf("degenerate: %+v", r)
	}
	if (REC(nil) != RECResult{}) {
		t.Fatal("empty REC not zero")
	}
}

func TestNormalizeYesNo(t *testing.T) {
	cases := map[string]string{
		"Yes":                                   "yes",
		"yes, there is a cat.":                  "yes",
		"No":                                    "no",
		"no.":                                   "no",
		"No, there is no cat in the image.":     "no",
		"There is no cat.":                      "no",
		"The cat is not there":                  "no",
		"Yes. There is no cat.":                 "yes", // only the first sentence counts
		"":                                      "yes", // empty is yes (LLaVA)
		"NO":                                    "yes", // the published rule is case-sensitive
		"Not at all":                            "yes", // "Not" is not in the list
		"nope":                                  "yes",
		"I see no\tcat":                         "yes", // split on single spaces only: "no\tcat" is one word
		"There is a cat, no doubt":              "no",
		"Is there a dog? No":                    "no",
		"Absolutely":                            "yes",
		"The answer is no":                      "no",
		"The image does not contain a elephant": "no",
	}
	// Commas are dropped, not split on: "Yes,no" is the one word "Yesno".
	cases["Yes,no"] = "yes"
	for in, want := range cases {
		if got := NormalizeYesNo(in); got != want {
			t.Errorf("NormalizeYesNo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPOPEHandComputed(t *testing.T) {
	cases := []struct {
		name           string
		answers        []string
		labels         []string
		tp, fp, tn, fn int
		acc, p, r, f1  float64
		yes            float64
	}{
		{
			name:    "symmetric",
			answers: []string{"Yes", "yes", "Yes, there is.", "No", "yes", "No", "no", "Yes", "There is no cat.", "No."},
			labels:  []string{"yes", "yes", "yes", "yes", "yes", "no", "no", "no", "no", "no"},
			tp:      4, fp: 1, tn: 4, fn: 1,
			acc: 0.8, p: 0.8, r: 0.8, f1: 0.8, yes: 0.5,
		},
		{
			name:    "always yes",
			answers: []string{"Yes", "Yes", "Yes", "Yes", "Yes", "Yes"},
			labels:  []string{"yes", "yes", "yes", "no", "no", "no"},
			tp:      3, fp: 3,
			acc: 0.5, p: 0.5, r: 1, f1: 2.0 / 3, yes: 1,
		},
		{
			name:    "always no (precision undefined -> 0)",
			answers: []string{"No", "No", "No", "No"},
			labels:  []string{"yes", "yes", "no", "no"},
			tn:      2, fn: 2,
			acc: 0.5,
		},
		{
			name:    "skewed",
			answers: []string{"Yes", "No", "No", "Yes", "Yes", "No", "Yes"},
			labels:  []string{"yes", "yes", "yes", "no", "no", "no", "yes"},
			// TP 2 (0, 6), FN 2 (1, 2), FP 2 (3, 4), TN 1 (5)
			tp: 2, fp: 2, tn: 1, fn: 2,
			acc: 3.0 / 7, p: 0.5, r: 0.5, f1: 0.5, yes: 4.0 / 7,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := POPE(c.answers, c.labels)
			if err != nil {
				t.Fatal(err)
			}
			if r.TP != c.tp || r.FP != c.fp || r.TN != c.tn || r.FN != c.fn || r.N != len(c.labels) {
				t.Fatalf("counts = %+v", r)
			}
			if !near(r.Accuracy, c.acc) || !near(r.Precision, c.p) || !near(r.Recall, c.r) || !near(r.F1, c.f1) || !near(r.YesRatio, c.yes) {
				t.Fatalf("result = %+v", r)
			}
		})
	}
	if _, err := POPE([]string{"yes"}, nil); err == nil {
		t.Fatal("mismatched lengths accepted")
	}
}

func TestNameAndChoice(t *testing.T) {
	names := []struct {
		pred, truth string
		want        bool
	}{
		{"It is a small red striped circle.", "small red striped circle", true},
		{"red  Circle", "red circle", true},
		{"a red circle", "small red circle", false},
		{"a circle that is red", "red circle", false},
		{"red circle", "", false},
		{"", "red circle", false},
	}
	for _, c := range names {
		if got := NameMatches(c.pred, c.truth); got != c.want {
			t.Errorf("NameMatches(%q, %q) = %v", c.pred, c.truth, got)
		}
	}
	choices := []struct {
		pred, ref string
		want      bool
	}{
		{"Image 2", "2", true},
		{"(2)", "Candidate 2.", true},
		{"02", "2", true},
		{"3", "2", false},
		{"(b)", "B", true},
		{"C", "B", false},
		{"the second one", "2", false},
		{"the red one", "The red one.", true},
		{"", "", false},
	}
	for _, c := range choices {
		if got := ChoiceMatches(c.pred, c.ref); got != c.want {
			t.Errorf("ChoiceMatches(%q, %q) = %v", c.pred, c.ref, got)
		}
	}
	var a Accuracy
	a.Add(true, false)
	a.Add(false, true)
	a.Add(false, false)
	a.Add(true, false)
	if a.Value() != 0.5 || a.Map()["parse_fail"] != 0.25 || (Accuracy{}).Value() != 0 {
		t.Fatalf("accuracy %+v", a)
	}
}

func TestParseGrounded(t *testing.T) {
	// 100x100: no padding, normalized = pixel/100.
	text := "A red circle [0.100, 0.100, 0.300, 0.300] is left of a blue square [0.500, 0.500, 0.900, 0.900]. " +
		"A broken box [0.1, 0.2] and a green triangle [0.000, 0.600, 0.200, 0.800]"
	pairs, bad := ParseGrounded(text, 100, 100)
	if bad != 1 {
		t.Fatalf("bad = %d, want 1", bad)
	}
	want := []Grounded{
		{"A red circle", dataset.Box{X1: 10, Y1: 10, X2: 30, Y2: 30}},
		{"is left of a blue square", dataset.Box{X1: 50, Y1: 50, X2: 90, Y2: 90}},
		{"and a green triangle", dataset.Box{X1: 0, Y1: 60, X2: 20, Y2: 80}},
	}
	if len(pairs) != len(want) {
		t.Fatalf("pairs = %+v", pairs)
	}
	for i := range want {
		if pairs[i].Phrase != want[i].Phrase || !boxNear(pairs[i].Box, want[i].Box) {
			t.Errorf("pair %d = %+v, want %+v", i, pairs[i], want[i])
		}
	}
	if p, bad := ParseGrounded("nothing grounded here", 10, 10); len(p) != 0 || bad != 0 {
		t.Fatalf("plain text: %v %d", p, bad)
	}
	if _, bad := ParseGrounded("unclosed [0.1, 0.2", 10, 10); bad != 1 {
		t.Fatalf("unclosed bracket bad = %d", bad)
	}
}

func boxNear(a, b dataset.Box) bool {
	return near(a.X1, b.X1) && near(a.Y1, b.Y1) && near(a.X2, b.X2) && near(a.Y2, b.Y2)
}

func TestMatchGroundedGreedyOneToOne(t *testing.T) {
	t1 := dataset.Box{X1: 0, Y1: 0, X2: 10, Y2: 10}
	t2 := dataset.Box{X1: 2, Y1: 0, X2: 12, Y2: 10}
	truth := []Grounded{{"circle", t1}, {"circle", t2}}
	// p1 overlaps t1 at 0.9 and t2 at 7/12; p2 overlaps t1 at 0.9 and t2 at 8/11.
	p1 := Grounded{"a circle", dataset.Box{X1: 0, Y1: 0, X2: 9, Y2: 10}}
	p2 := Grounded{"another circle", dataset.Box{X1: 1, Y1: 0, X2: 10, Y2: 10}}
	// Greedy takes the highest IoU first: (p1,t1)=0.9 and (p2,t1)=0.9 tie,
	// broken by prediction index, so p1 gets t1, then p2 gets t2 (8/11).
	n, assign := MatchGrounded([]Grounded{p1, p2}, truth, 0.5)
	if n != 2 || assign[0] != 0 || assign[1] != 1 {
		t.Fatalf("matched %d, assign %v", n, assign)
	}
	// A duplicate prediction cannot match the same truth twice.
	n, assign = MatchGrounded([]Grounded{p1, p1}, truth[:1], 0.5)
	if n != 1 || assign[1] != -1 {
		t.Fatalf("duplicate: matched %d, assign %v", n, assign)
	}
	// Greedy is not optimal: q1 takes t1 (IoU 1) although it could also
	// have matched t2, leaving q2 (which only fits t1) unmatched.
	q1 := Grounded{"circle", t1}
	q2 := Grounded{"circle", dataset.Box{X1: 0, Y1: 0, X2: 8, Y2: 10}} // t1: 0.8, t2: 6/12 = 0.5
	n, assign = MatchGrounded([]Grounded{q1, q2}, truth, 0.6)
	if n != 1 || assign[0] != 0 || assign[1] != -1 {
		t.Fatalf("greedy: matched %d, assign %v", n, assign)
	}
	// Phrase must match even with a perfect box.
	n, _ = MatchGrounded([]Grounded{{"square", t1}}, truth, 0.5)
	if n != 0 {
		t.Fatal("phrase mismatch matched")
	}
}

func TestDenseHandComputed(t *testing.T) {
	truth := []Grounded{
		{"red circle", dataset.Box{X1: 10, Y1: 10, X2: 30, Y2: 30}},
		{"blue square", dataset.Box{X1: 50, Y1: 50, X2: 90, Y2: 90}},
	}
	var a DenseAccumulator
	// Red circle right (IoU 1), blue square far off, green triangle extra.
	m, _ := a.Add("a red circle [0.100, 0.100, 0.300, 0.300] and a blue square [0.000, 0.000, 0.100, 0.100] and a green triangle [0.5, 0.5, 0.6, 0.6]", truth, 100, 100)
	if m != 1 {
		t.Fatalf("matched %d", m)
	}
	// Second sample: no boxes at all.
	a.Add("I see some shapes.", truth, 100, 100)
	r := a.Result()
	// Precision 1/3 (one of three predicted pairs), recall 1/4 (one of four true).
	if r.N != 2 || !near(r.Precision, 1.0/3) || !near(r.Recall, 0.25) || !near(r.F1, 2*(1.0/3)*0.25/(1.0/3+0.25)) {
		t.Fatalf("dense = %+v", r)
	}
	if (DenseAccumulator{}).Result().F1 != 0 {
		t.Fatal("empty dense F1 not 0")
	}
}
