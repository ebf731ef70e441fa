package ground

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/infer"
)

// Limits bound what a request may ask. Every rejection is a bad-input
// failure with its own reason code, decided before anything reaches the
// compute plugin.
type Limits struct {
	// MaxImageBytes bounds the encoded image; default 4 MiB.
	MaxImageBytes int
	// MaxPixels bounds width x height, read from the image header before
	// decoding (decompression bombs); default 4096 x 4096.
	MaxPixels int
	// Formats are the accepted image formats; default png and jpeg (the
	// decoders built in).
	Formats []string
	// MaxExpressionBytes bounds the expression (or prompt); default 512.
	// The demo model reads 64 positions, so a long one would not fit anyway.
	MaxExpressionBytes int
}

// WithDefaults fills zero fields.
func (l Limits) WithDefaults() Limits {
	if l.MaxImageBytes == 0 {
		l.MaxImageBytes = 4 << 20
	}
	if l.MaxPixels == 0 {
		l.MaxPixels = 4096 * 4096
	}
	if len(l.Formats) == 0 {
		l.Formats = []string{"png", "jpeg"}
	}
	if l.MaxExpressionBytes == 0 {
		l.MaxExpressionBytes = 512
	}
	return l
}

// Validate refuses negative limits and unknown formats.
func (l Limits) Validate() error {
	if l.MaxImageBytes < 0 || l.MaxPixels < 0 || l.MaxExpressionBytes < 0 {
		return fmt.Errorf("ground limits: negative limit (image bytes %d, pixels %d, expression %d)", l.MaxImageBytes, l.MaxPixels, l.MaxExpressionBytes)
	}
	for _, f := range l.Formats {
		if f != "png" && f != "jpeg" {
			return fmt.Errorf("ground limits: format %q is not built in (png, jpeg)", f)
		}
	}
	return nil
}

func (l Limits) image() infer.ImageLimits {
	return infer.ImageLimits{MaxBytes: l.MaxImageBytes, MaxPixels: l.MaxPixels, Formats: l.Formats}
}

// CheckRequest checks the parts of a request that need no lookup: one
// image source, one question, the expression's length and content, the
// inline image's size, format and pixel count (from its header), the reply
// topic. The HTTP gateway calls it before publishing; the service again on
// receipt.
func (l Limits) CheckRequest(req events.GroundRequested) error {
	switch {
	case len(req.Image) > 0 && req.ImageKey != "":
		return newError(CodeBadRequest, "give the image inline or by blob key, not both")
	case len(req.Image) == 0 && req.ImageKey == "":
		return newError(CodeBadRequest, "no image: give one inline or by blob key")
	case req.Expression != "" && req.Prompt != "":
		return newError(CodeBadRequest, "give an expression or a prompt, not both")
	case req.Expression == "" && req.Prompt == "":
		return newError(CodeBadExpression, "no expression: say what to find in the image")
	}
	q, what := req.Expression, "expression"
	if q == "" {
		q, what = req.Prompt, "prompt"
	}
	if len(q) > l.MaxExpressionBytes {
		return newError(CodeExpressionTooLong, "%s is %d bytes long, the limit is %d", what, len(q), l.MaxExpressionBytes)
	}
	if req.Expression != "" {
		if _, err := infer.CleanExpression(req.Expression); err != nil {
			return &Error{Code: CodeBadExpression, Msg: err.Error(), Err: err}
		}
	} else if !utf8.ValidString(req.Prompt) || strings.Count(req.Prompt, "<image>") > 1 {
		return newError(CodeBadExpression, "prompt must be valid UTF-8 with at most one <image> placeholder")
	}
	if strings.ContainsAny(req.ReplyTopic, " \t\n") {
		return newError(CodeBadRequest, "reply topic %q contains whitespace", req.ReplyTopic)
	}
	if len(req.Image) > 0 {
		if _, _, err := infer.CheckImage(req.Image, l.image()); err != nil {
			return imageError(err)
		}
	}
	return nil
}
