package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/groundmesh/groundmesh/internal/stack"
)

// cmdWorkers lists the live workers of the database (table workers): who
// serves which services, queues and backends.
func cmdWorkers(ctx context.Context, e env, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("workers", flag.ContinueOnError)
	dataDir := fs.String("data-dir", e.DataDir, "data directory (its private Postgres when DATABASE_URL is unset)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	s, done, err := offline(ctx, e, *dataDir, false)
	if err != nil {
		return err
	}
	defer done()
	live, err := (&stack.Registry{Pool: s.Pool}).Live(ctx)
	if err != nil {
		return err
	}
	if len(live) == 0 {
		fmt.Fprintln(out, "no live worker (none refreshed its row in the last 45 s)")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tHOST\tPID\tSERVICES\tQUEUES\tBACKENDS\tUP\tSEEN")
	now := time.Now()
	for _, w := range live {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s ago\n", w.ID, w.Host, w.PID, strings.Join(w.Services, ","),
			strings.Join(w.Queues, ","), strings.Join(w.Backends, ","), now.Sub(w.Started).Round(time.Second), now.Sub(w.Seen).Round(time.Second))
	}
	return tw.Flush()
}
