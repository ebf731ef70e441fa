// Command vulncheck reads govulncheck's JSON output (-format json) on
// stdin and fails unless every vulnerability the code calls is explained in
// the allow file: one line per OSV id, "GO-YYYY-NNNN why it is accepted"
// ('#' starts a comment). It prints one row per called vulnerability, and
// notes allow lines that no longer match anything, so that they can go.
//
//	govulncheck -format json ./... | go run ./scripts/vulncheck -allow scripts/vulncheck/allow.txt
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
	Receiver string `json:"receiver"`
}

type message struct {
	Finding *struct {
		OSV          string  `json:"osv"`
		FixedVersion string  `json:"fixed_version"`
		Trace        []frame `json:"trace"`
	} `json:"finding"`
	OSV *struct {
		ID      string `json:"id"`
		Summary string `json:"summary"`
	} `json:"osv"`
}

type called struct {
	id, module, fixed, summary, symbol string
}

func main() {
	allowPath := flag.String("allow", "scripts/vulncheck/allow.txt", "the explained vulnerabilities")
	flag.Parse()
	allow, err := readAllow(*allowPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulncheck:", err)
		os.Exit(2)
	}
	found, total, err := read(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulncheck:", err)
		os.Exit(2)
	}
	ids := make([]string, 0, len(found))
	for id := range found {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "vulnerability\tin\tfixed in\tcalled as\tverdict")
	unexplained := 0
	for _, id := range ids {
		c := found[id]
		verdict := "explained: " + allow[id]
		if _, ok := allow[id]; !ok {
			verdict = "NOT EXPLAINED: " + c.summary
			unexplained++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id, c.module, c.fixed, c.symbol, verdict)
	}
	tw.Flush()
	for id := range allow {
		if _, ok := found[id]; !ok {
			fmt.Printf("note: %s is in %s but no longer found; remove it\n", id, *allowPath)
		}
	}
	fmt.Printf("govulncheck: %d vulnerabilities called by the code (%d findings at any level), %d not explained\n", len(found), total, unexplained)
	if unexplained > 0 {
		fmt.Printf("explain each in %s (or upgrade the module that has it) and run again\n", *allowPath)
		os.Exit(1)
	}
}

// read collects the vulnerabilities the code calls: findings whose
// innermost frame names a function.
func read(r io.Reader) (map[string]called, int, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	summaries := map[string]string{}
	found := map[string]called{}
	total := 0
	for {
		var m message
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, 0, fmt.Errorf("read govulncheck's JSON: %w", err)
		}
		if m.OSV != nil {
			summaries[m.OSV.ID] = m.OSV.Summary
		}
		if m.Finding == nil {
			continue
		}
		total++
		if len(m.Finding.Trace) == 0 || m.Finding.Trace[0].Function == "" {
			continue
		}
		f := m.Finding.Trace[0]
		if _, ok := found[m.Finding.OSV]; ok {
			continue
		}
		sym := f.Package + "." + f.Function
		if f.Receiver != "" {
			sym = f.Package + "." + strings.TrimPrefix(f.Receiver, "*") + "." + f.Function
		}
		found[m.Finding.OSV] = called{id: m.Finding.OSV, module: f.Module + "@" + f.Version, fixed: m.Finding.FixedVersion, symbol: sym}
	}
	for id, c := range found {
		c.summary = summaries[id]
		if c.fixed == "" {
			c.fixed = "no fix"
		}
		found[id] = c
	}
	return found, total, nil
}

func readAllow(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, why, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(id, "GO-") || strings.TrimSpace(why) == "" {
			return nil, fmt.Errorf("%s:%d: want \"GO-YYYY-NNNN why it is accepted\"", path, i+1)
		}
		out[id] = strings.TrimSpace(why)
	}
	return out, nil
}
