package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGroundEnv(t *testing.T) {
	c, err := groundEnv{APITokens: " a, ,b ", MaxImageBytes: "1000", MaxDelay: "5ms", Timeout: "2s"}.config()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.APITokens, []string{"a", "b"}) || c.Limits.MaxImageBytes != 1000 || c.Batch.MaxDelay != 5*time.Millisecond || c.Timeout != 2*time.Second {
		t.Fatalf("%+v", c)
	}
	if c, err := (groundEnv{ExportBackends: "gguf=gomlx, onnx=ort"}).config(); err != nil || c.ExportBackends["gguf"] != "gomlx" || c.ExportBackends["onnx"] != "ort" || len(c.ExportBackends) != 2 {
		t.Fatalf("export backends: %+v %v", c.ExportBackends, err)
	}
	if c, err := (groundEnv{}).config(); err != nil || len(c.APITokens) != 0 || c.Limits.MaxPixels != 0 || c.ExportBackends != nil {
		t.Fatalf("empty: %+v %v", c, err)
	}
	for env, want := range map[groundEnv]string{
		{MaxPixels: "lots"}:      `GROUNDMESH_GROUND_MAX_PIXELS="lots": want a positive integer`,
		{MaxQueue: "0"}:          `GROUNDMESH_GROUND_MAX_QUEUE="0": want a positive integer`,
		{MaxDelay: "5"}:          `GROUNDMESH_GROUND_MAX_DELAY="5": want a positive duration`,
		{Timeout: "-1s"}:         `GROUNDMESH_GROUND_TIMEOUT="-1s": want a positive duration`,
		{MaxBatch: "2.5"}:        `GROUNDMESH_GROUND_MAX_BATCH="2.5": want a positive integer`,
		{ExportBackends: "gguf"}: `GROUNDMESH_GROUND_EXPORT_BACKENDS="gguf": want format=backend pairs`,
	} {
		if _, err := env.config(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want %s", env, err, want)
		}
	}
	tok, err := newToken()
	if err != nil || len(tok) != 35 || !strings.HasPrefix(tok, "gm-") {
		t.Fatalf("token %q %v", tok, err)
	}
}
