package readers

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// scanArray collects the raw elements of a top-level array with the
// structural scanner, using a buffer of bufSize bytes to force refills.
func scanArray(data []byte, bufSize int) ([][]byte, error) {
	sc := newJSONScanner(bytes.NewReader(data))
	sc.buf = make([]byte, bufSize)
	var out [][]byte
	err := sc.array(func(int) error {
		v, err := sc.value(false)
		if err != nil {
			return err
		}
		out = append(out, append([]byte(nil), v...))
		return nil
	})
	if err == nil && !sc.atEOF() {
		err = sc.syntax("trailing data")
	}
	return out, err
}

// decoderArray is the same with encoding/json.
func decoderArray(data []byte) ([][]byte, error) {
	if !json.Valid(data) || !bytes.HasPrefix(bytes.TrimSpace(data), []byte("[")) {
		return nil, errors.New("not a JSON array")
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		return nil, err
	}
	out := make([][]byte, len(raws))
	for i, r := range raws {
		out[i] = r
	}
	return out, nil
}

func TestScannerMatchesEncodingJSON(t *testing.T) {
	docs := []string{
		`[]`, ` [ ] `, `[1]`, `[1,2 , 3]`, `["a\"]b", "\\", "x\\\"y", "{[}"]`,
		`[{"a": [1, {"b": "]"}], "c": null}, true, false, null, -1.5e3]`,
		`[[[[[]]]], {}, {"k": {"k": {"k": "v"}}}]`,
		`[{"segmentation": [[1.5, 2.25, 3, 4]], "bbox": [1, 2, 3, 4], "id": 7}]`,
		"[\"\\u00e9\", \"caf\u00e9\", 12345678901234567890]",
	}
	for _, d := range docs {
		want, err := decoderArray([]byte(d))
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		for _, size := range []int{1, 2, 3, 7, 64, 1 << 20} {
			got, err := scanArray([]byte(d), size)
			if err != nil {
				t.Fatalf("%s (buffer %d): %v", d, size, err)
			}
			if len(got) != len(want) {
				t.Fatalf("%s (buffer %d): %d elements, want %d", d, size, len(got), len(want))
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("%s (buffer %d) element %d: %q, want %q", d, size, i, got[i], want[i])
				}
			}
		}
	}
}

func TestScannerRejectsBrokenStructure(t *testing.T) {
	for _, d := range []string{``, `[`, `[1,`, `[1 2]`, `["abc]`, `[{"a": 1]`, `[1]]`, `[,1]`, `{"a": 1}`, `[1] x`, `["\`} {
		for _, size := range []int{1, 5, 1 << 20} {
			if _, err := scanArray([]byte(d), size); err == nil || !errors.Is(err, errJSON) && !strings.Contains(err.Error(), "want") {
				if err == nil {
					t.Fatalf("%q (buffer %d): accepted", d, size)
				}
			}
		}
	}
}

func TestJSONNumber(t *testing.T) {
	for in, want := range map[string]bool{
		"0": true, "-0": true, "12.5": true, "1e3": true, "1E-3": true, "-1.25e+2": true,
		"": false, "01": false, "+1": false, "1.": false, ".5": false, "NaN": false, "Inf": false,
		"0x10": false, "1e": false, "1_000": false, "--1": false, "1e999": false, "true": false,
	} {
		if _, ok := jsonNumber([]byte(in)); ok != want {
			t.Errorf("jsonNumber(%q) = %v", in, ok)
		}
	}
	if v, ok := jsonNumbers([]byte(" [1, 2.5 ,-3e0] "), nil); !ok || len(v) != 3 || v[2] != -3 {
		t.Errorf("jsonNumbers = %v %v", v, ok)
	}
	for _, bad := range []string{"[1,]", "[,]", "[1 2]", "1", "[\"1\"]", "[[1]]"} {
		if _, ok := jsonNumbers([]byte(bad), nil); ok {
			t.Errorf("jsonNumbers(%q) accepted", bad)
		}
	}
}

// FuzzScanner holds the structural scanner to encoding/json: on every valid
// JSON array it must find the same elements, byte for byte, whatever the
// buffer size, and it must never panic on anything else.
func FuzzScanner(f *testing.F) {
	f.Add([]byte(`[{"a": [1, "]\\\""]}, 2, "x"]`), uint8(3))
	f.Add([]byte(`[[], {}, null]`), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, size uint8) {
		bufSize := int(size)%64 + 1
		got, err := scanArray(data, bufSize)
		want, werr := decoderArray(data)
		if werr != nil {
			return
		}
		if err != nil {
			t.Fatalf("valid %q rejected: %v", data, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d elements, want %d", data, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%q element %d: %q, want %q", data, i, got[i], want[i])
			}
		}
	})
}
