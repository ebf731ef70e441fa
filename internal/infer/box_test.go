package infer

import (
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

func TestPixelBoxUndoesPadding(t *testing.T) {
	// A 200x100 image is padded to a 200x200 square with 50 rows above and
	// below, so y in the text is shifted by 50 and scaled by 200.
	cases := []struct {
		name    string
		text    string
		decoded *model.NormBox
		want    dataset.Box
		wantErr bool
	}{
		{name: "text", text: "It is at [0.250, 0.375, 0.750, 0.625].", want: dataset.Box{X1: 50, Y1: 25, X2: 150, Y2: 75}},
		{name: "decoded wins", text: "garbage", decoded: &model.NormBox{0, 0.25, 0.5, 0.75}, want: dataset.Box{X1: 0, Y1: 0, X2: 100, Y2: 100}},
		{name: "padding clipped", text: "[0.000, 0.000, 1.000, 1.000]", want: dataset.Box{X1: 0, Y1: 0, X2: 200, Y2: 100}},
		{name: "no box", text: "I cannot see it", wantErr: true},
		{name: "three numbers", text: "[0.1, 0.2, 0.3]", wantErr: true},
		{name: "out of range", text: "[0.1, 0.2, 1.3, 0.4]", wantErr: true},
		{name: "corners swapped", text: "[0.5, 0.2, 0.1, 0.4]", wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := PixelBox(c.text, c.decoded, 200, 100)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, c.wantErr)
			}
			if !c.wantErr && got != c.want {
				t.Fatalf("box = %+v, want %+v", got, c.want)
			}
		})
	}
	if _, err := PixelBox("[0.1, 0.1, 0.2, 0.2]", nil, 0, 10); err == nil {
		t.Fatal("zero-width image accepted")
	}
}

func TestReadBox(t *testing.T) {
	n := model.NormBox{0.25, 0.375, 0.75, 0.625}
	a, err := ReadBox(model.Generation{Text: model.FormatBox(n), Box: &n}, 200, 100)
	if err != nil {
		t.Fatal(err)
	}
	if a.Norm != n || a.Pixel != (dataset.Box{X1: 50, Y1: 25, X2: 150, Y2: 75}) {
		t.Fatalf("%+v", a)
	}
	if a, err := ReadBox(model.Generation{Text: "at [0.250, 0.375, 0.750, 0.625]"}, 200, 100); err != nil || a.Norm != n {
		t.Fatalf("from text: %+v %v", a, err)
	}
	if _, err := ReadBox(model.Generation{Text: "nowhere"}, 200, 100); err == nil {
		t.Fatal("no box accepted")
	}
}
