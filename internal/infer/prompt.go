package infer

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/groundmesh/groundmesh/model"
)

// ImageTag is the placeholder of one image in a human turn; it opens every
// single-image prompt of the synthesized data.
const ImageTag = "<image>\n"

// RECInstruction is the referring-expression instruction ground asks, with
// "{expr}" for the expression: the first of the REC phrasings the synth
// service trains on (services/synth's templates; a test there keeps them
// equal), which is also the paper's.
const RECInstruction = "Please provide the bounding box coordinate of the region this sentence describes: {expr}."

// ErrBadExpression is wrapped by RECPrompt's errors.
var ErrBadExpression = errors.New("bad expression")

// CleanExpression returns a referring expression as the prompt carries it:
// spaces collapsed, a trailing full stop or question mark dropped. It
// refuses an empty expression, one with control characters or an image
// placeholder, and invalid UTF-8.
func CleanExpression(expr string) (string, error) {
	if !utf8.ValidString(expr) {
		return "", fmt.Errorf("%w: not valid UTF-8", ErrBadExpression)
	}
	if strings.Contains(expr, "<image>") {
		return "", fmt.Errorf("%w: it must not contain the image placeholder <image>", ErrBadExpression)
	}
	for _, r := range expr {
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return "", fmt.Errorf("%w: control character %U", ErrBadExpression, r)
		}
	}
	e := strings.Join(strings.Fields(expr), " ")
	e = strings.TrimRight(e, ".?! ")
	if e == "" {
		return "", fmt.Errorf("%w: empty", ErrBadExpression)
	}
	return e, nil
}

// RECPrompt is the human turn that asks for the box of expr in one image.
func RECPrompt(expr string) (string, error) {
	e, err := CleanExpression(expr)
	if err != nil {
		return "", err
	}
	return ImageTag + strings.Replace(RECInstruction, "{expr}", e, 1), nil
}

// PromptOf returns a record's last human turn (the question asked) and the
// reference answer that follows it ("" when the record ends on the human
// side).
func PromptOf(r model.Record) (prompt, reference string) {
	i := len(r.Conversations) - 1
	if i >= 0 && r.Conversations[i].From == "gpt" {
		reference = r.Conversations[i].Value
		i--
	}
	for ; i >= 0; i-- {
		if r.Conversations[i].From == "human" {
			return r.Conversations[i].Value, reference
		}
	}
	return "", reference
}
