package ground

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/groundmesh/groundmesh/internal/events"
)

// Grounder answers a grounding request: a Client (over the bus) or a
// Service (in process).
type Grounder interface {
	Ground(ctx context.Context, req events.GroundRequested) (events.GroundCompleted, error)
}

var (
	_ Grounder = (*Client)(nil)
	_ Grounder = (*Service)(nil)
)

// HTTPConfig configures the HTTP API.
type HTTPConfig struct {
	// Tokens are the accepted bearer tokens. Without one every request is
	// refused with 401 and told how to set one: nobody gets in by default.
	Tokens []string
	// TokenHelp says how an operator sets a token (shown in that 401),
	// e.g. "set GROUNDMESH_API_TOKENS". Default: "configure a token".
	TokenHelp string
	// Limits are checked before a request is published (the service checks
	// them again); the same values as the service's.
	Limits Limits
	// Timeout bounds a request that names no shorter deadline; default 30s.
	Timeout time.Duration
	// Promoter serves POST /v1/models/promote; nil leaves it out.
	Promoter Promoter
}

// GroundRequest is the body of POST /v1/ground.
type GroundRequest struct {
	// Image is the image as a data URI: "data:image/png;base64,...".
	Image string `json:"image,omitempty"`
	// ImageKey is a blob key instead of Image.
	ImageKey string `json:"image_key,omitempty"`
	// Expression says what to find.
	Expression string `json:"expression"`
	// CheckpointID picks a model; default the promoted (else the newest
	// trained) one. "<checkpoint>@<format>-<dtype>" names its export.
	CheckpointID string `json:"checkpoint_id,omitempty"`
	// Export serves the checkpoint's export in this format and dtype
	// ({"format": "gguf", "dtype": "q8_0"}) instead of the checkpoint.
	Export *events.ExportSpec `json:"export,omitempty"`
	// Backend is the compute backend that serves; default: the run's, or
	// for an export the format's export backend.
	Backend string `json:"backend,omitempty"`
	// Attention asks for the model's attention over the image patches.
	Attention bool `json:"attention,omitempty"`
	// TimeoutMS bounds this request (at most HTTPConfig.Timeout).
	TimeoutMS int `json:"timeout_ms,omitempty"`
}

// ErrorBody is the JSON of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// NewHTTPHandler returns the grounding API behind bearer token
// authentication: POST /v1/ground, and POST /v1/chat/completions for
// OpenAI clients. Mount it on the gateway's mux under /v1/.
func NewHTTPHandler(cfg HTTPConfig, g Grounder) (http.Handler, error) {
	if g == nil {
		return nil, errors.New("ground http: no grounder")
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.TokenHelp == "" {
		cfg.TokenHelp = "configure a token"
	}
	for _, t := range cfg.Tokens {
		if strings.TrimSpace(t) == "" {
			return nil, errors.New("ground http: empty token")
		}
	}
	h := &httpAPI{cfg: cfg, g: g}
	api := http.NewServeMux()
	api.HandleFunc(routeGround, h.ground)
	api.HandleFunc(routeChat, h.chatCompletions)
	if cfg.Promoter != nil {
		api.HandleFunc(routePromote, h.promote)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	mux.Handle("/v1/", h.auth(api))
	return mux, nil
}

// The API's routes; openapi.json documents each.
const (
	routeGround  = "POST /v1/ground"
	routeChat    = "POST /v1/chat/completions"
	routePromote = "POST /v1/models/promote"
)

var routes = []string{routeGround, routeChat, routePromote}

// PromoteRequest is the body of POST /v1/models/promote.
type PromoteRequest struct {
	// CheckpointID is the checkpoint, or "<checkpoint>@<format>-<dtype>"
	// for its export.
	CheckpointID string `json:"checkpoint_id"`
	// Export promotes the checkpoint's export in this format and dtype
	// (which must exist) instead of the checkpoint.
	Export *events.ExportSpec `json:"export,omitempty"`
	// Backend serves the alias; default: the run's, or for an export the
	// format's export backend.
	Backend string `json:"backend,omitempty"`
	// Alias defaults to DefaultAlias ("production").
	Alias string `json:"alias,omitempty"`
}

func (h *httpAPI) promote(w http.ResponseWriter, r *http.Request) {
	body, err := h.readBody(r)
	if err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	var req PromoteRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, CodeBadRequest, "request body: "+err.Error())
		return
	}
	if req.CheckpointID == "" {
		writeError(w, CodeBadRequest, "checkpoint_id is required")
		return
	}
	if req.Alias == "" {
		req.Alias = DefaultAlias
	}
	m, err := requestModel(events.GroundRequested{CheckpointID: req.CheckpointID, Export: req.Export, Backend: req.Backend})
	if err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	res, err := h.cfg.Promoter.PromoteModel(r.Context(), req.Alias, m)
	if err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// page is the page to try the API (PageHandler).
//
//go:embed page.html
var page []byte

// PageHandler serves the page where a person uploads an image, types an
// expression and sees the box drawn (and, when asked, the model's
// attention as a heat map). It calls POST /v1/ground with a token the
// person enters; the page itself holds no data.
func PageHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
		_, _ = w.Write(page)
	})
}

// openAPI is the API's OpenAPI document, served at /v1/openapi.json.
//
//go:embed openapi.json
var openAPI []byte

type httpAPI struct {
	cfg HTTPConfig
	g   Grounder
}

func writeError(w http.ResponseWriter, code, msg string) {
	status := HTTPStatus(code)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="groundmesh"`)
	}
	writeJSON(w, status, ErrorBody{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the status line is out; a write error has nowhere to go
}

// auth lets a request through only with one of the configured tokens.
func (h *httpAPI) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError := writeError
		if r.URL.Path == "/v1/chat/completions" {
			writeError = writeOpenAIError // what OpenAI clients parse
		}
		if len(h.cfg.Tokens) == 0 {
			writeError(w, CodeUnauthorized, "no API token is configured on this server, so every request is refused: "+
				h.cfg.TokenHelp+", then send the header \"Authorization: Bearer <token>\"")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || got == "" {
			writeError(w, CodeUnauthorized, "missing bearer token: send the header \"Authorization: Bearer <token>\"")
			return
		}
		for _, t := range h.cfg.Tokens {
			if subtle.ConstantTimeCompare([]byte(got), []byte(t)) == 1 {
				next.ServeHTTP(w, r)
				return
			}
		}
		writeError(w, CodeUnauthorized, "bearer token not accepted")
	})
}

// maxBody is the largest body worth reading: the image's bytes in base64
// plus room for the other fields.
func (h *httpAPI) maxBody() int64 {
	return int64(h.cfg.Limits.MaxImageBytes)/3*4 + 4 + 64<<10
}

func (h *httpAPI) ground(w http.ResponseWriter, r *http.Request) {
	var req GroundRequest
	var upload []byte
	var err error
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "multipart/form-data" {
		req, upload, err = h.parseMultipart(r)
	} else {
		req, err = h.parse(r)
	}
	if err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	timeout := h.cfg.Timeout
	if req.TimeoutMS < 0 {
		writeError(w, CodeBadRequest, fmt.Sprintf("timeout_ms is %d; give a positive number of milliseconds or leave it out", req.TimeoutMS))
		return
	}
	if d := time.Duration(req.TimeoutMS) * time.Millisecond; d > 0 && d < timeout {
		timeout = d
	}
	ev := events.GroundRequested{
		ImageKey: req.ImageKey, Expression: req.Expression, CheckpointID: req.CheckpointID, Attention: req.Attention,
		Export: req.Export, Backend: req.Backend,
	}
	// A malformed model is refused here, before anything is published.
	if _, err := requestModel(ev); err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	if req.Image != "" {
		if ev.Image, err = h.dataURI(req.Image); err != nil {
			writeError(w, CodeOf(err), err.Error())
			return
		}
	}
	if upload != nil {
		ev.Image = upload
	}
	if err := h.cfg.Limits.CheckRequest(ev); err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	// The caller going away cancels the request (r.Context), and so its
	// place in the batch.
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	res, err := h.g.Ground(ctx, ev)
	if err != nil {
		writeError(w, CodeOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// readBody reads a JSON body up to the size an allowed image explains.
func (h *httpAPI) readBody(r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, newError(CodeBadRequest, "Content-Type %q: send application/json", ct)
	}
	max := h.maxBody()
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, newError(CodeBadRequest, "read body: %v", err)
	}
	if int64(len(body)) > max {
		return nil, newError(CodeImageTooLarge, "request body is over %d bytes: the image may be at most %d bytes (%d in base64)", max, h.cfg.Limits.MaxImageBytes, h.cfg.Limits.MaxImageBytes/3*4+4)
	}
	// JSON is UTF-8 (RFC 8259); Go's decoder would quietly turn invalid
	// bytes into U+FFFD and ground an expression nobody wrote.
	if !utf8.Valid(body) {
		at := 0
		for at < len(body) {
			r, n := utf8.DecodeRune(body[at:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			at += n
		}
		return nil, newError(CodeBadRequest, "request body is not valid UTF-8 (byte %d): JSON must be UTF-8", at)
	}
	return body, nil
}

func (h *httpAPI) parse(r *http.Request) (GroundRequest, error) {
	var req GroundRequest
	body, err := h.readBody(r)
	if err != nil {
		return req, err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, newError(CodeBadRequest, "request body: %v", err)
	}
	if dec.More() {
		return req, newError(CodeBadRequest, "request body: trailing data after the JSON object")
	}
	return req, nil
}

// parseMultipart reads a multipart/form-data upload: the file "image" and
// the fields of GroundRequest by their JSON names.
func (h *httpAPI) parseMultipart(r *http.Request) (GroundRequest, []byte, error) {
	var req GroundRequest
	max := h.maxBody()
	r.Body = http.MaxBytesReader(nil, r.Body, max)
	mr, err := r.MultipartReader()
	if err != nil {
		return req, nil, newError(CodeBadRequest, "multipart body: %v", err)
	}
	var upload []byte
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return req, nil, newError(CodeImageTooLarge, "request body is over %d bytes: the image may be at most %d bytes", max, h.cfg.Limits.MaxImageBytes)
		}
		if err != nil {
			return req, nil, newError(CodeBadRequest, "multipart body: %v", err)
		}
		b, err := io.ReadAll(part)
		if errors.As(err, &tooBig) {
			return req, nil, newError(CodeImageTooLarge, "request body is over %d bytes: the image may be at most %d bytes", max, h.cfg.Limits.MaxImageBytes)
		}
		if err != nil {
			return req, nil, newError(CodeBadRequest, "multipart part %q: %v", part.FormName(), err)
		}
		switch name := part.FormName(); name {
		case "image":
			if upload != nil {
				return req, nil, newError(CodeBadRequest, "multipart body: more than one image part")
			}
			upload = b
		case "expression":
			req.Expression = string(b)
		case "image_key":
			req.ImageKey = string(b)
		case "checkpoint_id":
			req.CheckpointID = string(b)
		case "backend":
			req.Backend = string(b)
		case "attention":
			v, err := strconv.ParseBool(string(b))
			if err != nil {
				return req, nil, newError(CodeBadRequest, "multipart field attention %q: want true or false", b)
			}
			req.Attention = v
		case "timeout_ms":
			v, err := strconv.Atoi(string(b))
			if err != nil {
				return req, nil, newError(CodeBadRequest, "multipart field timeout_ms %q: want an integer", b)
			}
			req.TimeoutMS = v
		default:
			return req, nil, newError(CodeBadRequest, "multipart body: unknown field %q", name)
		}
	}
	if upload == nil && req.ImageKey == "" {
		return req, nil, newError(CodeBadRequest, "no image: send the file as the multipart part \"image\"")
	}
	return req, upload, nil
}

// dataURI decodes "data:image/png;base64,...".
func (h *httpAPI) dataURI(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, "data:")
	if !ok {
		return nil, newError(CodeBadRequest, "image must be a data URI (data:image/png;base64,...); give a stored image as image_key")
	}
	meta, payload, ok := strings.Cut(rest, ",")
	if !ok {
		return nil, newError(CodeBadRequest, "image data URI has no comma before its data")
	}
	mediaType, params, _ := strings.Cut(meta, ";")
	if params != "base64" {
		return nil, newError(CodeBadRequest, "image data URI must be base64-encoded (data:%s;base64,...)", mediaType)
	}
	allowed := make([]string, len(h.cfg.Limits.Formats))
	okType := false
	for i, f := range h.cfg.Limits.Formats {
		allowed[i] = "image/" + f
		okType = okType || mediaType == allowed[i]
	}
	if !okType {
		return nil, newError(CodeUnsupportedFormat, "image media type %q is not accepted: send %s", mediaType, strings.Join(allowed, " or "))
	}
	// The body limit bounds what is decoded here; CheckRequest reports
	// the exact size against the limit.
	b, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return nil, newError(CodeBadRequest, "image data URI: base64: %v", err)
	}
	return b, nil
}
