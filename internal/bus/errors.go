package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/ThreeDotsLabs/watermill/message"
)

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying cannot fix (bad input, unknown
// schema): the message goes to the poison queue at once. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked by
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// HandlerFunc handles one message. ctx is the message's context: it carries
// the consumer span, the correlation id and the handler's logger (Logger).
// Returning an error retries the message with backoff; a Permanent error or
// one that outlives the retries sends it to the poison queue.
type HandlerFunc func(ctx context.Context, msg *message.Message) error

// Typed adapts a handler of a typed payload: it decodes the JSON payload
// strictly (unknown fields and trailing data are rejected) into T, and a
// payload that does not decode is a Permanent error.
func Typed[T any](fn func(ctx context.Context, ev T, msg *message.Message) error) func(ctx context.Context, msg *message.Message) error {
	return func(ctx context.Context, msg *message.Message) error {
		var ev T
		if err := DecodeStrict(msg.Payload, &ev); err != nil {
			return Permanent(fmt.Errorf("decode %T payload: %w", ev, err))
		}
		return fn(ctx, ev, msg)
	}
}

// DecodeStrict unmarshals JSON into v, rejecting unknown fields and anything
// after the first value.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
