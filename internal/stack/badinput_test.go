package stack

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/jpeg"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/services/ingest"
)

// TestBadInputSuite is the one table of bad input that reaches the product
// from outside, each row sent through the entry point a user reaches it by
// on one running stack (real services, Postgres, the gateway): annotation
// files of every format malformed and truncated; records with boxes out of
// range, non-finite or without area, gigantic or lying image dimensions,
// decompression-bomb PNG and JPEG files, corrupt images, non-UTF-8 text and
// path traversal in file names; blob keys that climb out of the store;
// oversized or wrongly typed grounding requests; invalid pipeline inputs.
// A file that cannot be read is refused naming the file and records
// nothing; a bad record is rejected with its reason while every good record
// of the same file is kept. The plugin's wrong protocol version and a
// tampered plugin binary need plugins built for the purpose:
// plugins/compute TestHostRefusesWrongProtocolVersion and
// TestHostRefusesTamperedPlugin cover them.
func TestBadInputSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the stack; skipped with -short")
	}
	t.Parallel()
	const token = "tok-badinput"
	s, _, _ := testStack(t, func(c *Config) { c.Ground.APITokens = []string{token} })
	ctx := context.Background()

	t.Run("annotation files", func(t *testing.T) {
		testdata := filepath.Join("..", "..", "services", "ingest", "readers", "testdata")
		// One file per format, the one its reader cannot do without. Two
		// outcomes are right, and which one depends on the format and the
		// damage: the whole file refused (an ingest error naming it, no
		// version recorded), or, where the file holds one record per line
		// or per image (JSON Lines, Flickr30k Entities XML), that record
		// rejected with the file named while the good ones are kept. Those
		// two formats get images, and more than one record, so that a good
		// record exists to keep.
		files := []struct {
			format, dir, file string
			setup             func(t *testing.T, dir string)
		}{
			{format: "coco", dir: "coco", file: "annotations/instances_val2017.json"},
			{format: "refcoco", dir: "refcoco", file: "refs(unc).p"},
			{format: "refcoco", dir: "refcoco", file: "instances.json"},
			{format: "vg", dir: "vg", file: "objects.json"},
			{format: "flickr30k", dir: "flickr", file: "Annotations/1000.xml", setup: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, "val.txt"), []byte("1000\n1001\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				// testdata's 1001.xml is cut short on purpose (a reader
				// test's quirk): here it is whole.
				whole := `<annotation><filename>1001.jpg</filename><size><width>10</width><height>10</height><depth>3</depth></size>` +
					`<object><name>9</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>8</xmax><ymax>8</ymax></bndbox></object></annotation>`
				if err := os.WriteFile(filepath.Join(dir, "Annotations", "1001.xml"), []byte(whole), 0o644); err != nil {
					t.Fatal(err)
				}
				writeJPEG(t, filepath.Join(dir, "flickr30k-images", "1000.jpg"), 100, 80)
				writeJPEG(t, filepath.Join(dir, "flickr30k-images", "1001.jpg"), 10, 10)
			}},
			{format: "odvg", dir: "odvg", file: "train_odvg.jsonl", setup: func(t *testing.T, dir string) {
				var lines []string
				for i := range 3 {
					name := fmt.Sprintf("%d.jpg", i)
					writeJPEG(t, filepath.Join(dir, "images", name), 60, 50)
					lines = append(lines, fmt.Sprintf(`{"filename": %q, "height": 50, "width": 60, "detection": {"instances": [{"bbox": [1, 2, 30, 40], "category": "dog"}]}}`, name))
				}
				for _, f := range []string{"coco_train_odvg.jsonl", "grit_val_odvg.jsonl"} {
					if err := os.Remove(filepath.Join(dir, f)); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.WriteFile(filepath.Join(dir, "train_odvg.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}},
		}
		damage := []struct {
			name string
			f    func([]byte) []byte
		}{
			{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
			{"malformed", func(b []byte) []byte {
				i := len(b) / 3
				return append(append(bytes.Clone(b[:i]), "\x00}{<]\x80"...), b[i:]...)
			}},
			{"empty", func([]byte) []byte { return nil }},
		}
		for _, f := range files {
			for _, d := range damage {
				t.Run(f.format+"/"+f.file+"/"+d.name, func(t *testing.T) {
					// A folder whose path does not hold the file's name,
					// so that an error naming the folder does not pass
					// for one naming the file.
					dir := filepath.Join(t.TempDir(), "ds")
					if err := os.CopyFS(dir, os.DirFS(filepath.Join(testdata, f.dir))); err != nil {
						t.Fatal(err)
					}
					if f.setup != nil {
						f.setup(t, dir)
					}
					p := filepath.Join(dir, f.file)
					b, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(p, d.f(b), 0o644); err != nil {
						t.Fatal(err)
					}
					base := filepath.Base(f.file)
					before := count(t, s.Pool, `SELECT count(*) FROM dataset_versions`)
					res, err := s.Services.Ingest.Ingest(ctx, events.IngestRequested{Format: f.format, Path: dir, MaxBadFraction: 0.9}, nil)
					if err != nil {
						t.Logf("refused: %v", err)
						if !errors.Is(err, ingest.ErrBadInput) {
							t.Fatalf("ingest of a %s %s: %v, want ErrBadInput (not retried)", d.name, f.file, err)
						}
						if !strings.Contains(strings.ReplaceAll(err.Error(), dir, "DIR"), base) {
							t.Errorf("the error does not name %s: %v", base, err)
						}
						if n := count(t, s.Pool, `SELECT count(*) FROM dataset_versions`); n != before {
							t.Errorf("a refused file recorded %d dataset versions", n-before)
						}
						return
					}
					if f.setup == nil {
						t.Fatalf("a %s %s was ingested: %+v", d.name, f.file, res)
					}
					var reason string
					if err := s.Pool.QueryRow(ctx, `SELECT file || ': ' || reason FROM dataset_rejects WHERE version_id = $1 ORDER BY seq LIMIT 1`, res.DatasetID).Scan(&reason); err != nil {
						t.Fatalf("nothing rejected: %v", err)
					}
					t.Logf("rejected: %s; kept %d images", reason, res.Counts["images"])
					if !strings.Contains(reason, base) {
						t.Errorf("the reject does not name %s: %s", base, reason)
					}
					if res.Counts["images"] < 1 {
						t.Errorf("no good record kept: %v", res.Counts)
					}
				})
			}
		}
	})

	t.Run("records", func(t *testing.T) {
		world := filepath.Join(t.TempDir(), "world")
		if err := ingest.GenerateScenes(ctx, world, events.ScenesSpec{Seed: 5, Images: 10, Size: 48}, nil); err != nil {
			t.Fatal(err)
		}
		const annFile = "annotations/instances_train.json"
		// Each case edits the first image of the train split, its first
		// object, or adds a record; want is the reason its reject starts
		// with, lost the records the reject takes with it.
		cases := []struct {
			name       string
			edit       func(t *testing.T, e recordEdit)
			want       string
			lostImage  bool // the first image (and its objects) rejected
			lostObject bool // only the first annotation rejected
		}{
			{name: "box outside the image", want: "box outside image", lostObject: true,
				edit: func(t *testing.T, e recordEdit) { e.ann["bbox"] = []any{500, 500, 10, 10} }},
			{name: "box without area", want: "zero or negative box area", lostObject: true,
				edit: func(t *testing.T, e recordEdit) { e.ann["bbox"] = []any{5, 5, 0, 10} }},
			{name: "box negative width", want: "zero or negative box area", lostObject: true,
				edit: func(t *testing.T, e recordEdit) { e.ann["bbox"] = []any{20, 5, -10, 10} }},
			{name: "box coordinate overflows to infinity", want: "", lostObject: true,
				edit: func(t *testing.T, e recordEdit) { e.ann["bbox"] = []any{json.Number("1e999"), 5, 10, 10} }},
			{name: "annotation on an unknown image", want: "unknown image id", lostObject: true,
				edit: func(t *testing.T, e recordEdit) { e.ann["image_id"] = 987654 }},
			{name: "gigantic dimensions in the annotation", want: "image size mismatch", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { e.image["width"], e.image["height"] = 1_000_000_000, 1_000_000_000 }},
			{name: "decompression-bomb PNG", want: "image too large", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { replaceImage(t, e, pngBomb(100_000, 100_000)) }},
			{name: "decompression-bomb JPEG", want: "image too large", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { replaceImage(t, e, jpegBomb(65_000, 65_000)) }},
			{name: "truncated image file", want: "corrupt image", lostImage: true,
				edit: func(t *testing.T, e recordEdit) {
					p := filepath.Join(e.dir, "images", "train", e.image["file_name"].(string))
					b, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					replaceImage(t, e, b[:len(b)/3])
				}},
			{name: "missing image file", want: "missing image file", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { e.image["file_name"] = "nowhere.png" }},
			{name: "path traversal in a file name", want: "path traversal outside dataset root", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { e.image["file_name"] = "../../../../etc/passwd" }},
			// A leading "/" is read under the image folder, like a blob
			// key's: nothing outside the dataset is opened.
			{name: "absolute file name", want: "missing image file: images/train//etc/passwd", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { e.image["file_name"] = "/etc/passwd" }},
			{name: "non-UTF-8 file name", want: "non-UTF-8 text", lostImage: true,
				edit: func(t *testing.T, e recordEdit) { e.image["file_name"] = rawJSON("\"scene\xff\xfe.png\"") }},
			{name: "duplicate image id", want: "duplicate id", lostImage: false,
				edit: func(t *testing.T, e recordEdit) {
					dup := map[string]any{}
					for k, v := range e.image {
						dup[k] = v
					}
					e.doc["images"] = append(e.doc["images"].([]any), dup)
				}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "world")
				if err := os.CopyFS(dir, os.DirFS(world)); err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(dir, annFile)
				raw, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.UseNumber()
				var doc map[string]any
				if err := dec.Decode(&doc); err != nil {
					t.Fatal(err)
				}
				images, anns := doc["images"].([]any), doc["annotations"].([]any)
				first := images[0].(map[string]any)
				var firstAnn map[string]any
				onFirst := 0
				for _, a := range anns {
					if a := a.(map[string]any); a["image_id"] == first["id"] {
						if firstAnn == nil {
							firstAnn = a
						}
						onFirst++
					}
				}
				if firstAnn == nil {
					t.Fatal("the first image has no annotation")
				}
				c.edit(t, recordEdit{doc: doc, image: first, ann: firstAnn, dir: dir})
				out, err := json.Marshal(doc)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, unquoteRaw(out), 0o644); err != nil {
					t.Fatal(err)
				}

				res, err := s.Services.Ingest.Ingest(ctx, events.IngestRequested{Format: "coco", Path: dir, MaxBadFraction: 0.9}, nil)
				if err != nil {
					t.Fatalf("ingest: %v", err)
				}
				var reasons []string
				rows, err := s.Pool.Query(ctx, `SELECT reason FROM dataset_rejects WHERE version_id = $1 ORDER BY reason`, res.DatasetID)
				if err != nil {
					t.Fatal(err)
				}
				for rows.Next() {
					var r string
					if err := rows.Scan(&r); err != nil {
						t.Fatal(err)
					}
					reasons = append(reasons, r)
				}
				rows.Close()
				t.Logf("rejects: %q", reasons)
				if !anyHasPrefix(reasons, c.want) {
					t.Errorf("rejects %q, want one starting %q", reasons, c.want)
				}
				// Every good record of the file is kept: totals over all
				// splits of the world, less what the bad record takes.
				wantImages, wantObjects := worldCounts(t, world)
				if c.lostImage {
					wantImages--
					wantObjects -= int64(onFirst)
				}
				if c.lostObject {
					wantObjects--
				}
				if res.Counts["images"] != wantImages || res.Counts["objects"] != wantObjects {
					t.Errorf("kept %d images and %d objects, want %d and %d (counts %v)",
						res.Counts["images"], res.Counts["objects"], wantImages, wantObjects, res.Counts)
				}
			})
		}
	})

	t.Run("blob keys", func(t *testing.T) {
		outside := filepath.Join(s.cfg.DataDir, "escaped")
		for _, key := range []string{"../escaped", "a/../../escaped", `..\escaped`, "", ".", "runs/../../escaped"} {
			if _, _, err := s.Blob.Put(key, strings.NewReader("x")); err == nil {
				t.Errorf("Put(%q) accepted", key)
			}
			if _, err := s.Blob.Open(key); err == nil {
				t.Errorf("Open(%q) accepted", key)
			}
		}
		if _, err := os.Stat(outside); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a key escaped the store: %v", err)
		}
	})

	t.Run("grounding API", func(t *testing.T) {
		png1 := pngBomb(8, 8)
		uri := func(b []byte) string { return "data:image/png;base64," + base64.StdEncoding.EncodeToString(b) }
		cases := []struct {
			name, ctype, body string
			status            int
			code, msg         string
		}{
			{"wrongly typed expression", "application/json", `{"image": "` + uri(png1) + `", "expression": 42}`, 400, "bad_request", "expression"},
			{"wrongly typed body", "application/json", `["the red square"]`, 400, "bad_request", "request body"},
			{"unknown field", "application/json", `{"image": "` + uri(png1) + `", "expresion": "x"}`, 400, "bad_request", `unknown field "expresion"`},
			{"oversized body", "application/json", `{"expression": "` + strings.Repeat("a", 64<<20) + `"}`, 413, "image_too_large", "request body is over"},
			{"decompression bomb", "application/json", `{"image": "` + uri(pngBomb(100_000, 100_000)) + `", "expression": "x"}`, 413, "too_many_pixels", "100000x100000"},
			{"non-UTF-8 expression", "application/json", "{\"image\": \"" + uri(png1) + "\", \"expression\": \"red\xff square\"}", 400, "bad_request", "not valid UTF-8"},
			{"text/plain", "text/plain", `{}`, 400, "bad_request", "send application/json"},
			{"malformed export name", "application/json", `{"image": "` + uri(png1) + `", "expression": "x", "checkpoint_id": "ck@gguf"}`, 400, "bad_request", "<checkpoint>@<format>-<dtype>"},
			{"export without dtype", "application/json", `{"image": "` + uri(png1) + `", "expression": "x", "checkpoint_id": "ck", "export": {"format": "gguf"}}`, 400, "bad_request", "format and dtype are both required"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				req, err := http.NewRequest("POST", s.httpURL+"/v1/ground", strings.NewReader(c.body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", c.ctype)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var eb struct{ Error, Code string }
				b, _ := io.ReadAll(resp.Body)
				_ = json.Unmarshal(b, &eb)
				if resp.StatusCode != c.status || eb.Code != c.code || !strings.Contains(eb.Error, c.msg) {
					t.Fatalf("got %d %s %q, want %d %s containing %q", resp.StatusCode, eb.Code, eb.Error, c.status, c.code, c.msg)
				}
			})
		}
		if n := count(t, s.Pool, `SELECT count(*) FROM ground_requests`); n != 0 {
			t.Errorf("%d refused requests reached the grounding service", n)
		}
	})

	t.Run("pipeline input", func(t *testing.T) {
		cases := []struct{ name, body, field string }{
			{"not JSON", `{"dataset": `, "pipeline input: unexpected end of JSON input"},
			{"wrong type", `{"dataset": {"images": "many"}}`, "dataset.images"},
			{"unknown field", `{"datset": {}}`, "datset"},
			{"negative count", `{"dataset": {"images": -4}}`, "images"},
			{"unknown backend", `{"train": {"backend": "abacus"}}`, "backend"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				code, body := postJSON(t, s.httpURL+"/api/pipelines", c.body)
				if code != 400 || !strings.Contains(string(body), c.field) {
					t.Fatalf("got %d %s, want 400 naming %q", code, body, c.field)
				}
			})
		}
	})
}

// rawJSON is a JSON text placed into a document as it is, for bytes that
// encoding/json would not write (invalid UTF-8).
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("\"@raw:%s@\"", base64.StdEncoding.EncodeToString([]byte(r)))), nil
}

// unquoteRaw puts rawJSON's bytes in place of their markers.
func unquoteRaw(b []byte) []byte {
	for {
		i := bytes.Index(b, []byte(`"@raw:`))
		if i < 0 {
			return b
		}
		j := bytes.Index(b[i+6:], []byte(`@"`))
		raw, err := base64.StdEncoding.DecodeString(string(b[i+6 : i+6+j]))
		if err != nil {
			panic(err)
		}
		b = append(append(bytes.Clone(b[:i]), raw...), b[i+6+j+2:]...)
	}
}

func anyHasPrefix(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// recordEdit is what a record case may change: the train split's
// annotation document, its first image and that image's first annotation,
// in the world's copy at dir.
type recordEdit struct {
	doc   map[string]any
	image map[string]any
	ann   map[string]any
	dir   string
}

// replaceImage writes b as the first image's file.
func replaceImage(t *testing.T, e recordEdit, b []byte) {
	t.Helper()
	p := filepath.Join(e.dir, "images", "train", e.image["file_name"].(string))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// worldCounts counts the images and objects of every split of a generated
// world as its annotation files hold them.
func worldCounts(t *testing.T, dir string) (images, objects int64) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "annotations", "instances_*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no annotation files in %s: %v", dir, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Images      []json.RawMessage `json:"images"`
			Annotations []json.RawMessage `json:"annotations"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		images += int64(len(doc.Images))
		objects += int64(len(doc.Annotations))
	}
	return images, objects
}

// writeJPEG writes a grey JPEG of w x h pixels at p.
func writeJPEG(t *testing.T, p string, w, h int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, image.NewGray(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pngBomb is a PNG whose header claims w x h pixels and whose data holds
// almost nothing: a decoder that trusts the header would allocate w*h*4
// bytes.
func pngBomb(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		binary.Write(&b, binary.BigEndian, c.Sum32())
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 6 // 8-bit RGBA
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

// jpegBomb is the start of a baseline JPEG whose frame header claims w x h
// pixels (at most 65535 each).
func jpegBomb(w, h uint16) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xFF, 0xD8})                                                          // SOI
	b.Write([]byte{0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0}) // APP0
	b.Write([]byte{0xFF, 0xC0, 0, 11, 8})                                                // SOF0, 8-bit
	binary.Write(&b, binary.BigEndian, h)
	binary.Write(&b, binary.BigEndian, w)
	b.Write([]byte{1, 1, 0x11, 0}) // one component
	b.Write([]byte{0xFF, 0xD9})    // EOI
	return b.Bytes()
}
