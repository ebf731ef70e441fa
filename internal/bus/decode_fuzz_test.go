package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/groundmesh/groundmesh/internal/events"
)

// eventDecoders checks one payload against each type that crosses a
// service boundary, as its consumer decodes it (Typed, DecodeStrict).
var eventDecoders = []func(t *testing.T, payload []byte){
	checkDecode[events.Progress],
	checkDecode[events.Failed],
	checkDecode[events.IngestRequested],
	checkDecode[events.DatasetIngested],
	checkDecode[events.SynthRequested],
	checkDecode[events.SynthCompleted],
	checkDecode[events.TrainRequested],
	checkDecode[events.TrainCompleted],
	checkDecode[events.CheckpointSaved],
	checkDecode[events.EvalRequested],
	checkDecode[events.EvaluationCompleted],
	checkDecode[events.GroundRequested],
	checkDecode[events.GroundCompleted],
	checkDecode[events.ModelPromoted],
}

// FuzzDecodeEvent feeds arbitrary payloads and schema versions to the
// consumer side of the bus: the schema check refuses, as a permanent error
// (poison, not retry), every payload that is not JSON and every major
// version this build does not know; Typed hands a handler exactly the
// payloads DecodeStrict accepts and refuses the rest permanently; what
// decodes re-encodes to a fixed point, does not decode with data after it,
// and carries the same correlation id in its payload as the metadata
// NewMessage derives from it.
func FuzzDecodeEvent(f *testing.F) {
	for _, s := range []string{
		`{"correlation_id":"c-1","format":"scenes","path":"","name":"demo","scenes":{"seed":1,"images":8,"size":64}}`,
		`{"correlation_id":"c-2","run_id":"r","synth_set_id":"s","backend":"gomlx","spec":{"stage1":{"steps":3}}}`,
		`{"correlation_id":"c-3","image":"iVBORw0KGgo=","expression":"the red square","deadline":"2026-12-06T10:00:00+01:00"}`,
		`{"correlation_id":"c-4","service":"train","done":3,"total":9,"details":{"loss": 1.5},"at":"2026-12-06T10:00:00Z"}`,
		`{"checkpoint_id":"k","run_id":"r","stage":"stage1","step":3,"loss":0.5,"blob_key":"runs/r/stage1/step-3.safetensors","sha256":"ab"}`,
		`{"correlation_id":"c-5","text":"[0.1, 0.2, 0.3, 0.4]","boxes":[{"pixel":[1,2,3,4],"norm":[0,0,1,1],"phrase":"x","score":0.9}]}`,
		`{"correlation_id":"c-6","max_samples_by":{"rec":400},"report":true}`,
		`{"alias":"production","checkpoint_id":"k","promoted_at":"2026-12-06T10:00:00Z"}`,
		`{"correlation_id":"c-7"} {}`, `{"correlation_id":"c-8","unknown":1}`, `{"CORRELATION_ID":"c-9"}`,
		`{"correlation_id":"a","correlation_id":"b"}`, `null`, `[]`, `"x"`, `{`, ``, "{\"reason\":\"\xff\"}",
		`{"step":1e400}`, `{"step":1.5}`, `{"counts":{"a":-1}}`, `{"image":"not base64"}`,
	} {
		f.Add([]byte(s), "1")
	}
	f.Add([]byte(`{}`), "v1.2")
	f.Add([]byte(`{}`), "2")
	f.Add([]byte(`{}`), "")
	f.Fuzz(func(t *testing.T, payload []byte, version string) {
		checkSchema(t, payload, version)
		for _, check := range eventDecoders {
			check(t, payload)
		}
	})
}

func checkSchema(t *testing.T, payload []byte, version string) {
	reached := false
	h := schemaCheck(func(*message.Message) ([]*message.Message, error) {
		reached = true
		return nil, nil
	})
	msg := message.NewMessage("m", payload)
	msg.Metadata.Set(events.MetaSchemaVersion, version)
	_, err := h(msg)
	known := major(version) == major(events.SchemaVersion)
	switch {
	case err == nil && (!known || !json.Valid(payload)):
		t.Fatalf("schema check let through version %q, payload %q", version, payload)
	case err != nil && !IsPermanent(err):
		t.Fatalf("schema check of version %q, payload %q: %v is not permanent", version, payload, err)
	case (err == nil) != reached:
		t.Fatalf("schema check returned %v but the handler ran: %v", err, reached)
	case err != nil && known && json.Valid(payload):
		t.Fatalf("schema check refused version %q, valid payload %q: %v", version, payload, err)
	}
}

func checkDecode[T any](t *testing.T, payload []byte) {
	var direct T
	derr := DecodeStrict(payload, &direct)

	var got *T
	h := Typed(func(_ context.Context, ev T, _ *message.Message) error {
		got = &ev
		return nil
	})
	err := h(context.Background(), message.NewMessage("m", payload))
	switch {
	case (err == nil) != (derr == nil):
		t.Fatalf("%T: Typed err %v, DecodeStrict err %v on %q", direct, err, derr, payload)
	case err != nil && !IsPermanent(err):
		t.Fatalf("%T: undecodable payload %q gave a retryable error %v", direct, payload, err)
	case err != nil && got != nil:
		t.Fatalf("%T: the handler ran on a payload that does not decode: %q", direct, payload)
	case err == nil && (got == nil || !reflect.DeepEqual(*got, direct)):
		t.Fatalf("%T: the handler got %+v, DecodeStrict %+v", direct, got, direct)
	}
	if derr != nil {
		return
	}
	if !json.Valid(payload) {
		t.Fatalf("%T: DecodeStrict accepted invalid JSON %q", direct, payload)
	}
	if DecodeStrict(append(bytes.Clone(payload), []byte(" {}")...), new(T)) == nil {
		t.Fatalf("%T: DecodeStrict accepted %q with a second value after it", direct, payload)
	}

	// What a consumer decoded, a producer re-encodes and another consumer
	// decodes to the same value: one encoding is a fixed point.
	enc, err := json.Marshal(direct)
	if err != nil {
		t.Fatalf("%T: re-encode %+v (from %q): %v", direct, direct, payload, err)
	}
	var again T
	if err := DecodeStrict(enc, &again); err != nil {
		t.Fatalf("%T: decode the re-encoding %s (of %q): %v", direct, enc, payload, err)
	}
	enc2, err := json.Marshal(again)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("%T: not a fixed point: %q -> %s -> %s (%v)", direct, payload, enc, enc2, err)
	}

	// The correlation id NewMessage reads from a payload is the one its
	// consumer decodes.
	if f := reflect.ValueOf(direct).FieldByName("CorrelationID"); f.IsValid() && f.String() != "" {
		msg, err := NewMessage(context.Background(), "t", json.RawMessage(payload), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := msg.Metadata.Get(events.MetaCorrelationID); got != f.String() {
			t.Fatalf("%T: payload %q decodes to correlation id %q, its message's metadata says %q", direct, payload, f.String(), got)
		}
	}
}
