package main

import (
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// metrics serves the Prometheus series the real runner serves that gitlab-runners reads (its health
// check: the job requests' statuses per runner, and the process's start time), with the same names,
// labels, HELP and TYPE lines.
type metrics struct {
	mu       sync.Mutex
	counters map[string]float64
	gauges   map[string]float64
}

func newMetrics() *metrics {
	m := &metrics{counters: map[string]float64{}, gauges: map[string]float64{}}
	m.setGauge(fmt.Sprintf(`gitlab_runner_version_info{architecture="amd64",name="gitlab-runner",os="linux",version=%q}`, version), 1)
	m.add("gitlab_runner_configuration_loaded_total", 0)
	m.add("gitlab_runner_configuration_loading_error_total", 0)
	// The process collector's start time, in the clock ticks (1/100 s) /proc gives it in.
	m.setGauge("process_start_time_seconds", float64(time.Now().UnixNano()/1e7)/100)
	return m
}

func (m *metrics) add(series string, delta float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counters[series] += delta
}

func (m *metrics) setGauge(series string, value float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gauges[series] = value
}

func (m *metrics) apiStatus(runner, systemID, endpoint string, status int, method string) {
	m.add(fmt.Sprintf(`gitlab_runner_api_request_statuses_total{endpoint=%q,method=%q,runner=%q,status="%d",system_id=%q}`,
		endpoint, strings.ToLower(method), runner, status, systemID), 1)
}

// help holds the HELP text the real runner serves for each family this double serves.
var help = map[string]string{
	"gitlab_runner_api_request_statuses_total":        "The total number of API requests made by GitLab Runner, partitioned by runner, system_id, endpoint, status and method.",
	"gitlab_runner_configuration_loaded_total":        "Total number of times the configuration file was loaded by Runner process",
	"gitlab_runner_configuration_loading_error_total": "Total number of times the configuration file was not loaded by Runner process due to errors",
	"gitlab_runner_version_info":                      "A metric with a constant '1' value labeled by different build stats fields.",
	"process_start_time_seconds":                      "Start time of the process since unix epoch in seconds.",
}

// render writes the Prometheus text format as the runner's registry does: a family's HELP and TYPE
// lines, then its series, families in name order.
func (m *metrics) render() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	families := map[string][]string{}
	types := map[string]string{}
	for kind, series := range map[string]map[string]float64{"counter": m.counters, "gauge": m.gauges} {
		for name, value := range series {
			family, _, _ := strings.Cut(name, "{")
			families[family] = append(families[family], fmt.Sprintf("%s %g", name, value))
			types[family] = kind
		}
	}
	names := make([]string, 0, len(families))
	for family := range families {
		names = append(names, family)
	}
	sort.Strings(names)
	var out strings.Builder
	for _, family := range names {
		fmt.Fprintf(&out, "# HELP %s %s\n# TYPE %s %s\n", family, help[family], family, types[family])
		lines := families[family]
		sort.Strings(lines)
		for _, line := range lines {
			out.WriteString(line + "\n")
		}
	}
	return out.String()
}

// serve listens on address; an address it cannot bind is fatal, as it is for the real runner.
func (m *metrics) serve(address string) error {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return fmt.Errorf("listen_address %s: %w", address, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(m.render()))
	})
	go func() { _ = http.Serve(listener, mux) }()
	logf("INFO", "Metrics server listening address=%s", address)
	return nil
}
