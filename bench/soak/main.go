// Command soak runs groundmesh under faults for a bounded time on loopback
// and prints what was lost (it must be nothing), what was retried and the
// grounding API's latency.
//
// It starts `groundmesh up` on a data dir of its own (private Postgres,
// in-process Temporal persisted there, the Postgres bus) the way an
// operator's supervisor would, and then, for -duration:
//   - starts a small whole pipeline (ingest, synthesis, three training
//     stages on the GoMLX plugin, evaluation) every -pipeline-every;
//   - once the first pipeline has trained a model, sends grounding
//     requests to POST /v1/ground at -rps, each retried on a refused
//     connection, a 5xx or a 429 until -deadline has passed since its
//     first try;
//   - at random intervals between -kill-min and -kill-max, SIGKILLs either
//     a compute plugin process of the worker (when one runs) or the worker
//     itself, which it starts again after -restart-delay.
//
// Then it stops the faults, waits for every pipeline to end and checks the
// database: every pipeline completed, every grounding request answered, one
// synth set per parameters, no evaluation recorded twice, no set left
// building, every fact relayed.
//
//	make build && go run ./bench/soak -duration 30m
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groundmesh/groundmesh/internal/testutil"
)

const token = "soak-token"

func main() {
	var (
		bin           = flag.String("bin", "bin/groundmesh", "the groundmesh binary (its plugins beside it)")
		dataDir       = flag.String("data-dir", "", "data dir for the worker (default: a fresh temporary one)")
		addr          = flag.String("http", "127.0.0.1:18480", "the worker's gateway address")
		duration      = flag.Duration("duration", 30*time.Minute, "how long faults and load run")
		pipelineEvery = flag.Duration("pipeline-every", 3*time.Minute, "a new pipeline this often")
		rps           = flag.Float64("rps", 4, "grounding requests per second")
		deadline      = flag.Duration("deadline", 90*time.Second, "a grounding request is lost when unanswered this long after its first try")
		killMin       = flag.Duration("kill-min", 90*time.Second, "shortest time between two kills")
		killMax       = flag.Duration("kill-max", 4*time.Minute, "longest time between two kills")
		restartDelay  = flag.Duration("restart-delay", 2*time.Second, "how long a killed worker stays down")
		drain         = flag.Duration("drain", 15*time.Minute, "how long to wait for the pipelines to end after the faults stop")
		seed          = flag.Uint64("seed", 1, "seed of the kill schedule")
	)
	flag.Parse()
	if err := run(config{*bin, *dataDir, *addr, *duration, *pipelineEvery, *rps, *deadline, *killMin, *killMax, *restartDelay, *drain, *seed}); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type config struct {
	bin, dataDir, addr                     string
	duration, pipelineEvery                time.Duration
	rps                                    float64
	deadline, killMin, killMax, restartGap time.Duration
	drain                                  time.Duration
	seed                                   uint64
}

// supervisor runs `groundmesh up` and restarts it after a kill.
type supervisor struct {
	cfg     config
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	starts  int
	logDir  string
	baseURL string
	// seen holds every plugin pid a worker of this soak started, sampled
	// every second and before each kill, so that only those are ever
	// counted as orphans or reaped.
	seen map[int]string
}

// sample records the current worker's plugin processes.
func (s *supervisor) sample() {
	procs := s.plugins()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range procs {
		s.seen[p.pid] = p.comm
	}
}

// orphans lists the plugin processes of this soak's workers that still run
// but no longer belong to the live worker.
func (s *supervisor) orphans() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	live := s.cmd.Process.Pid
	var out []int
	for _, p := range processes() {
		if name, ok := s.seen[p.pid]; ok && name == p.comm && p.ppid != live {
			out = append(out, p.pid)
		}
	}
	slices.Sort(out)
	return out
}

func (s *supervisor) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starts++
	logf, err := os.Create(filepath.Join(s.logDir, fmt.Sprintf("worker-%d.log", s.starts)))
	if err != nil {
		return err
	}
	cmd := exec.Command(s.cfg.bin, "up", "--data-dir", s.cfg.dataDir, "--http", s.cfg.addr, "--temporal-port", "0", "--ui-port", "-1")
	cmd.Env = append(os.Environ(), "GROUNDMESH_API_TOKENS="+token)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start worker: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	return nil
}

// waitReady polls /healthz until the gateway answers 200.
func (s *supervisor) waitReady(limit time.Duration) error {
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		resp, err := http.Get(s.baseURL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("worker not ready after %v (log in %s)", limit, s.logDir)
}

// killWorker SIGKILLs the worker process alone (its plugins are left as
// a crash leaves them).
func (s *supervisor) killWorker() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// plugins lists the compute plugin processes the current worker started.
func (s *supervisor) plugins() []proc {
	s.mu.Lock()
	parent := s.cmd.Process.Pid
	s.mu.Unlock()
	return childrenNamed(parent, "groundmesh-")
}

type proc struct {
	pid, ppid int
	comm      string
}

func processes() []proc {
	ents, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		open, closeAt := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closeAt < 0 || closeAt+4 > len(s) {
			continue
		}
		f := strings.Fields(s[closeAt+2:])
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out = append(out, proc{pid, ppid, s[open+1 : closeAt]})
	}
	return out
}

func childrenNamed(parent int, prefix string) []proc {
	var out []proc
	for _, p := range processes() {
		if p.ppid == parent && strings.HasPrefix(p.comm, prefix) {
			out = append(out, p)
		}
	}
	return out
}

// tally is what the soak counts.
type tally struct {
	mu                                      sync.Mutex
	sent, answered, lost, retriedRequests   int
	attempts                                int
	statuses                                map[string]int
	latencies, firstTry                     []time.Duration
	pipelines                               []string
	pipelinePostRetries                     int
	workerKills, pluginKills, pluginSkipped int
	lostWhy                                 map[string]int
}

func run(cfg config) error {
	if cfg.dataDir == "" {
		d, err := os.MkdirTemp("", "groundmesh-soak-")
		if err != nil {
			return err
		}
		// The private Postgres runs as the postgres user when this runs
		// as root: it must reach the folder.
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
		cfg.dataDir = d
	}
	if _, err := os.Stat(cfg.bin); err != nil {
		return fmt.Errorf("%s: %w (run make build first)", cfg.bin, err)
	}
	logDir := filepath.Join(cfg.dataDir, "soak-logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	sup := &supervisor{cfg: cfg, logDir: logDir, baseURL: "http://" + cfg.addr, seen: map[int]string{}}
	fmt.Printf("soak: %v of faults and load; data dir %s; worker logs in %s\n", cfg.duration, cfg.dataDir, logDir)
	if err := sup.start(); err != nil {
		return err
	}
	if err := sup.waitReady(3 * time.Minute); err != nil {
		return err
	}
	defer func() {
		sup.mu.Lock()
		cmd, exited := sup.cmd, sup.exited
		sup.mu.Unlock()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
		}
		for _, pid := range sup.orphans() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	faults, endFaults := context.WithTimeout(ctx, cfg.duration)
	defer endFaults()
	t := &tally{statuses: map[string]int{}, lostWhy: map[string]int{}}
	haveModel := make(chan struct{})
	var haveModelOnce sync.Once
	began := time.Now()
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 30 * time.Second}

	// Pipelines.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			id := startPipeline(faults, hc, sup.baseURL, 100+i, t)
			if id != "" {
				t.mu.Lock()
				t.pipelines = append(t.pipelines, id)
				t.mu.Unlock()
				if i == 0 {
					go func() {
						if waitPipeline(ctx, hc, sup.baseURL, id, cfg.duration+cfg.drain) == "COMPLETED" {
							haveModelOnce.Do(func() { close(haveModel) })
						}
					}()
				}
			}
			select {
			case <-faults.Done():
				return
			case <-time.After(cfg.pipelineEvery):
			}
		}
	}()

	// Grounding requests, once a model exists.
	img := pngDataURI()
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-haveModel:
		case <-faults.Done():
			return
		}
		fmt.Printf("soak: a model after %v; grounding at %.1f requests/s\n", time.Since(began).Round(time.Second), cfg.rps)
		tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.rps))
		defer tick.Stop()
		var reqs sync.WaitGroup
		defer reqs.Wait()
		for {
			select {
			case <-faults.Done():
				return
			case <-tick.C:
				reqs.Add(1)
				go func() { defer reqs.Done(); ground(ctx, hc, sup.baseURL, img, cfg.deadline, t) }()
			}
		}
	}()

	// Which plugin processes belong to this soak.
	go func() {
		for ctx.Err() == nil {
			sup.sample()
			time.Sleep(time.Second)
		}
	}()

	// Faults.
	rng := rand.New(rand.NewPCG(cfg.seed, 0x50a4))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			gap := cfg.killMin + time.Duration(rng.Int64N(int64(cfg.killMax-cfg.killMin)+1))
			select {
			case <-faults.Done():
				return
			case <-time.After(gap):
			}
			at := time.Since(began).Round(time.Second)
			if rng.IntN(2) == 0 {
				if procs := sup.plugins(); len(procs) > 0 {
					pid := procs[rng.IntN(len(procs))].pid
					_ = syscall.Kill(pid, syscall.SIGKILL)
					t.mu.Lock()
					t.pluginKills++
					t.mu.Unlock()
					fmt.Printf("soak: %v: killed plugin %d\n", at, pid)
					continue
				}
				t.mu.Lock()
				t.pluginSkipped++
				t.mu.Unlock()
			}
			sup.sample()
			sup.killWorker()
			t.mu.Lock()
			t.workerKills++
			t.mu.Unlock()
			fmt.Printf("soak: %v: killed the worker\n", at)
			time.Sleep(cfg.restartGap)
			if err := sup.start(); err != nil {
				fmt.Println("soak:", err)
				return
			}
			if err := sup.waitReady(3 * time.Minute); err != nil {
				fmt.Println("soak:", err)
			}
		}
	}()
	wg.Wait()
	faultsFor := time.Since(began)
	fmt.Printf("soak: faults stopped after %v; waiting up to %v for %d pipelines\n", faultsFor.Round(time.Second), cfg.drain, len(t.pipelines))

	// Drain: every pipeline must end.
	status := map[string]int{}
	var failed []string
	for _, id := range t.pipelines {
		st := waitPipeline(ctx, hc, sup.baseURL, id, cfg.drain)
		status[st]++
		if st != "COMPLETED" {
			failed = append(failed, id+" "+st)
		}
	}
	orphaned := sup.orphans()
	checks, err := checkDatabase(ctx, cfg.dataDir)
	if err != nil {
		return err
	}
	report(os.Stdout, faultsFor, t, status, failed, orphaned, checks)
	lost := t.lost + len(failed)
	for _, c := range checks {
		if c.got != c.want {
			lost++
		}
	}
	if lost > 0 {
		return fmt.Errorf("%d things lost or wrong (above)", lost)
	}
	return nil
}

// startPipeline posts a pipeline, retrying while the worker is down.
func startPipeline(ctx context.Context, hc *http.Client, base string, seed int, t *tally) string {
	body := string(testutil.SmallPipeline(seed))
	for ctx.Err() == nil {
		resp, err := hc.Post(base+"/api/pipelines", "application/json", strings.NewReader(body))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				var out struct {
					WorkflowID string `json:"workflow_id"`
				}
				if json.Unmarshal(b, &out) == nil && out.WorkflowID != "" {
					fmt.Printf("soak: pipeline %s started\n", out.WorkflowID)
					return out.WorkflowID
				}
			}
			if resp.StatusCode < 500 {
				fmt.Printf("soak: pipeline refused: %d %s\n", resp.StatusCode, b)
				return ""
			}
		}
		t.mu.Lock()
		t.pipelinePostRetries++
		t.mu.Unlock()
		time.Sleep(time.Second)
	}
	return ""
}

// waitPipeline polls a pipeline's status until it closes or limit passes.
func waitPipeline(ctx context.Context, hc *http.Client, base, id string, limit time.Duration) string {
	end := time.Now().Add(limit)
	last := "UNKNOWN"
	for time.Now().Before(end) && ctx.Err() == nil {
		resp, err := hc.Get(base + "/api/pipelines/" + id)
		if err == nil {
			var out struct{ Status string }
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if out.Status != "" {
				last = strings.TrimPrefix(out.Status, "WORKFLOW_EXECUTION_STATUS_")
				last = strings.ToUpper(last)
				if last != "RUNNING" {
					return last
				}
			}
		}
		time.Sleep(2 * time.Second)
	}
	return last
}

// ground sends one grounding request, retrying it until deadline.
func ground(ctx context.Context, hc *http.Client, base, img string, deadline time.Duration, t *tally) {
	body, _ := json.Marshal(map[string]any{"image": img, "expression": "the red square"})
	first := time.Now()
	tries := 0
	why := ""
	for time.Since(first) < deadline && ctx.Err() == nil {
		tries++
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/ground", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := hc.Do(req)
		code := "error"
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			code = strconv.Itoa(resp.StatusCode)
		} else {
			why = "connection: " + shortErr(err)
		}
		t.mu.Lock()
		t.attempts++
		t.statuses[code]++
		t.mu.Unlock()
		if err == nil && resp.StatusCode == 200 {
			t.mu.Lock()
			t.sent++
			t.answered++
			t.latencies = append(t.latencies, time.Since(first))
			if tries == 1 {
				t.firstTry = append(t.firstTry, time.Since(start))
			} else {
				t.retriedRequests++
			}
			t.mu.Unlock()
			return
		}
		if err == nil {
			if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
				why = "refused " + code
				break
			}
			why = "status " + code
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.mu.Lock()
	t.sent++
	t.lost++
	t.lostWhy[why]++
	if tries > 1 {
		t.retriedRequests++
	}
	t.mu.Unlock()
}

func shortErr(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout"):
		return "timeout"
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return "reset"
	}
	return "other"
}

type check struct {
	what      string
	got, want int
}

// checkDatabase reads the worker's private Postgres (its port is in
// DATA/pg/port) for what must hold after any fault.
func checkDatabase(ctx context.Context, dataDir string) ([]check, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "pg", "port"))
	if err != nil {
		return nil, fmt.Errorf("private Postgres port: %w", err)
	}
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%s/groundmesh?sslmode=disable", strings.TrimSpace(string(b))))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	q := func(what, sql string, want int) check {
		var n int
		if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
			return check{what + " (" + err.Error() + ")", -1, want}
		}
		return check{what, n, want}
	}
	// The relay may still hold the last facts: give it a moment.
	var unrelayed check
	for range 30 {
		unrelayed = q("facts never relayed", `SELECT count(*) FROM outbox WHERE published_at IS NULL`, 0)
		if unrelayed.got == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	return []check{
		q("synth sets with the same dataset and parameters twice", `SELECT count(*) FROM (SELECT 1 FROM synth_sets GROUP BY dataset_id, params_hash HAVING count(*) > 1) d`, 0),
		q("synth sets left building or failed", `SELECT count(*) FROM synth_sets WHERE status <> 'ready'`, 0),
		q("evaluations recorded twice", testutil.EvaluationsRecordedTwiceSQL, 0),
		q("training runs not completed", `SELECT count(*) FROM runs WHERE status <> 'completed'`, 0),
		q("messages in the poison queue", `SELECT count(*) FROM poison_messages`, 0),
		unrelayed,
	}, nil
}

func pct(ds []time.Duration, p float64) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	i = max(0, min(len(s)-1, i))
	return fmt.Sprintf("%.1f ms", float64(s[i].Microseconds())/1000)
}

func report(w io.Writer, faultsFor time.Duration, t *tally, status map[string]int, failed []string, orphaned []int, checks []check) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "faults and load ran\t%v\n", faultsFor.Round(time.Second))
	fmt.Fprintf(tw, "worker killed (SIGKILL) and restarted\t%d\n", t.workerKills)
	fmt.Fprintf(tw, "plugin killed (SIGKILL)\t%d (a plugin kill with none running fell to the worker %d times)\n", t.pluginKills, t.pluginSkipped)
	fmt.Fprintf(tw, "pipelines started\t%d (a start retried while the worker was down %d times)\n", len(t.pipelines), t.pipelinePostRetries)
	fmt.Fprintf(tw, "pipelines by end state\t%v\n", status)
	fmt.Fprintf(tw, "grounding requests sent\t%d (%d tries; answers by status %v)\n", t.sent, t.attempts, t.statuses)
	fmt.Fprintf(tw, "answered\t%d, of which %d after a retry\n", t.answered, t.retriedRequests)
	fmt.Fprintf(tw, "LOST grounding requests\t%d %v\n", t.lost, t.lostWhy)
	fmt.Fprintf(tw, "LOST pipelines (not completed)\t%d %v\n", len(failed), failed)
	fmt.Fprintf(tw, "latency, first try answered: p50 / p99\t%s / %s (%d)\n", pct(t.firstTry, 0.5), pct(t.firstTry, 0.99), len(t.firstTry))
	fmt.Fprintf(tw, "latency, every answered request from its first try: p50 / p99 / max\t%s / %s / %s\n", pct(t.latencies, 0.5), pct(t.latencies, 0.99), pct(t.latencies, 1))
	fmt.Fprintf(tw, "plugin processes left running by killed workers\t%d\n", len(orphaned))
	for _, c := range checks {
		mark := "ok"
		if c.got != c.want {
			mark = "WRONG"
		}
		fmt.Fprintf(tw, "%s\t%d (want %d) %s\n", c.what, c.got, c.want, mark)
	}
	tw.Flush()
}

// pngDataURI is a 96 x 72 image with a red square, as a data URI.
func pngDataURI() string {
	img := image.NewRGBA(image.Rect(0, 0, 96, 72))
	for y := range 72 {
		for x := range 96 {
			img.Set(x, y, color.RGBA{230, 230, 230, 255})
			if x >= 20 && x < 44 && y >= 16 && y < 40 {
				img.Set(x, y, color.RGBA{220, 30, 30, 255})
			}
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes())
}
