package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestComposeFileIsValid validates compose.yaml with `docker compose config`
// where the compose plugin exists, and always structurally: the services
// the production layout needs, their images or builds, the groundmesh
// environment every groundmesh container gets (the bus on NATS, blobs in
// the S3 store), the workers' split of the services, and Prometheus
// scraping each of them.
func TestComposeFileIsValid(t *testing.T) {
	if _, err := exec.LookPath("docker"); err == nil {
		if exec.Command("docker", "compose", "version").Run() == nil {
			out, err := exec.Command("docker", "compose", "-f", "../../compose.yaml", "config", "-q").CombinedOutput()
			if err != nil {
				t.Fatalf("docker compose config: %v\n%s", err, out)
			}
		}
	}
	b, err := os.ReadFile("../../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	workers := []string{"worker-data", "worker-train", "worker-eval"}
	for _, name := range append([]string{"postgres", "temporal", "temporal-ui", "nats", "seaweedfs", "blob-bucket", "jaeger", "prometheus", "gateway"}, workers...) {
		svc, ok := f.Services[name]
		if !ok {
			t.Errorf("compose.yaml lacks service %q", name)
			continue
		}
		if svc.Image == "" && svc.Build == nil {
			t.Errorf("service %q has neither image nor build", name)
		}
	}
	for _, name := range append([]string{"gateway"}, workers...) {
		env := f.Services[name].Environment
		for _, k := range []string{"DATABASE_URL", "TEMPORAL_ADDRESS", "OTEL_EXPORTER_OTLP_ENDPOINT", "GROUNDMESH_DATA_DIR", "NATS_URL", "AWS_ACCESS_KEY_ID"} {
			if env[k] == "" {
				t.Errorf("service %q: %s is not set", name, k)
			}
		}
		// Past one machine: the bus on NATS, the blobs in the S3 store.
		if env["GROUNDMESH_BUS"] != "nats" || !strings.HasPrefix(env["GROUNDMESH_BLOB_URL"], "s3://") {
			t.Errorf("service %q: GROUNDMESH_BUS %q, GROUNDMESH_BLOB_URL %q: want nats and an s3:// store", name, env["GROUNDMESH_BUS"], env["GROUNDMESH_BLOB_URL"])
		}
		if len(f.Services[name].Command) < 2 || f.Services[name].Command[0] != "groundmesh" {
			t.Errorf("service %q: command %v does not run groundmesh", name, f.Services[name].Command)
		}
	}
	// The workers split the services: each runs a subset, and together
	// they run every service once.
	ran := map[string]string{}
	for _, name := range workers {
		cmd := f.Services[name].Command
		i := slices.Index(cmd, "--services")
		if i < 0 || i+1 >= len(cmd) {
			t.Errorf("service %q: command %v names no --services", name, cmd)
			continue
		}
		for _, svc := range strings.Split(cmd[i+1], ",") {
			if prev, ok := ran[svc]; ok {
				t.Errorf("service %s runs on %s and %s", svc, prev, name)
			}
			ran[svc] = name
		}
	}
	for _, svc := range []string{"ingest", "synth", "train", "eval", "ground"} {
		if ran[svc] == "" {
			t.Errorf("no worker runs %s", svc)
		}
	}

	// Prometheus scrapes the ports the gateway and the workers serve
	// GET /metrics on, from a config file that compose mounts.
	workerMetrics := map[string]string{}
	for _, name := range workers {
		cmd := f.Services[name].Command
		if i := slices.Index(cmd, "--metrics"); i >= 0 && i+1 < len(cmd) {
			workerMetrics[name] = cmd[i+1]
		}
	}
	gatewayAddr := ""
	for i, a := range f.Services["gateway"].Command {
		if a == "--addr" && i+1 < len(f.Services["gateway"].Command) {
			gatewayAddr = f.Services["gateway"].Command[i+1]
		}
	}
	if len(workerMetrics) != len(workers) || gatewayAddr == "" {
		t.Fatalf("workers' --metrics %v, gateway --addr %q: every one must be set", workerMetrics, gatewayAddr)
	}
	var mount string
	for _, v := range f.Services["prometheus"].Volumes {
		if strings.HasSuffix(strings.TrimSuffix(v, ":ro"), ":/etc/prometheus/prometheus.yml") {
			mount = strings.SplitN(v, ":", 2)[0]
		}
	}
	pb, err := os.ReadFile(filepath.Join("../..", mount))
	if mount == "" || err != nil {
		t.Fatalf("prometheus config %q: %v", mount, err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(pb, &prom); err != nil {
		t.Fatalf("%s: %v", mount, err)
	}
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				targets = append(targets, fmt.Sprintf("%s:%d", n, d.Port))
			}
		}
	}
	want := []string{"gateway" + gatewayAddr}
	for _, name := range workers {
		want = append(want, name+workerMetrics[name])
	}
	for _, want := range want {
		if !slices.Contains(targets, want) {
			t.Errorf("prometheus scrapes %v, not %s", targets, want)
		}
	}
}
