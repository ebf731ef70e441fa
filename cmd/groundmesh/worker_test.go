package main

import (
	"context"
	"strings"
	"testing"
)

// `groundmesh worker` refuses an unknown service, a bad queue or lease
// before it starts anything, naming what is wrong; the environment gives
// the flags' defaults.
func TestWorkerFlagsRejectBadInput(t *testing.T) {
	for _, c := range []struct {
		env  env
		args []string
		want string
	}{
		{env{}, []string{"--services", "ingest,trian"}, `unknown service "trian" (want some of ingest, synth, train, eval, ground)`},
		{env{Services: "synth,synth"}, nil, `"synth" listed twice`},
		{env{}, []string{"--queue", "train.cuda"}, `queue "train.cuda": want lower-case letters`},
		{env{Queue: "GPU"}, nil, `queue "GPU"`},
		{env{}, []string{"--backends", "onnx"}, `unknown backend "onnx"`},
		{env{CommandLease: "soon"}, nil, `GROUNDMESH_COMMAND_LEASE="soon"`},
	} {
		c.env.DataDir = t.TempDir()
		args := append([]string{"--metrics", "off", "--data-dir", c.env.DataDir}, c.args...)
		err := cmdUp(context.Background(), c.env, args, true)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("worker %v (env %+v): %v, want an error with %q", c.args, c.env, err, c.want)
		}
	}
}
