package main

import (
	"context"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/store"
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
		{env{}, []string{"--backends", "tensorrt"}, `unknown backend "tensorrt"`},
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

// `groundmesh workers` lists the live workers of the database.
func TestWorkersVerbListsLiveWorkers(t *testing.T) {
	ctx := context.Background()
	url := store.NewTestDB(t)
	pool, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO workers (worker_id, host, pid, services, queues, backends) VALUES
		('gpu-1', 'node-7', 42, '{train,eval}', '{train-cuda}', '{libtorch:cuda}')`); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := cmdWorkers(ctx, env{DatabaseURL: url, DataDir: t.TempDir()}, nil, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"WORKER", "gpu-1", "node-7", "train,eval", "train-cuda", "libtorch:cuda"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
