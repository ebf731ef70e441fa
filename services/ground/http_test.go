package ground

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/groundmesh/groundmesh/internal/events"
)

// recordingGrounder counts what reaches it and answers a fixed box, or err.
type recordingGrounder struct {
	n   atomic.Int64
	err error
}

func (g *recordingGrounder) Ground(_ context.Context, req events.GroundRequested) (events.GroundCompleted, error) {
	g.n.Add(1)
	if g.err != nil {
		return events.GroundCompleted{}, g.err
	}
	return events.GroundCompleted{Text: "[0.100, 0.200, 0.300, 0.400]", ModelVersion: "ck", Boxes: []events.GroundBox{{Phrase: req.Expression}}}, nil
}

func dataURI(mediaType string, b []byte) string {
	return "data:" + mediaType + ";base64," + base64.StdEncoding.EncodeToString(b)
}

// pngHeader is a PNG declaring w x h pixels and holding none.
func pngHeader(w, h uint32) []byte {
	var b []byte
	b = append(b, "\x89PNG\r\n\x1a\n"...)
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2
	b = binary.BigEndian.AppendUint32(b, 13)
	b = append(b, "IHDR"...)
	b = append(b, ihdr...)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(append([]byte("IHDR"), ihdr...)))
	return b
}

func gifBytes(t *testing.T) []byte {
	var sb strings.Builder
	if err := gif.Encode(&sb, image.NewPaletted(image.Rect(0, 0, 4, 4), []color.Color{color.Black}), nil); err != nil {
		t.Fatal(err)
	}
	return []byte(sb.String())
}

// TestHTTPRefusals: every limit and every malformed request is a 4xx with
// a precise message and code, and none reaches the grounder.
func TestHTTPRefusals(t *testing.T) {
	lim := Limits{MaxImageBytes: 3000, MaxPixels: 64 * 64, MaxExpressionBytes: 40}
	g := &recordingGrounder{}
	h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"s3cret"}, Limits: lim, TokenHelp: "set GROUNDMESH_API_TOKENS"}, g)
	if err != nil {
		t.Fatal(err)
	}
	open, err := NewHTTPHandler(HTTPConfig{Limits: lim, TokenHelp: "set GROUNDMESH_API_TOKENS"}, g)
	if err != nil {
		t.Fatal(err)
	}
	okImg := scene(t, 40, 30, 5, 5, color.RGBA{200, 0, 0, 255})
	bigImg := make([]byte, 3001)
	copy(bigImg, okImg)
	body := func(fields map[string]any) string {
		b, _ := json.Marshal(fields)
		return string(b)
	}
	cases := []struct {
		name    string
		handler http.Handler
		auth    string
		ctype   string
		body    string
		status  int
		code    string
		msg     string // a substring of the message
	}{
		{name: "no token configured", handler: open, auth: "Bearer s3cret", body: body(map[string]any{"image": dataURI("image/png", okImg), "expression": "x"}),
			status: 401, code: CodeUnauthorized, msg: "no API token is configured on this server, so every request is refused: set GROUNDMESH_API_TOKENS, then send the header \"Authorization: Bearer <token>\""},
		{name: "no header", status: 401, code: CodeUnauthorized, msg: `missing bearer token: send the header "Authorization: Bearer <token>"`},
		{name: "basic auth", auth: "Basic czNjcmV0", status: 401, code: CodeUnauthorized, msg: "missing bearer token"},
		{name: "wrong token", auth: "Bearer guess", status: 401, code: CodeUnauthorized, msg: "bearer token not accepted"},
		{name: "not json", body: "image=1", status: 400, code: CodeBadRequest, msg: "request body: invalid character"},
		{name: "form content type", ctype: "application/x-www-form-urlencoded", body: "{}", status: 400, code: CodeBadRequest, msg: `Content-Type "application/x-www-form-urlencoded": send application/json`},
		{name: "unknown field", body: `{"expresion":"x"}`, status: 400, code: CodeBadRequest, msg: `unknown field "expresion"`},
		{name: "invalid UTF-8", body: "{\"expression\": \"red\xff square\"}", status: 400, code: CodeBadRequest, msg: "request body is not valid UTF-8 (byte 19): JSON must be UTF-8"},
		{name: "trailing data", body: `{"expression":"x"} {}`, status: 400, code: CodeBadRequest, msg: "trailing data"},
		{name: "no image", body: body(map[string]any{"expression": "the red square"}), status: 400, code: CodeBadRequest, msg: "no image: give one inline or by blob key"},
		{name: "both images", body: body(map[string]any{"image": dataURI("image/png", okImg), "image_key": "a.png", "expression": "x"}), status: 400, code: CodeBadRequest, msg: "not both"},
		{name: "url not data uri", body: body(map[string]any{"image": "https://example.com/a.png", "expression": "x"}), status: 400, code: CodeBadRequest, msg: "image must be a data URI"},
		{name: "data uri not base64", body: body(map[string]any{"image": "data:image/png,abc", "expression": "x"}), status: 400, code: CodeBadRequest, msg: "must be base64-encoded"},
		{name: "bad base64", body: body(map[string]any{"image": "data:image/png;base64,!!!!", "expression": "x"}), status: 400, code: CodeBadRequest, msg: "base64: illegal base64 data"},
		{name: "gif media type", body: body(map[string]any{"image": dataURI("image/gif", gifBytes(t)), "expression": "x"}), status: 415, code: CodeUnsupportedFormat, msg: `image media type "image/gif" is not accepted: send image/png or image/jpeg`},
		{name: "gif bytes labelled png", body: body(map[string]any{"image": dataURI("image/png", gifBytes(t)), "expression": "x"}), status: 415, code: CodeUnsupportedFormat, msg: "unsupported image format: gif, accepted: png, jpeg"},
		{name: "image bytes", body: body(map[string]any{"image": dataURI("image/png", bigImg), "expression": "x"}), status: 413, code: CodeImageTooLarge, msg: "image too large: 3001 bytes, the limit is 3000"},
		{name: "body over limit", body: `{"expression":"` + strings.Repeat("a", 80000) + `"}`, status: 413, code: CodeImageTooLarge, msg: "request body is over"},
		{name: "decompression bomb", body: body(map[string]any{"image": dataURI("image/png", pngHeader(100000, 100000)), "expression": "x"}), status: 413, code: CodeTooManyPixels, msg: "image has too many pixels: 100000x100000 is 10000000000 pixels, the limit is 4096"},
		{name: "pixels", body: body(map[string]any{"image": dataURI("image/png", scene(t, 65, 64, 0, 0, color.RGBA{1, 2, 3, 255})), "expression": "x"}), status: 413, code: CodeTooManyPixels, msg: "65x64 is 4160 pixels, the limit is 4096"},
		{name: "truncated png", body: body(map[string]any{"image": dataURI("image/png", okImg[:20]), "expression": "x"}), status: 400, code: CodeBadImage, msg: "image does not decode"},
		{name: "no expression", body: body(map[string]any{"image": dataURI("image/png", okImg)}), status: 400, code: CodeBadExpression, msg: "no expression: say what to find in the image"},
		{name: "blank expression", body: body(map[string]any{"image": dataURI("image/png", okImg), "expression": " .. "}), status: 400, code: CodeBadExpression, msg: "bad expression: empty"},
		{name: "expression length", body: body(map[string]any{"image": dataURI("image/png", okImg), "expression": strings.Repeat("red ", 11)}), status: 400, code: CodeExpressionTooLong, msg: "expression is 44 bytes long, the limit is 40"},
		{name: "control character", body: body(map[string]any{"image": dataURI("image/png", okImg), "expression": "red\x00square"}), status: 400, code: CodeBadExpression, msg: "control character U+0000"},
		{name: "placeholder", body: body(map[string]any{"image": dataURI("image/png", okImg), "expression": "<image> red"}), status: 400, code: CodeBadExpression, msg: "image placeholder"},
		{name: "negative timeout", body: body(map[string]any{"image": dataURI("image/png", okImg), "expression": "red", "timeout_ms": -5}), status: 400, code: CodeBadRequest, msg: "timeout_ms is -5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hh := c.handler
			if hh == nil {
				hh = h
			}
			auth := c.auth
			if auth == "" && c.status != 401 {
				auth = "Bearer s3cret"
			}
			req := httptest.NewRequest("POST", "/v1/ground", strings.NewReader(c.body))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			if c.ctype != "" {
				req.Header.Set("Content-Type", c.ctype)
			}
			rec := httptest.NewRecorder()
			hh.ServeHTTP(rec, req)
			var eb ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil {
				t.Fatalf("status %d, body %q: %v", rec.Code, rec.Body, err)
			}
			if rec.Code != c.status || eb.Code != c.code || !strings.Contains(eb.Error, c.msg) {
				t.Fatalf("got %d %s %q\nwant %d %s containing %q", rec.Code, eb.Code, eb.Error, c.status, c.code, c.msg)
			}
			if c.status == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	if n := g.n.Load(); n != 0 {
		t.Fatalf("%d refused requests reached the grounder", n)
	}

	// The good request goes through, and the grounder's failures keep
	// their codes.
	good := body(map[string]any{"image": dataURI("image/png", okImg), "expression": "the red square"})
	post := func(h http.Handler) (*http.Response, string) {
		req := httptest.NewRequest("POST", "/v1/ground", strings.NewReader(good))
		req.Header.Set("Authorization", "Bearer s3cret")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Result(), string(b)
	}
	if resp, b := post(h); resp.StatusCode != 200 || !strings.Contains(b, `"phrase": "the red square"`) {
		t.Fatalf("good request: %d %s", resp.StatusCode, b)
	}
	for code, status := range map[string]int{CodeOverloaded: 429, CodeDeadlineExceeded: 504, CodeNoModel: 503, CodeModelNotFound: 404, CodeBackendUnavailable: 503} {
		g.err = &Error{Code: code, Msg: "because"}
		if resp, b := post(h); resp.StatusCode != status || !strings.Contains(b, `"code": "`+code+`"`) {
			t.Errorf("%s: %d %s, want %d", code, resp.StatusCode, b, status)
		}
	}
}

func TestHTTPMultipartUpload(t *testing.T) {
	g := &recordingGrounder{}
	h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"k"}, Limits: Limits{MaxImageBytes: 3000}}, g)
	if err != nil {
		t.Fatal(err)
	}
	okImg := scene(t, 40, 30, 5, 5, color.RGBA{200, 0, 0, 255})
	form := func(fields map[string]string, image []byte) (string, string) {
		var sb strings.Builder
		mw := multipart.NewWriter(&sb)
		for k, v := range fields {
			mw.WriteField(k, v)
		}
		if image != nil {
			fw, _ := mw.CreateFormFile("image", "scene.png")
			fw.Write(image)
		}
		mw.Close()
		return mw.FormDataContentType(), sb.String()
	}
	cases := []struct {
		name   string
		fields map[string]string
		image  []byte
		status int
		code   string
		msg    string
	}{
		{"ok", map[string]string{"expression": "the red square"}, okImg, 200, "", ""},
		{"no image", map[string]string{"expression": "x"}, nil, 400, CodeBadRequest, `send the file as the multipart part "image"`},
		{"unknown field", map[string]string{"expresion": "x"}, okImg, 400, CodeBadRequest, `unknown field "expresion"`},
		{"bad attention", map[string]string{"expression": "x", "attention": "maybe"}, okImg, 400, CodeBadRequest, `attention "maybe": want true or false`},
		{"too big", map[string]string{"expression": "x"}, make([]byte, 100000), 413, CodeImageTooLarge, "request body is over"},
		{"not an image", map[string]string{"expression": "x"}, []byte("hello, world"), 415, CodeUnsupportedFormat, "unsupported image format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ct, body := form(c.fields, c.image)
			req := httptest.NewRequest("POST", "/v1/ground", strings.NewReader(body))
			req.Header.Set("Content-Type", ct)
			req.Header.Set("Authorization", "Bearer k")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.status {
				t.Fatalf("status %d %s, want %d", rec.Code, rec.Body, c.status)
			}
			if c.status == 200 {
				return
			}
			var eb ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Code != c.code || !strings.Contains(eb.Error, c.msg) {
				t.Fatalf("%+v %v, want %s %q", eb, err, c.code, c.msg)
			}
		})
	}
	if g.n.Load() != 1 {
		t.Fatalf("%d requests reached the grounder, want the good one only", g.n.Load())
	}
}

// The OpenAPI document is served without a token, parses, and documents
// every route the handler serves.
func TestOpenAPIDocument(t *testing.T) {
	h, err := NewHTTPHandler(HTTPConfig{Promoter: fakePromoter{}}, &recordingGrounder{})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/openapi.json", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || doc.OpenAPI == "" {
		t.Fatalf("document: %v", err)
	}
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		if _, ok := doc.Paths[path][strings.ToLower(method)]; !ok {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
}

type fakePromoter struct{}

func (fakePromoter) PromoteModel(_ context.Context, alias string, m ModelSpec) (events.ModelPromoted, error) {
	if m.CheckpointID != "ck-1" {
		return events.ModelPromoted{}, newError(CodeModelNotFound, "no checkpoint %q", m.CheckpointID)
	}
	return events.ModelPromoted{Alias: alias, CheckpointID: m.CheckpointID, ModelVersion: m.String(), Format: m.Format, Dtype: m.Dtype, Backend: m.Backend}, nil
}

func TestHTTPPromote(t *testing.T) {
	h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"k"}, Promoter: fakePromoter{}}, &recordingGrounder{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		auth, body string
		status     int
		want       string
	}{
		{"", `{"checkpoint_id":"ck-1"}`, 401, `"code": "unauthorized"`},
		{"Bearer k", `{"checkpoint_id":"ck-1"}`, 200, `"alias": "production"`},
		{"Bearer k", `{"checkpoint_id":"ck-1","alias":"canary"}`, 200, `"alias": "canary"`},
		{"Bearer k", `{"checkpoint_id":"nope"}`, 404, `no checkpoint \"nope\"`},
		{"Bearer k", `{}`, 400, "checkpoint_id is required"},
		{"Bearer k", `{"checkpoint":"ck-1"}`, 400, `unknown field \"checkpoint\"`},
		// An export, by model version or by field, and its backend.
		{"Bearer k", `{"checkpoint_id":"ck-1@gguf-q8_0"}`, 200, `"model_version": "ck-1@gguf-q8_0"`},
		{"Bearer k", `{"checkpoint_id":"ck-1","export":{"format":"gguf","dtype":"q4_0"},"backend":"ggml"}`, 200, `"model_version": "ck-1@gguf-q4_0"`},
		{"Bearer k", `{"checkpoint_id":"ck-1","export":{"format":"gguf"}}`, 400, `format and dtype are both required`},
		{"Bearer k", `{"checkpoint_id":"ck-1@gguf-q8_0","export":{"format":"gguf","dtype":"q4_0"}}`, 400, `give one`},
		{"Bearer k", `{"checkpoint_id":"ck-1@q8_0"}`, 400, `want a checkpoint id, or`},
	} {
		req := httptest.NewRequest("POST", "/v1/models/promote", strings.NewReader(c.body))
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.status || !strings.Contains(rec.Body.String(), c.want) {
			t.Errorf("%s %s: %d %s, want %d with %s", c.auth, c.body, rec.Code, rec.Body, c.status, c.want)
		}
	}
}
