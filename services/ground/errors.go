package ground

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"

	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// Reason codes of ground.failed (events.Failed.Code) and of the HTTP API's
// error bodies.
const (
	CodeBadRequest         = "bad_request"         // malformed or contradictory request
	CodeUnauthorized       = "unauthorized"        // HTTP only: no or wrong bearer token
	CodeImageTooLarge      = "image_too_large"     // more bytes than Limits.MaxImageBytes
	CodeTooManyPixels      = "too_many_pixels"     // width x height over Limits.MaxPixels
	CodeUnsupportedFormat  = "unsupported_format"  // not one of Limits.Formats
	CodeBadImage           = "bad_image"           // does not decode
	CodeExpressionTooLong  = "expression_too_long" // over Limits.MaxExpressionBytes
	CodeBadExpression      = "bad_expression"      // empty, control characters, placeholders
	CodeImageNotFound      = "image_not_found"     // no blob under the image key
	CodeModelNotFound      = "model_not_found"     // no checkpoint with that id
	CodeExportNotFound     = "export_not_found"    // the checkpoint has no export in that format and dtype
	CodeNoModel            = "no_model"            // nothing trained yet
	CodeOverloaded         = "overloaded"          // the queue is full; retry later
	CodeDeadlineExceeded   = "deadline_exceeded"   // not answered before the request's deadline
	CodeBackendUnavailable = "backend_unavailable" // the compute plugin failed or crashed
	CodeInternal           = "internal"            // anything else
)

// Error is a grounding failure with its reason code.
type Error struct {
	Code string
	Msg  string
	Err  error // cause, when there is one
	// pending: the model may be one whose facts have not reached the
	// service yet (see Pending).
	pending bool
}

// Pending reports whether the failure may pass by itself: the model is
// not known to the service, or its run's facts are not, and both arrive
// over the bus after training. A caller that knows the model exists (the
// Pipeline's promotion of the checkpoint it just trained) retries it; any
// other caller gets the failure's code (model_not_found) as it is.
func (e *Error) Pending() bool { return e.pending }

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// BadInput reports whether the failure is the request's fault; callers
// outside this package (the Pipeline's promotion) read it through an
// interface.
func (e *Error) BadInput() bool { return BadInput(e) }

func newError(code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// CodeOf returns err's reason code: an *Error's, deadline and
// cancellation, a crashed plugin, else CodeInternal.
func CodeOf(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return CodeDeadlineExceeded
	case errors.Is(err, compute.ErrPluginCrashed):
		return CodeBackendUnavailable
	}
	return CodeInternal
}

// BadInput reports whether a failure is the request's fault (not worth
// retrying unchanged).
func BadInput(err error) bool {
	switch CodeOf(err) {
	case CodeBadRequest, CodeImageTooLarge, CodeTooManyPixels, CodeUnsupportedFormat, CodeBadImage,
		CodeExpressionTooLong, CodeBadExpression, CodeImageNotFound, CodeModelNotFound, CodeExportNotFound:
		return true
	}
	return false
}

// HTTPStatus is the HTTP status of a reason code.
func HTTPStatus(code string) int {
	switch code {
	case CodeBadRequest, CodeBadImage, CodeBadExpression, CodeExpressionTooLong:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeImageTooLarge, CodeTooManyPixels:
		return http.StatusRequestEntityTooLarge
	case CodeUnsupportedFormat:
		return http.StatusUnsupportedMediaType
	case CodeImageNotFound, CodeModelNotFound, CodeExportNotFound:
		return http.StatusNotFound
	case CodeNoModel, CodeBackendUnavailable:
		return http.StatusServiceUnavailable
	case CodeOverloaded:
		return http.StatusTooManyRequests
	case CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// imageError maps infer.DecodeImage's errors to reason codes.
func imageError(err error) *Error {
	code := CodeBadImage
	switch {
	case errors.Is(err, infer.ErrImageTooLarge):
		code = CodeImageTooLarge
	case errors.Is(err, infer.ErrTooManyPixels):
		code = CodeTooManyPixels
	case errors.Is(err, infer.ErrImageFormat):
		code = CodeUnsupportedFormat
	}
	return &Error{Code: code, Msg: err.Error(), Err: err}
}

func newCorrelationID() string { return "ground-" + uuid.NewString() }
