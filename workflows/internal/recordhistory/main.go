// Command recordhistory exports the histories of one finished Pipeline run
// and its children from a Temporal server into workflows/testdata, for the
// replay tests. Usage (with `groundmesh up` serving the run's data dir):
//
//	go run ./workflows/internal/recordhistory -addr 127.0.0.1:7233 -pipeline demo-... -out workflows/testdata
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/encoding/protojson"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7233", "Temporal frontend")
	pipeline := flag.String("pipeline", "", "Pipeline workflow id")
	out := flag.String("out", "workflows/testdata", "output directory")
	flag.Parse()
	if *pipeline == "" {
		fmt.Fprintln(os.Stderr, "recordhistory: -pipeline is required")
		os.Exit(2)
	}
	c, err := client.Dial(client.Options{HostPort: *addr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "recordhistory:", err)
		os.Exit(1)
	}
	defer c.Close()
	ids := map[string]string{
		"pipeline": *pipeline, "ingest": *pipeline + "/ingest", "synthesize": *pipeline + "/synth",
		"train": *pipeline + "/train", "evaluate": *pipeline + "/eval",
	}
	idsJSON, err := json.MarshalIndent(ids, "", "  ")
	if err == nil {
		err = os.WriteFile(filepath.Join(*out, "ids.json"), idsJSON, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "recordhistory:", err)
		os.Exit(1)
	}
	for name, id := range ids {
		if err := record(context.Background(), c, id, filepath.Join(*out, name+".json")); err != nil {
			fmt.Fprintln(os.Stderr, "recordhistory:", err)
			os.Exit(1)
		}
		fmt.Println("wrote", name)
	}
}

func record(ctx context.Context, c client.Client, id, path string) error {
	it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			return fmt.Errorf("history of %s: %w", id, err)
		}
		h.Events = append(h.Events, ev)
	}
	b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(h)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
