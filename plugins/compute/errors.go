package compute

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors of the contract. Backends wrap them (fmt.Errorf("...: %w",
// compute.ErrInvalidArgument)); the gRPC server turns them into status codes
// and the gRPC client turns the codes back into the same sentinels, so that
// errors.Is works across the process boundary.
var (
	// ErrInvalidArgument: the request is malformed (bad model config, zero
	// steps, wrong image size). Retrying the same request cannot succeed.
	ErrInvalidArgument = errors.New("compute: invalid argument")
	// ErrNotFound: a session, KV cache, checkpoint or shard does not exist.
	ErrNotFound = errors.New("compute: not found")
	// ErrFailedPrecondition: the request is valid but the backend is not in a
	// state to serve it (e.g. a cache of another batch size, a closed host).
	ErrFailedPrecondition = errors.New("compute: failed precondition")
	// ErrUnimplemented: the backend does not do this (e.g. Train on an
	// inference-only backend).
	ErrUnimplemented = errors.New("compute: unimplemented")
	// ErrResourceExhausted: out of memory (host or device) or a message too large.
	ErrResourceExhausted = errors.New("compute: resource exhausted")
	// ErrPluginCrashed: the plugin process died or became unreachable. Its
	// sessions and caches are gone: reload. Errors from a Host carry the
	// plugin's stderr tail and exit status in a *CrashError.
	ErrPluginCrashed = errors.New("compute: plugin crashed")
)

// CrashError reports a plugin process that died during (or before) a call.
// It wraps ErrPluginCrashed and the transport error.
type CrashError struct {
	Op         string   // the Backend method that observed the crash
	Path       string   // plugin binary
	PID        int      // process id of the dead plugin
	ExitStatus string   // e.g. "signal: killed", "exit status 2"; "" if unknown
	StderrTail []string // last lines the plugin wrote to stderr
	Err        error    // the underlying transport error, if any
}

// Error formats the crash with the end of the plugin's stderr.
func (e *CrashError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "compute %s: plugin %s", e.Op, e.Path)
	if e.PID != 0 {
		fmt.Fprintf(&b, " (pid %d)", e.PID)
	}
	b.WriteString(" crashed")
	if e.ExitStatus != "" {
		fmt.Fprintf(&b, ": %s", e.ExitStatus)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	if len(e.StderrTail) > 0 {
		tail := e.StderrTail
		if len(tail) > 8 {
			tail = tail[len(tail)-8:]
		}
		b.WriteString("; stderr tail:\n")
		b.WriteString(strings.Join(tail, "\n"))
	}
	return b.String()
}

// Unwrap lets errors.Is find ErrPluginCrashed and the transport error.
func (e *CrashError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrPluginCrashed}
	}
	return []error{ErrPluginCrashed, e.Err}
}

// remoteError is an error that crossed the gRPC boundary: its text is the
// plugin's message and it unwraps to the sentinel its status code names.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// toStatus converts a backend error into a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNotFound), errors.Is(err, os.ErrNotExist):
		code = codes.NotFound
	case errors.Is(err, ErrFailedPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrUnimplemented):
		code = codes.Unimplemented
	case errors.Is(err, ErrResourceExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, ErrPluginCrashed):
		code = codes.Unavailable
	default:
		code = codes.Unknown
	}
	return status.Error(code, err.Error())
}

// fromStatus converts an error returned by a gRPC call back into Go
// sentinels. op names the method for the message.
func fromStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("compute %s: %w", op, err)
	}
	var sentinel error
	switch st.Code() {
	case codes.Canceled:
		sentinel = context.Canceled
	case codes.DeadlineExceeded:
		sentinel = context.DeadlineExceeded
	case codes.InvalidArgument:
		sentinel = ErrInvalidArgument
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.FailedPrecondition:
		sentinel = ErrFailedPrecondition
	case codes.Unimplemented:
		sentinel = ErrUnimplemented
	case codes.ResourceExhausted:
		sentinel = ErrResourceExhausted
	case codes.Unavailable:
		sentinel = ErrPluginCrashed
	}
	msg := fmt.Sprintf("compute %s: %s", op, st.Message())
	if sentinel == nil {
		return fmt.Errorf("%s (%s)", msg, st.Code())
	}
	return &remoteError{msg: msg, sentinel: sentinel}
}
