package pickle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// jsonable converts a decoded value to what encoding/json produces for the
// Python-written value.json (dict keys as strings, big ints as strings).
func jsonable(t *testing.T, v any) any {
	t.Helper()
	switch x := v.(type) {
	case *List:
		out := make([]any, len(x.Items))
		for i, it := range x.Items {
			out[i] = jsonable(t, it)
		}
		return out
	case Tuple:
		out := make([]any, len(x))
		for i, it := range x {
			out[i] = jsonable(t, it)
		}
		return out
	case *Dict:
		out := map[string]any{}
		for i, k := range x.Keys {
			out[fmt.Sprint(k)] = jsonable(t, x.Values[i])
		}
		return out
	case int64:
		return float64(x)
	case *big.Int:
		return x.String()
	case nil, bool, float64, string:
		return x
	}
	t.Fatalf("unexpected %T", v)
	return nil
}

func TestDecodeAllProtocols(t *testing.T) {
	raw, err := os.ReadFile("testdata/value.json")
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for p := 0; p <= 5; p++ {
		t.Run(fmt.Sprintf("protocol%d", p), func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", fmt.Sprintf("value_p%d.pickle", p)))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			v, err := Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			got := jsonable(t, v)
			// JSON round trip normalizes numbers the same way on both sides.
			gb, _ := json.Marshal(got)
			var g any
			_ = json.Unmarshal(gb, &g)
			if !reflect.DeepEqual(g, want) {
				t.Fatalf("protocol %d:\n got %s\nwant %s", p, gb, raw)
			}
		})
	}
}

func TestPython2Streams(t *testing.T) {
	data, err := os.ReadFile("testdata/py2_p2.pickle")
	if err != nil {
		t.Fatal(err)
	}
	v, err := Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	l := v.(*List)
	if len(l.Items) != 2 || l.Items[0] != l.Items[1] {
		t.Fatalf("memo sharing lost: %#v", l.Items)
	}
	d := l.Items[0].(*Dict)
	if id, _ := d.Get("ann_id"); id != int64(123456789) {
		t.Fatalf("ann_id = %v", id)
	}
	sents, _ := d.Get("sentences")
	s0 := sents.(*List).Items[0].(*Dict)
	if raw, _ := s0.Get("raw"); raw != "Left dog" {
		t.Fatalf("raw = %q", raw)
	}

	data, err = os.ReadFile("testdata/py2_p0.pickle")
	if err != nil {
		t.Fatal(err)
	}
	v, err = Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	d = v.(*List).Items[0].(*Dict)
	if s, _ := d.Get("sent"); s != "it's ☕" {
		t.Fatalf("sent = %q", s)
	}
	if u, _ := d.Get("u"); u != "café ☕" {
		t.Fatalf("u = %q", u)
	}
	if b, _ := d.Get("big"); fmt.Sprint(b) != "12345678901234567890" {
		t.Fatalf("big = %v", b)
	}
	if r, _ := d.Get("ref_id"); r != int64(3) {
		t.Fatalf("ref_id = %v", r)
	}
}

func TestMalformed(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"no stop":        "\x80\x02]q\x00",
		"underflow":      "a.",
		"bad memo":       "h\x05.",
		"huge length":    "X\xff\xff\xff\x7f",
		"huge length 8":  "\x8d\xff\xff\xff\xff\xff\xff\xff\x7f",
		"append to int":  "K\x01K\x02a.",
		"unknown opcode": "\xff.",
		"persistent id":  "Pabc\n.",
		"mark misuse":    "(K\x01t(a.",
		"odd dict":       "(K\x01d.",
		"bad string":     "Sabc\n.",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(in))
			if err == nil {
				t.Fatalf("no error for %q", in)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, name := range []string{"value_p0", "value_p2", "value_p4", "py2_p2", "py2_p0"} {
		b, err := os.ReadFile(filepath.Join("testdata", name+".pickle"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = DecodeLimits(bytes.NewReader(b), Limits{MaxBytes: 1 << 20})
	})
}

// A string or bytes value longer than Limits.MaxBytes is refused by its
// declared length, before it is read, even when the data is all there.
func TestMaxBytesIsEnforced(t *testing.T) {
	const n = 4096
	in := append([]byte{'B', 0x00, 0x10, 0, 0}, bytes.Repeat([]byte{'x'}, n)...) // BINBYTES, length 4096
	in = append(in, '.')
	if _, err := DecodeLimits(bytes.NewReader(in), Limits{MaxBytes: n}); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	_, err := DecodeLimits(bytes.NewReader(in), Limits{MaxBytes: n - 1})
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "length 4096 out of range") {
		t.Fatalf("over the limit: %v", err)
	}
}
